"""Ending and undoing runs: `cancel` (a waiting or interrupted run) and `rollback` (what
was live before a run, back on exactly the hosts it switched). Registered on the app in
`cli/__init__`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .options import (
    DEFAULT_DB,
    AskBecomePassOpt,
    DbOpt,
    KnownHostsOpt,
    OperatorOpt,
    become_password,
    err,
    out,
    run_options,
)
from .runs import JsonOpt, NoInputOpt, RunIdArg, _carry_out, _resume


def cancel(
    run_id: RunIdArg,
    comment: Annotated[
        str,
        typer.Option("--comment", "-m", metavar="TEXT", help="Why (required; recorded)."),
    ],
    rollback: Annotated[
        bool,
        typer.Option(
            "--rollback",
            help="Run the runbook's rollback steps on the hosts the run changed, then end.",
        ),
    ] = False,
    operator: OperatorOpt = None,
    ask_become_pass: AskBecomePassOpt = False,
    no_input: NoInputOpt = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """End a run that waits for approval or was interrupted, and free its hosts.

    Recorded with who and why. A run still running is refused (stop it first). With
    --rollback, the rollback steps run now on the hosts the run changed; a rollback that
    is interrupted is carried on by `resume RUN_ID`, and only the rollback.

    Example: `runbook-exec cancel 20261201-101500-a1b2c3 --rollback -m "wrong artifact"`
    """
    from ..service import Service

    service = Service.open(db, operator)
    decision = service.cancel(run_id, comment, rollback=rollback)
    if decision.roll_back:
        out().print(f"{decision.message}; rolling back the hosts it changed")
        _resume(service, run_id, False, no_input, become_password(ask_become_pass))
    else:
        nothing = " (it changed no host: nothing to roll back)" if rollback else ""
        out().print(f"run {run_id} {decision.message}{nothing}; its hosts are free")
        if decision.switched:
            err().print(
                "warning: the run was interrupted after it switched releases, and the "
                "steps after a switch (a restart, a proxy reload) may not have run there:"
            )
            for line in decision.switched:
                err().print(f"  {escape(line)}")
            err().print(
                "what those hosts serve may not be what the record says is live: check "
                "them (`releases --check`, the service itself) before the next run"
            )


def rollback(
    run_id: Annotated[
        str | None,
        typer.Argument(
            metavar="[RUN_ID]",
            help="The run to undo (default: the newest run that deployed a release; "
            "not one that only switched back).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Put hosts back even where another run has switched them since."
        ),
    ] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", "-m", metavar="TEXT", help="Why, recorded.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would go back where, and the plan.")
    ] = False,
    operator: OperatorOpt = None,
    known_hosts: KnownHostsOpt = None,
    ask_become_pass: AskBecomePassOpt = False,
    no_input: NoInputOpt = False,
    as_json: JsonOpt = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Undo a run: put back what was live before it, on exactly the hosts it switched.

    A new run (recorded, locked, resumable) of the undone run's rollback steps, with their
    health checks, in its batches, where `activate: previous` means what was live before
    that run; a runbook without rollback steps gets one release switch back per root.
    Hosts another run has switched since are refused by name (nothing is done) unless
    --force; hosts already back are left alone. A run that has not ended is refused:
    `cancel RUN_ID --rollback` is the way for those.

    Example: `runbook-exec rollback 20261201-101500-a1b2c3 -m "error rate up"`
    """
    from ..service import Service
    from ..views import print_plan

    service = Service.open(db, operator)
    undo = service.undo_plan(run_id, force=force)
    console = Console(highlight=False, soft_wrap=True, stderr=as_json)
    console.print(f"[bold]rollback of run {undo.run_id}[/bold]")
    for line in undo.changes:
        console.print(f"  {escape(line)}")
    for line in undo.settled:
        console.print(f"  [dim]{escape(line)}[/dim]")
    prepared = service.prepare_rollback(undo, for_run=not dry_run)
    if dry_run:
        print_plan(console, prepared.plan)
        return
    options = run_options(known_hosts) if known_hosts else None  # else the undone run's
    password = become_password(ask_become_pass)
    _carry_out(
        as_json,
        no_input,
        prepared.plan.batches,
        lambda view, approver: service.rollback(
            undo,
            prepared,
            reason=reason,
            options=options,
            view=view,
            approver=approver,
            become_password=password,
        ),
    )
