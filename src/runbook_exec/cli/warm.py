"""`runbook-exec warm …`: start, stop and look at the warm controller (see `runbook_exec.warm`)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ..durations import format_duration, parse_duration
from ..errors import EXIT_FAILED, InputError, Problem, Refused
from ..processes import alive
from ..wire import socket_path
from .options import out

warm_app = typer.Typer(
    help=(
        "Keep a warm controller: one process that has loaded runbook-exec once and starts "
        "each command as a fork of itself, in milliseconds instead of ~0.7 s. While it runs, "
        "every `runbook-exec` command of this installation and user goes through it, with "
        "your directory, environment, terminal and exit code; set RUNBOOK_EXEC_NO_WARM=1 to "
        "bypass it. It stops when idle, when stopped, or when the code on disk changes."
    ),
    no_args_is_help=True,
)


@warm_app.command("start")
def warm_start(
    foreground: Annotated[
        bool,
        typer.Option("--foreground", help="Stay in the foreground, logging to stderr."),
    ] = False,
    idle_timeout: Annotated[
        str,
        typer.Option(
            "--idle-timeout",
            metavar="DURATION",
            help="Stop after this long without a command (0: never).",
        ),
    ] = "8h",
) -> None:
    """Start the warm controller (in the background unless --foreground)."""
    from .. import warm

    try:
        idle = parse_duration(idle_timeout)
    except ValueError as exc:
        raise InputError(Problem(str(exc), field="--idle-timeout")) from None
    path = socket_path()
    running = warm.ask("status", path)
    if running is not None and "pid" in running:
        out().print(f"the warm controller is already running (pid {running['pid']}, {path})")
        return
    try:
        if foreground:
            warm.serve(path, idle, _command)
            return
        pid = warm.serve_in_background(path, idle, _command)
    except warm.WarmError as exc:
        raise Refused(str(exc)) from None
    out().print(
        f"warm controller ready (pid {pid}, socket {path}, log {path}.log); "
        f"it stops after {format_duration(idle) if idle else 'never'} idle, or with "
        "`runbook-exec warm stop`"
    )


@warm_app.command("status")
def warm_status() -> None:
    """Whether a warm controller runs for this installation; exit 1 if none."""
    from .. import warm

    path = socket_path()
    reply = warm.ask("status", path)
    if reply is None or "pid" not in reply:
        out().print(f"no warm controller is running ({path})")
        raise typer.Exit(EXIT_FAILED)
    up = format_duration(round(time.time() - float(reply["since"])))
    out().print(
        f"warm controller: pid {reply['pid']}, up {up}, {reply['served']} command(s) "
        f"started, socket {path}"
    )


@warm_app.command("stop")
def warm_stop() -> None:
    """Stop the warm controller. Commands it has started go on to their end."""
    from .. import warm

    reply = warm.ask("stop")
    if reply is None or "pid" not in reply:
        out().print("no warm controller was running")
        return
    pid = int(reply["pid"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.02)
    out().print(f"stopped the warm controller (pid {pid})")


def _command(argv: list[str]) -> None:
    """What the warm controller runs for each request: this CLI, as started by hand."""
    from . import main

    main(argv)
