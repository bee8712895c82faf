"""The `runbook-exec` command: parses options, calls the layers below, renders the result.

Heavy imports (Pydantic models, Ansible) happen inside the commands that need them, so
`runbook-exec --help` stays instant. Error families map to exit codes in `main` alone.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, InputError, Problem, RunbookExecError
from .audit import audit_app
from .options import DEFAULT_DB, DbOpt, OperatorOpt, err, out

if TYPE_CHECKING:
    from ..inventory import Host
    from ..params import ResolvedParams
    from ..plan import Plan
    from ..runbook import RunbookFile

app = typer.Typer(
    name="runbook-exec",
    help=(
        "Run declarative runbooks (deploy, gray release, rollback, restart) on real servers "
        "over SSH and Ansible, with an audit trail that proves itself.\n\n"
        "Start with [bold]check[/bold] (is the runbook valid?) and [bold]plan[/bold] (what "
        "would a run do, host by host?). Exit codes: 0 ok, 1 run failed, 2 bad input, "
        "3 refused, 4 audit trail not writable, 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

RunbookArg = Annotated[
    Path, typer.Argument(help="The runbook YAML file.", show_default=False, metavar="RUNBOOK")
]
InventoryOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--inventory",
        "-i",
        metavar="INVENTORY",
        help="Ansible inventory: INI or YAML file, or a directory with group_vars/host_vars. "
        "Repeatable.",
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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"runbook-exec {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
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

    Example: runbook-exec check runbooks/deploy.yml -i inventory/staging.ini -e version=1.4.2
    """
    from .. import checks
    from ..params import parse_extra_vars, resolve_params
    from ..runbook import load_runbook

    runbook_file = load_runbook(runbook, str(runbook))
    problems: list[Problem] = []
    params = hosts = plan = None
    try:
        params = resolve_params(
            runbook_file, parse_extra_vars(extra_vars or []), os.environ, Path.cwd()
        )
    except InputError as exc:
        problems.extend(exc.problems)
    if inventory:
        try:
            hosts = _select_hosts(runbook_file, inventory, limit)
        except InputError as exc:
            problems.extend(exc.problems)
    problems.extend(checks.template_syntax(runbook_file))
    if params is not None and hosts is not None and not problems:
        try:
            plan = _plan(runbook_file, hosts, params, limit, operator)
        except InputError as exc:
            problems.extend(exc.problems)
    problems.extend(checks.missing_files(runbook_file, plan))
    problems.extend(checks.playbook_syntax(runbook_file))
    if problems:
        raise InputError(problems)
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
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Show what a run would do, host by host, without connecting anywhere.

    Prints the hosts of each batch in order, the gates between batches, every step rendered
    for each host (secrets masked; identical renderings grouped), and what happens on
    failure. The same inputs always give the same plan.

    Example: runbook-exec plan runbooks/deploy.yml -i inventory/staging.ini -e version=1.4.2
    """
    from ..params import parse_extra_vars, resolve_params
    from ..runbook import load_runbook
    from ..views import print_plan

    if not inventory:
        raise InputError(Problem("plan needs an inventory: give -i INVENTORY"))
    runbook_file = load_runbook(runbook, str(runbook))
    problems: list[Problem] = []
    params = hosts = None
    try:
        params = resolve_params(
            runbook_file, parse_extra_vars(extra_vars or []), os.environ, Path.cwd()
        )
    except InputError as exc:
        problems.extend(exc.problems)
    try:
        hosts = _select_hosts(runbook_file, inventory, limit)
    except InputError as exc:
        problems.extend(exc.problems)
    if problems or params is None or hosts is None:
        raise InputError(problems)
    result = _plan(runbook_file, hosts, params, limit, operator)
    if as_json:
        typer.echo(result.to_json())
    else:
        print_plan(out(), result)
    if check_mode:
        from .. import runner
        from ..executor import RunOptions
        from ..views import print_check_mode

        prepared = runner.Prepared(
            runbook_file, tuple(map(str, inventory)), hosts, params, result, limit
        )
        options = RunOptions(
            known_hosts=(known_hosts or Path("~/.ssh/known_hosts").expanduser()).resolve()
        )
        print_check_mode(out(), runner.check_mode(prepared, options))


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
NoInputOpt = Annotated[
    bool,
    typer.Option("--no-input", help="Never prompt: at an approval gate, save the run and exit 3."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary at the end.")]
StealOpt = Annotated[
    bool,
    typer.Option(
        "--steal-stale-lock", help="Take over a lock whose holder is known to be gone (recorded)."
    ),
]


@app.command()
def run(
    runbook: RunbookArg,
    inventory: InventoryOpt = None,
    extra_vars: ExtraVarsOpt = None,
    limit: LimitOpt = None,
    change_id: Annotated[
        str | None, typer.Option("--change-id", metavar="ID", help="Change ticket, recorded.")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", metavar="TEXT", help="Why, recorded.")
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
            help="Output kept per stream of each host-step (head and tail).",
        ),
    ] = 65536,
    known_hosts: KnownHostsOpt = None,
    accept_new_host_keys: AcceptNewOpt = False,
    steal_stale_lock: StealOpt = False,
    no_input: NoInputOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and stop; connects nowhere.")
    ] = False,
    as_json: JsonOpt = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Run a runbook on its hosts, batch by batch, recording every step.

    Everything is validated before any connection is made (exit 2 on bad input). The run
    takes a lock (the runbook's `lock`, or its exact set of hosts); a second run that needs it
    is refused with exit 3. At an approval gate it asks (on a terminal) or saves the run and
    exits 3. Ctrl-C stops starting new work and leaves the run resumable (exit 130).
    Exit 0 only when every host succeeded; 1 when any host failed.

    Example: runbook-exec run runbooks/deploy.yml -i inventory/ -e version=1.4.2
    --change-id CHG-1042 --reason "Q4 release"
    """
    from .. import runner
    from ..durations import parse_duration
    from ..executor import RunOptions
    from ..store import Store
    from ..store.audit import operator_name
    from ..views import print_plan

    who = operator_name(operator)
    prepared = runner.prepare(runbook, inventory or [], extra_vars or [], limit, who)
    if dry_run:
        print_plan(out(), prepared.plan)
        return
    options = RunOptions(
        forks=forks,
        timeout=_duration_option("--timeout", timeout, parse_duration),
        connect_timeout=_duration_option("--connect-timeout", connect_timeout, parse_duration),
        output_limit=output_limit,
        known_hosts=(known_hosts or Path("~/.ssh/known_hosts").expanduser()).resolve(),
        accept_new_host_keys=accept_new_host_keys,
    )
    store = Store.open(db)
    _carry_out(
        as_json,
        no_input,
        prepared.plan.batches,
        lambda view, approver, note: runner.start(
            store,
            prepared,
            operator=who,
            change_id=change_id,
            reason=reason,
            options=options,
            view=view,
            approver=approver,
            steal_stale_lock=steal_stale_lock,
            on_note=note,
        ),
    )


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to carry on.")],
    operator: OperatorOpt = None,
    steal_stale_lock: StealOpt = False,
    no_input: NoInputOpt = False,
    as_json: JsonOpt = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Carry on a run after a crash, a kill, Ctrl-C, or an approval.

    Host-steps that finished are not run again; a host-step that started and never finished
    (the controller died while it ran) runs again. Secret parameters are read again from
    their environment variables. The same run id, one continuous record.
    """
    from .. import runner
    from ..store import Store
    from ..store.audit import operator_name

    store = Store.open(db)
    record = runner.load_run(store, run_id)
    who = operator_name(operator)
    _carry_out(
        as_json,
        no_input,
        record["plan"]["batches"],
        lambda view, approver, note: runner.resume(
            store,
            run_id,
            operator=who,
            options=None,
            view=view,
            approver=approver,
            steal_stale_lock=steal_stale_lock,
            on_note=note,
        ),
    )


def _carry_out(as_json: bool, no_input: bool, batches: Any, go: Any) -> None:
    """Run with a view and an approver fit for where we are, print the outcome, and exit
    with its code."""
    import asyncio

    from ..live import ConsoleRecorder, print_outcome
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

    def note(text: str) -> None:
        console.print(f"[yellow]{text}[/yellow]")

    try:
        outcome = go(view, approver, note)
    finally:
        for shown in views:
            shown.stop()
    print_outcome(console, outcome.run_id, outcome.status, outcome.hosts, outcome.exit_code)
    if as_json:
        typer.echo(summary_json(outcome))
    raise typer.Exit(outcome.exit_code)


RunIdArg = Annotated[str, typer.Argument(metavar="RUN_ID", help="A run id from `runs`.")]
CommentOpt = Annotated[
    str | None, typer.Option("--comment", "-m", metavar="TEXT", help="Recorded with it.")
]


@app.command()
def approve(
    run_id: RunIdArg,
    comment: CommentOpt = None,
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Approve the gate a run is waiting at; then `resume RUN_ID` carries it on."""
    _decide(run_id, True, comment, operator, db)


@app.command()
def reject(
    run_id: RunIdArg,
    comment: CommentOpt = None,
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Reject the gate a run is waiting at: the run ends there, as rejected."""
    _decide(run_id, False, comment, operator, db)


def _decide(
    run_id: str, approved: bool, comment: str | None, operator: str | None, db: str
) -> None:
    from .. import runner
    from ..store import Store
    from ..store.audit import operator_name

    who = operator_name(operator)
    message = runner.decide(Store.open(db), run_id, approved, who, comment)
    if approved:
        out().print(f"approved by {who}: {message}\ncarry on with `runbook-exec resume {run_id}`")
    else:
        out().print(f"rejected by {who}: {message}; run {run_id} ends here")


@app.command()
def runs(
    limit: Annotated[int, typer.Option("--last", "-n", min=1, help="How many runs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """List runs, newest first: id, runbook, operator, change id, start, duration, status."""
    from ..store import Store
    from ..views import print_runs, run_summary

    records = Store.open(db).list_runs(limit)
    if as_json:
        typer.echo(json.dumps([run_summary(r) for r in records], indent=2))
    else:
        print_runs(out(), records)


@app.command()
def show(
    run_id: RunIdArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Every step of a run on every host: status, exit code, duration and output."""
    from .. import runner
    from ..store import Store
    from ..views import print_run, run_summary

    store = Store.open(db)
    record = runner.load_run(store, run_id)
    steps = store.host_steps_of(run_id)
    gates = store.gates_of(run_id)
    tasks = store.task_results_of(run_id)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    **run_summary(record),
                    "params": record["params"],
                    "host_steps": steps,
                    "task_results": tasks,
                    "gates": list(gates.values()),
                    "hosts": store.hosts_of(run_id),
                },
                indent=2,
                default=str,
            )
        )
    else:
        print_run(out(), record, store.hosts_of(run_id), steps, gates, tasks)


@app.command()
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
    import asyncio

    from .. import releases as live
    from ..inventory import select_hosts
    from ..store import Store
    from ..transports.ssh import SshOptions

    hosts = {h.name: h for h in select_hosts(inventory, "all", limit)} if inventory else None
    if check_hosts and hosts is None:
        raise InputError(Problem("--check needs -i INVENTORY to reach the hosts"))
    store = Store.open(db)
    rows = live.recorded(store.live_releases(list(hosts) if hosts else None), store.switches)
    if check_hosts and hosts is not None:
        options = SshOptions((known_hosts or Path("~/.ssh/known_hosts").expanduser()).resolve())
        rows = asyncio.run(live.check(rows, hosts, options))
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        from ..views import print_releases

        print_releases(out(), rows, checked=check_hosts)
    if check_hosts and any(r.drift for r in rows):
        raise typer.Exit(1)


@app.command()
def unlock(
    name: Annotated[
        str, typer.Argument(metavar="LOCK", help="The lock's name (from the refusal).")
    ],
    operator: OperatorOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Force a lock open. Only for a holder you know is gone; the run it belonged to can
    still be resumed, and takes the lock again."""
    from .. import runner
    from ..store import Store
    from ..store.audit import operator_name

    store = Store.open(db)
    holder = store.force_unlock(name)
    if holder is None:
        raise InputError(Problem(f"no lock named {name!r}"))
    runner.auditor(store, holder.run_id, operator_name(operator)).append(
        "lock.forced", lock=name, message=holder.describe()
    )
    out().print(f"unlocked by {operator_name(operator)}: {holder.describe()}")


def _duration_option(name: str, value: str, parse: Any) -> float:
    try:
        return float(parse(value))
    except ValueError as exc:
        raise InputError(Problem(str(exc), field=name)) from None


def _select_hosts(runbook_file: RunbookFile, sources: list[Path], limit: str | None) -> list[Host]:
    from ..inventory import select_hosts

    return select_hosts(sources, runbook_file.runbook.targets, limit)


def _plan(
    runbook_file: RunbookFile,
    hosts: list[Host],
    params: ResolvedParams,
    limit: str | None,
    operator: str | None,
) -> Plan:
    from ..plan import build_plan

    run = {"id": "(assigned when the run starts)", "operator": operator or getpass.getuser()}
    return build_plan(runbook_file, hosts, params, limit=limit, run=run)


app.add_typer(audit_app, name="audit")


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the app and turn our error families into exit codes."""
    try:
        return app(args=argv, standalone_mode=True)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except RunbookExecError as exc:
        problems = exc.problems if isinstance(exc, InputError) else (Problem(str(exc)),)
        from ..views import print_problems

        print_problems(err, problems)
        if isinstance(exc, InputError) and len(problems) > 1:
            err.print(f"{len(problems)} problems; nothing was run.")
        sys.exit(exc.exit_code)


__all__ = ["EXIT_BAD_INPUT", "app", "main"]
