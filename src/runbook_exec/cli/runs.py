"""The run lifecycle: `run`, `resume`, gates (`approve`, `reject`), the record (`runs`,
`show`), what is live where (`releases`) and `unlock`. Registered on the app in
`cli/__init__`, in this order."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import InputError, Problem
from ..jsonout import dumps
from .options import (
    DEFAULT_DB,
    AcceptNewOpt,
    AskBecomePassOpt,
    ConnectTimeoutOpt,
    DbOpt,
    ExtraVarsOpt,
    ForksOpt,
    InventoryOpt,
    KnownHostsOpt,
    LimitOpt,
    OperatorOpt,
    RunbookArg,
    TimeoutOpt,
    become_password,
    duration_option,
    out,
    print_previous,
    run_options,
)

if TYPE_CHECKING:
    from ..service import Service

NoInputOpt = Annotated[
    bool,
    typer.Option("--no-input", help="Never prompt: at an approval gate, save the run and exit 3."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary at the end.")]


def run(
    runbook: RunbookArg,
    inventory: InventoryOpt = None,
    extra_vars: ExtraVarsOpt = None,
    limit: LimitOpt = None,
    change_id: Annotated[
        str | None, typer.Option("--change-id", metavar="ID", help="Change ticket, recorded.")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", "-m", metavar="TEXT", help="Why, recorded.")
    ] = None,
    operator: OperatorOpt = None,
    forks: ForksOpt = 50,
    timeout: TimeoutOpt = "10m",
    connect_timeout: ConnectTimeoutOpt = "10s",
    output_limit: Annotated[
        int,
        typer.Option(
            "--output-limit",
            metavar="BYTES",
            min=0,
            max=1 << 30,
            help="Output kept per stream of each host-step (head and tail).",
        ),
    ] = 65536,
    known_hosts: KnownHostsOpt = None,
    accept_new_host_keys: AcceptNewOpt = False,
    ask_become_pass: AskBecomePassOpt = False,
    no_input: NoInputOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and stop; connects nowhere.")
    ] = False,
    as_json: JsonOpt = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Run a runbook on its hosts, batch by batch, recording every step.

    Everything is validated before any connection is made (exit 2 on bad input). The run
    locks each of its hosts (and its runbook's `lock:` name), all or none; a run that needs
    one of them is refused with exit 3, naming the holder. At an approval gate it asks (on a
    terminal) or saves the run and exits 3. Ctrl-C stops starting new work and leaves the
    run resumable (exit 130). Exit 0 only when every host succeeded; 1 when any host failed.

    Example: `runbook-exec run runbooks/deploy.yml -i inventory/ -e version=1.4.2
    --change-id CHG-1042 -m "Q4 release"`
    """
    from ..durations import parse_duration
    from ..prepare import prepare
    from ..runner import new_run_id
    from ..service import Service
    from ..store.audit import operator_name
    from ..views import print_plan

    who = operator_name(operator)
    options = run_options(  # every option is checked, even for a dry run
        known_hosts,
        forks=forks,
        timeout=duration_option("--timeout", timeout, parse_duration),
        connect_timeout=duration_option("--connect-timeout", connect_timeout, parse_duration),
        output_limit=output_limit,
        accept_new_host_keys=accept_new_host_keys,
    )
    prepared = prepare(
        runbook,
        inventory or [],
        extra_vars or [],
        limit,
        who,
        run_id=None if dry_run else new_run_id(),
    )
    if dry_run:
        print_plan(out(), prepared.plan)
        print_previous(db, prepared.plan)
        return
    options.become_password = become_password(ask_become_pass)
    service = Service.open(db, who)
    _carry_out(
        as_json,
        no_input,
        prepared.plan.batches,
        lambda view, approver: service.start(
            prepared,
            change_id=change_id,
            reason=reason,
            options=options,
            view=view,
            approver=approver,
        ),
    )


def resume(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to carry on.")],
    operator: OperatorOpt = None,
    replan: Annotated[
        bool,
        typer.Option(
            "--replan",
            help="Reach the hosts as the inventory says now (address, port, user), not as "
            "planned; the change is recorded.",
        ),
    ] = False,
    ask_become_pass: AskBecomePassOpt = False,
    no_input: NoInputOpt = False,
    as_json: JsonOpt = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Carry on a run after a crash, a kill, Ctrl-C, or an approval.

    Host-steps that finished are not run again; a host-step that started and never finished
    (the controller died while it ran) runs again. Secret parameters are read again from
    their environment variables, and a become password is given again (-K or the
    environment): neither is recorded. Hosts are reached as planned: if the inventory now gives
    one another address, port or user, the resume is refused, naming the change (--replan
    accepts it). The same run id, one continuous record.
    """
    from ..service import Service

    service = Service.open(db, operator)
    _resume(service, run_id, as_json, no_input, become_password(ask_become_pass), replan)


def _resume(
    service: Service,
    run_id: str,
    as_json: bool,
    no_input: bool,
    password: str | None,
    replan: bool = False,
) -> None:
    batches = service.run(run_id, outputs=False).run.batches
    _carry_out(
        as_json,
        no_input,
        batches,
        lambda view, approver: service.resume(
            run_id, view=view, approver=approver, replan=replan, become_password=password
        ),
    )


def _carry_out(as_json: bool, no_input: bool, batches: Any, go: Any) -> None:
    """Run with a view and an approver fit for where we are, print the outcome, and exit
    with its code."""
    import asyncio

    from ..live import ConsoleRecorder, print_changes, print_outcome
    from ..runner import summary_json

    console = Console(highlight=False, soft_wrap=True, stderr=as_json)
    interactive = sys.stdin.isatty() and console.is_terminal and not no_input
    views: list[ConsoleRecorder] = []

    def view(run_id: str) -> ConsoleRecorder:
        views.append(ConsoleRecorder(console, run_id, batches, live=console.is_terminal))
        views[-1].start()
        return views[-1]

    async def approver(message: str) -> tuple[bool, str | None] | None:
        if not interactive:
            return None
        for shown in views:
            shown.stop()
        answer = await asyncio.to_thread(console.input, f"[bold]{escape(message)}[/bold] \\[y/N] ")
        for shown in views:
            shown.start()
        return answer.strip().lower() in ("y", "yes"), None

    try:
        outcome = go(view, approver)
    finally:
        for shown in views:
            shown.stop()
    idle = {h for shown in views for h in shown.undid_nothing}
    print_outcome(console, outcome.run_id, outcome.status, outcome.hosts, outcome.exit_code, idle)
    switched = {h: c for shown in views for h, c in shown.switched.items()}
    print_changes(console, outcome.run_id, switched)
    if as_json:
        typer.echo(summary_json(outcome))
    raise typer.Exit(outcome.exit_code)


RunIdArg = Annotated[str, typer.Argument(metavar="RUN_ID", help="A run id from `runs`.")]
CommentOpt = Annotated[
    str | None, typer.Option("--comment", "-m", metavar="TEXT", help="Recorded with it.")
]


def approve(
    run_id: RunIdArg,
    comment: CommentOpt = None,
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Approve the gate a run is waiting at; then `resume RUN_ID` carries it on."""
    _decide(run_id, True, comment, operator, db)


def reject(
    run_id: RunIdArg,
    comment: CommentOpt = None,
    operator: OperatorOpt = None,
    ask_become_pass: AskBecomePassOpt = False,
    no_input: NoInputOpt = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Reject the gate a run is waiting at: the run ends there, through its `on_failure`.

    With `on_failure: rollback`, the rollback steps run now on the hosts the run changed
    (newest batch first), as if a batch had failed; otherwise the run ends as rejected.
    """
    _decide(run_id, False, comment, operator, db, no_input, ask_become_pass)


def _decide(
    run_id: str,
    approved: bool,
    comment: str | None,
    operator: str | None,
    db: str,
    no_input: bool = False,
    ask_become_pass: bool = False,
) -> None:
    from ..service import Service

    service = Service.open(db, operator)
    decision, who = service.decide(run_id, approved, comment), service.operator
    if approved:
        out().print(
            f"approved by {who}: {decision.message}\ncarry on with `runbook-exec resume {run_id}`"
        )
    elif decision.roll_back:
        out().print(f"rejected by {who}: {decision.message}; rolling back the hosts it changed")
        _resume(service, run_id, False, no_input, become_password(ask_become_pass))
    else:
        out().print(f"rejected by {who}: {decision.message}; run {run_id} ends here")


def runs(
    limit: Annotated[
        int, typer.Option("--last", "-n", min=1, max=100_000, help="How many runs.")
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """List runs, newest first: id, runbook, operator, change id, start, duration, status.

    Read from the verified audit trail; a run whose table row says otherwise is flagged."""
    from ..service import Service
    from ..views import print_runs, run_summary

    records = Service.open(db).runs(limit)
    if as_json:
        typer.echo(dumps({"runs": [run_summary(r) for r in records]}))
    else:
        print_runs(out(), records)


def show(
    run_id: RunIdArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Every step of a run on every host: status, exit code, duration and output.

    Read from the verified audit trail: where the tables or the chain say otherwise, the
    difference is shown as "record altered", and what is shown is what the events say."""
    from ..service import Service
    from ..views import print_run, run_json

    details = Service.open(db).run(run_id)
    if as_json:
        typer.echo(dumps(run_json(details)))
    else:
        print_run(out(), details)


def releases(
    inventory: InventoryOpt = None,
    limit: LimitOpt = None,
    check_hosts: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Also read each host's current link and flag drift "
            "between the record and the host (exit 1 on drift). Needs -i.",
        ),
    ] = False,
    known_hosts: KnownHostsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Which release is live on which host, which was before it, since when, by which run.

    From the record of every release switch. With -i (and --limit) only those hosts. With
    --check, each host's `current` link is read over SSH and compared with the record.
    """
    from ..inventory import select_hosts
    from ..service import Service

    if check_hosts and not inventory:
        raise InputError(Problem("--check needs -i INVENTORY to reach the hosts"))
    hosts = {h.name: h for h in select_hosts(inventory, "all", limit)} if inventory else None
    live = Service.open(db).releases(hosts, check=check_hosts, known_hosts=known_hosts)
    if as_json:
        typer.echo(dumps({"releases": [r.to_dict() for r in live.rows]}))
    else:
        from ..views import print_flags, print_releases

        print_flags(out(), live.flags)
        print_releases(out(), live.rows, checked=check_hosts)
    if check_hosts and live.drift:
        raise typer.Exit(1)


def unlock(
    name: Annotated[
        str, typer.Argument(metavar="LOCK", help="The lock's name (from the refusal).")
    ],
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Force a lock open, for a holder you know is gone.

    The run it belonged to can still be resumed, and takes the lock again."""
    from ..service import Service

    service = Service.open(db, operator)
    holder = service.unlock(name)
    out().print(f"unlocked by {service.operator}: {holder.describe()}")
