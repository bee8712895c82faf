"""`runbook-exec init`: a new workspace with the shipped runbooks, playbooks, an example
inventory and a settings file, ready for `check` and `plan`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError, Problem
from .options import out

SETTINGS = """\
# Settings for runbook-exec commands run in this folder (see the README, "Settings").
# Each key is the default of the option of that name; what is typed wins.
inventory = ["inventory/"]
# db = "postgresql://ops@db.internal/runbooks"   # default: ~/.local/state/runbook-exec/state.db
# operator = "anna"
# forks = 50
# timeout = "10m"
"""


def examples() -> Path:
    """Where the shipped examples are: inside the installed package, or, in a source
    checkout (an editable install), at its top."""
    from importlib.resources import files

    import runbook_exec

    packaged = Path(str(files("runbook_exec"))) / "examples"
    if (packaged / "runbooks").is_dir():
        return packaged
    checkout = Path(runbook_exec.__file__).resolve().parents[2]
    if (checkout / "runbooks").is_dir():
        return checkout
    raise InputError(Problem("the example runbooks are not installed with this copy"))


def init(
    folder: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="The workspace to make (default: here)."),
    ] = Path("."),
) -> None:
    """Start a workspace: the shipped runbooks, playbooks, an example inventory (hosts.ini
    and group_vars, to make your own) and runbook-exec.toml.

    Nothing that exists is overwritten: if any of those files is there already, nothing is
    written and each is named (exit 2).

    Example: `runbook-exec init site && cd site && runbook-exec plan runbooks/restart.yml`
    """
    source = examples()
    copies = [
        (path, folder / name / path.relative_to(source / name))
        for name in ("runbooks", "playbooks", "inventory")
        for path in sorted((source / name).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    ]
    settings = folder / "runbook-exec.toml"
    there = [str(target) for _, target in copies if target.exists()]
    if settings.exists():
        there.append(str(settings))
    if there:
        raise InputError([Problem("exists already; nothing was written", path) for path in there])
    for path, target in copies:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    settings.write_text(SETTINGS)
    where = "" if folder == Path(".") else f"cd {folder} && "
    made = "runbooks/, playbooks/, inventory/, runbook-exec.toml"
    out().print(f"made a workspace in {folder.resolve()}: {made}", markup=False)
    out().print(
        "next: put your hosts in inventory/hosts.ini (group `web`), then "
        f"`{where}runbook-exec plan runbooks/restart.yml`",
        markup=False,
    )
