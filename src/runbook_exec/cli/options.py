"""Options and consoles every command group shares."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

DEFAULT_DB = "sqlite:///.runbook-exec/state.db"

DbOpt = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="RUNBOOK_EXEC_DB",
        metavar="URL",
        help="State store: sqlite:///PATH or postgresql://USER@HOST/DB. "
        "Default: SQLite in .runbook-exec/state.db here; RUNBOOK_EXEC_DB overrides.",
    ),
]
OperatorOpt = Annotated[
    str | None,
    typer.Option("--operator", metavar="NAME", help="Who is acting (default: your OS user)."),
]

err = Console(stderr=True, highlight=False)


def out() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = max(console.width, 160)  # logs and pipes: do not wrap tables narrowly
    return console
