"""The `runbook-exec` command: parses options, calls the layers below, renders the result.

Heavy imports (Pydantic models, Ansible) happen inside the commands that need them, so
`runbook-exec --help` stays instant. Error families map to exit codes in `main` alone.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .. import __version__
from ..errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    InputError,
    Problem,
    RunbookExecError,
)
from . import handover, init, runs, undo, web
from .audit import audit_app
from .helptext import plain_metavars
from .options import (
    DEFAULT_DB,
    AskBecomePassOpt,
    DbOpt,
    ExtraVarsOpt,
    InventoryOpt,
    KnownHostsOpt,
    LimitOpt,
    OperatorOpt,
    RunbookArg,
    become_password,
    err,
    out,
    print_previous,
    run_options,
)
from .warm import warm_app

plain_metavars()
app = typer.Typer(
    name="runbook-exec",
    help=(
        "Run declarative runbooks (deploy, gray release, rollback, restart) on real servers "
        "over SSH and Ansible, with an audit trail that proves itself.\n\n"
        "Start with **check** (is the runbook valid?) and **plan** (what "
        "would a run do, host by host?). Exit codes: 0 ok, 1 run failed, 2 bad input, "
        "3 refused, 4 audit trail refuses, 70 internal error, 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"runbook-exec {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Run declarative runbooks on real servers."""


@app.command()
def check(
    runbook: RunbookArg,
    inventory: InventoryOpt = None,
    extra_vars: ExtraVarsOpt = None,
    limit: LimitOpt = None,
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Validate a runbook without connecting anywhere.

    Checks the runbook's fields, the parameters given with -e, the inventory and host
    pattern (with -i), every template for every host, that local files the steps need exist,
    and the syntax of referenced playbooks. Prints every problem, not only the first.
    Exit 0 when all is well, 2 otherwise.

    Example: `runbook-exec check runbooks/deploy.yml -i inventory/ -e version=1.4.2
    -e artifact=dist/app-1.4.2.tar.gz`
    """
    from ..prepare import check as check_runbook
    from ..store.audit import operator_name

    checked = check_runbook(
        runbook, inventory or [], extra_vars or [], limit, operator_name(operator)
    )
    runbook_file, plan = checked.runbook_file, checked.plan
    for warning in checked.warnings:
        err().print(f"warning: {warning}", markup=False)
    book = runbook_file.runbook
    summary = f"OK {runbook_file.display_path}: runbook '{book.name}', {len(book.steps)} steps"
    if plan is not None:
        sizes = ", ".join(str(len(b)) for b in plan.batches)
        summary += f", {plan.host_count} hosts in {len(plan.batches)} batches ({sizes})"
    else:
        summary += "; give -i INVENTORY to check hosts and templates too"
    out().print(summary)


@app.command()
def plan(
    runbook: RunbookArg,
    inventory: InventoryOpt = None,
    extra_vars: ExtraVarsOpt = None,
    limit: LimitOpt = None,
    operator: OperatorOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the plan as JSON, for scripts.")
    ] = False,
    check_mode: Annotated[
        bool,
        typer.Option(
            "--check-mode",
            help="Also run the playbook and module steps in Ansible "
            "check mode on every host: connects, shows what would change, changes "
            "nothing.",
        ),
    ] = False,
    known_hosts: KnownHostsOpt = None,
    ask_become_pass: AskBecomePassOpt = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Show what a run would do, host by host, without connecting anywhere.

    Prints the hosts of each batch in order, the gates between batches, every step rendered
    for each host (secrets masked; identical renderings grouped), and what happens on
    failure. The same inputs always give the same plan. Local files and playbook syntax are
    not looked at here: `check` does, and so does `run` before it connects anywhere.

    Example: `runbook-exec plan runbooks/deploy.yml -i inventory/ -e version=1.4.2
    -e artifact=dist/app-1.4.2.tar.gz`
    """
    from ..prepare import prepare
    from ..store.audit import operator_name
    from ..views import print_plan

    if not inventory:
        raise InputError(Problem("plan needs an inventory: give -i INVENTORY"))
    prepared = prepare(
        runbook, inventory, extra_vars or [], limit, operator_name(operator), verify=check_mode
    )
    if as_json:
        from ..jsonout import dumps

        typer.echo(dumps(prepared.plan.to_dict()))
    else:
        print_plan(out(), prepared.plan)
        print_previous(db, prepared.plan)
    if check_mode:
        from ..prepare import check_mode as in_check_mode
        from ..views import print_check_mode

        options = run_options(known_hosts, become_password=become_password(ask_become_pass))
        print_check_mode(out(), in_check_mode(prepared, options))


for command in (
    runs.run,
    runs.resume,
    runs.approve,
    runs.reject,
    undo.cancel,
    undo.rollback,
    runs.runs,
    runs.show,
    runs.releases,
    runs.unlock,
    handover.report,
    web.serve,
    init.init,
):
    app.command()(command)
app.add_typer(audit_app, name="audit")
app.add_typer(handover.handover_app, name="handover")
app.add_typer(web.users_app, name="users")
app.add_typer(web.tokens_app, name="tokens")
app.add_typer(
    warm_app,
    name="warm",
    short_help="Start commands in milliseconds: a warm controller (start, status, stop).",
)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the app and turn our error families into exit codes."""
    from ..scratch import remove_leftovers

    remove_leftovers()  # what killed commands left in their scratch folders
    try:
        from typer.main import get_command

        from ..settings import default_map, load

        settings = load()
        defaults = default_map(get_command(app), settings) if settings else None
        return app(args=argv, standalone_mode=True, default_map=defaults)
    except KeyboardInterrupt:
        err().print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except RunbookExecError as exc:
        problems = exc.problems if isinstance(exc, InputError) else (Problem(str(exc)),)
        from ..views import print_problems

        print_problems(err(), problems)
        if isinstance(exc, InputError) and len(problems) > 1:
            err().print(f"{len(problems)} problems; nothing was run.")
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug of ours: one line here, the traceback in a file
        where = _debug_log(exc)
        err().print(
            f"error: internal error ({type(exc).__name__}: {exc}); the details are in "
            f"{where}. Please report it.",
            markup=False,
        )
        sys.exit(EXIT_INTERNAL)


def _debug_log(exc: Exception) -> str:
    """The traceback, written where only this user can read it; returns where."""
    import os
    import time
    import traceback

    from ..inventory import default_cache_dir

    folder = default_cache_dir() / "errors"
    text = "".join(traceback.format_exception(exc))
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(f"runbook-exec {' '.join(sys.argv[1:2])} …\n{text}")  # no values: secrets
        return str(path)
    except OSError:
        return "(no log could be written: " + text.strip().splitlines()[-1] + ")"


__all__ = ["EXIT_BAD_INPUT", "app", "main"]
