"""Options, consoles and small helpers the command groups share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from ..errors import InputError, Problem

if TYPE_CHECKING:
    from ..executor import RunOptions

DEFAULT_DB = ""  # resolved when the command runs: settings.default_db()


def _db(value: str) -> str:
    from ..settings import default_db

    return value or default_db()


DbOpt = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="RUNBOOK_EXEC_DB",
        metavar="URL",
        callback=_db,
        show_default=False,
        help="State store: sqlite:///PATH or postgresql://USER@HOST/DB. Default: "
        "./.runbook-exec/state.db if the working directory has one, else "
        "~/.local/state/runbook-exec/state.db ($XDG_STATE_HOME); `db` in runbook-exec.toml "
        "sets it, RUNBOOK_EXEC_DB overrides.",
    ),
]
OperatorOpt = Annotated[
    str | None,
    typer.Option("--operator", metavar="NAME", help="Who is acting (default: your OS user)."),
]


def err() -> Console:
    """Where problems go. Made when needed: a warm controller's fork has new streams."""
    return Console(stderr=True, highlight=False)


def out() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = max(console.width, 160)  # logs and pipes: do not wrap tables narrowly
    return console


RunbookArg = Annotated[
    Path, typer.Argument(help="The runbook YAML file.", show_default=False, metavar="RUNBOOK")
]


def _inventory(value: list[Path] | None) -> list[Path] | None:
    """No -i (nor `inventory` in runbook-exec.toml): the inventory Ansible is configured
    with (ansible.cfg `inventory =`, ANSIBLE_INVENTORY), as ansible-playbook would use."""
    if value:
        return value
    from ..ansiblecfg import ansible_defaults

    configured = [Path(p) for p in ansible_defaults().inventory]
    return configured or value


InventoryOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--inventory",
        "-i",
        metavar="INVENTORY",
        callback=_inventory,
        help="Ansible inventory: INI or YAML file, or a directory with group_vars/host_vars. "
        "Repeatable. Default: the one Ansible is configured with (ansible.cfg `inventory =`, "
        "ANSIBLE_INVENTORY), or `inventory` in runbook-exec.toml.",
    ),
]
ExtraVarsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--extra-vars",
        "-e",
        metavar="NAME=VALUE|@FILE",
        help="A runbook parameter, or @params.yml with several. Repeatable; later ones win.",
    ),
]
LimitOpt = Annotated[
    str | None,
    typer.Option(
        "--limit",
        "-l",
        metavar="PATTERN",
        help="Narrow the runbook's targets further, with an Ansible host pattern (web1:web2).",
    ),
]
KnownHostsOpt = Annotated[
    Path | None,
    typer.Option(
        "--known-hosts",
        metavar="FILE",
        help="known_hosts file to verify host keys against (default ~/.ssh/known_hosts).",
    ),
]
AcceptNewOpt = Annotated[
    bool,
    typer.Option(
        "--accept-new-host-keys",
        help="Trust hosts not yet in known_hosts and record their keys there. "
        "A changed key is always refused.",
    ),
]
ForksOpt = Annotated[int, typer.Option("--forks", "-f", min=1, help="Hosts worked on at once.")]
TimeoutOpt = Annotated[
    str,
    typer.Option(
        "--timeout",
        metavar="DURATION",
        help="Default timeout of every remote command (a step's `timeout` wins).",
    ),
]
ConnectTimeoutOpt = Annotated[
    str, typer.Option("--connect-timeout", metavar="DURATION", help="SSH connect timeout.")
]


def duration_option(name: str, value: str, parse: Any) -> float:
    """A duration option's value in seconds, more than none; a bad one is bad input naming
    the option."""
    try:
        seconds = float(parse(value))
    except ValueError as exc:
        raise InputError(Problem(str(exc), field=name)) from None
    if seconds <= 0:
        raise InputError(Problem(f"{value!r}: a timeout must be more than 0s", field=name))
    return seconds


def run_options(known_hosts: Path | None, **options: Any) -> RunOptions:
    """The executor's options from the command line's (`--known-hosts` by default
    OpenSSH's own file)."""
    from ..executor import RunOptions
    from ..transports.base import default_known_hosts

    path = (known_hosts or default_known_hosts()).resolve()
    if path.exists() and not path.is_file():
        raise InputError(Problem("not a regular file", str(path), field="--known-hosts"))
    return RunOptions(known_hosts=path, **options)


AskBecomePassOpt = Annotated[
    bool,
    typer.Option(
        "--ask-become-pass",
        "-K",
        help="Ask for the password sudo needs on the hosts, as ansible-playbook -K does. "
        "Without it: RUNBOOK_EXEC_BECOME_PASSWORD, else Ansible's become_password_file. A "
        "host's ansible_become_password wins. Never recorded: give it again to resume.",
    ),
]
BECOME_PASSWORD_VARIABLE = "RUNBOOK_EXEC_BECOME_PASSWORD"


def become_password(ask: bool) -> str | None:
    """The become password for this run: asked on the terminal (-K), else from the
    environment, else from Ansible's become_password_file; None if none is given."""
    import os
    import sys

    if ask:
        if not sys.stdin.isatty():
            why = f"-K asks on a terminal and there is none; set {BECOME_PASSWORD_VARIABLE}"
            raise InputError(Problem(why, field="--ask-become-pass"))
        import getpass

        password: str | None = getpass.getpass("BECOME password: ")
        where = "--ask-become-pass"
    else:
        password, where = os.environ.get(BECOME_PASSWORD_VARIABLE) or None, "environment"
        if password is None:
            from ..ansiblecfg import ansible_defaults, become_password_from_file

            file = ansible_defaults().become_password_file
            if file:
                password, where = become_password_from_file(file), "become_password_file"
    if password is not None and ("\n" in password or "\r" in password):
        why = "a become password is one line (it holds a line break)"
        raise InputError(Problem(why, field=where))
    return password


def print_previous(db: str, plan: Any) -> None:
    """After a plan: what `activate: previous` means on each host, from the record (if the
    store exists; a plan never creates one)."""
    from ..errors import RunbookExecError
    from ..service import Service

    if db.startswith("sqlite:///") and not Path(db.removeprefix("sqlite:///")).exists():
        return
    try:
        lines = Service.open(db).previous_releases(plan)
    except RunbookExecError as exc:
        lines = [f"cannot tell from the record: {exc}"]
    if lines:
        out().print("\n[bold]activate: previous[/bold], as recorded")
        for line in lines:
            out().print(f"  {line}", markup=False)
