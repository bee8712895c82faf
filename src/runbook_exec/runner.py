"""Runs as the CLI (or a script) starts them: validate, record, lock, execute, resume, decide.

Everything that can be wrong with the input is found before any connection is made; the run
is in the store before its first remote step, and its lock is taken before that.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import json
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    InputError,
    Problem,
    Refused,
)
from .events import RUN_ENDED, EventSink, RunStatus, sinks_for
from .executor import (
    Approver,
    Cancellation,
    Connect,
    Executor,
    RunContext,
    RunOptions,
    RunState,
)
from .holding import still_running, take_locks
from .plan import Plan
from .prepare import Prepared, prepare_file
from .record import Record, RecordAltered, RunRecord
from .recorders import Auditor, StoreRecorder
from .runbook import runbook_from_text
from .store import Store

if TYPE_CHECKING:
    from .rollback import UndoPlan

ViewFactory = Callable[[str], EventSink]
"""Given the run id, the recorder that shows the run to a person (or records nothing)."""

EXIT_FOR_STATUS: dict[str, int] = {
    RunStatus.SUCCEEDED: EXIT_OK,
    RunStatus.FAILED: EXIT_FAILED,
    RunStatus.ROLLED_BACK: EXIT_FAILED,
    RunStatus.ROLLBACK_FAILED: EXIT_FAILED,
    RunStatus.AWAITING_APPROVAL: EXIT_REFUSED,
    RunStatus.REJECTED: EXIT_REFUSED,
    RunStatus.CANCELLED: EXIT_REFUSED,
    RunStatus.REFUSED: EXIT_REFUSED,
    RunStatus.INTERRUPTED: EXIT_INTERRUPTED,
}


@dataclass
class Outcome:
    run_id: str
    status: str
    hosts: dict[str, str] = field(default_factory=dict)
    message: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_FOR_STATUS.get(self.status, EXIT_FAILED)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def start(
    store: Store,
    prepared: Prepared,
    *,
    operator: str,
    change_id: str | None,
    reason: str | None,
    options: RunOptions,
    view: ViewFactory,
    approver: Approver | None,
    connect: Connect | None = None,
    undoing: UndoPlan | None = None,
) -> Outcome:
    """Record a new run, take its locks, and carry it out (through `connect`'s sessions if
    given, else SSH). `undoing`: this run puts back what was live before another."""
    store.require_key()
    if prepared.run_id is None:
        raise ValueError("start() takes a plan prepared for a run: prepare(..., run_id=...)")
    run_id = prepared.run_id
    plan = prepared.plan
    secrets = prepared.params.secrets
    change_id = secrets.text(change_id) if change_id else change_id
    reason = secrets.text(reason) if reason else reason
    row = {
        "id": run_id,
        "runbook_name": prepared.runbook_file.runbook.name,
        "runbook_path": str(prepared.runbook_file.path.resolve()),
        "runbook_sha256": prepared.runbook_file.sha256,
        "runbook_text": prepared.runbook_file.text,
        "params": prepared.params.masked(),
        "secret_names": sorted(prepared.params.secret_names),
        "inventory": [str(Path(s).resolve()) for s in prepared.inventory],
        "limit_pattern": prepared.limit,
        "plan": plan.to_dict(),
        "plan_digest": plan.digest,
        "options": _options_record(options),
        "lock_name": plan.lock or "",
        "operator": operator,
        "os_user": getpass.getuser(),
        "machine": socket.gethostname(),
        "pid": os.getpid(),
        "change_id": change_id,
        "reason": reason,
        "status": "pending",
        "created_at": time.time(),
    }
    with store.batch():  # the run's row and its first event: both or neither
        store.create_run(
            row,
            [(host, number) for number, batch in enumerate(plan.batches, 1) for host in batch],
        )
        Auditor.for_run(store, row).append(
            "run.requested",
            # Everything a resume needs, so that it is taken from the chain, not a table.
            runbook_text=row["runbook_text"],
            params=row["params"],
            secret_names=row["secret_names"],
            inventory=row["inventory"],
            targets=plan.targets,
            limit=prepared.limit,
            lock=plan.lock,
            locks=list(plan.locks),
            connections={host: dict(c) for host, c in plan.connections.items()},
            options=row["options"],
            plan_digest=plan.digest,
            work_digest=plan.work_digest,
            batches=[list(b) for b in plan.batches],
            plan=row["plan"],
            **(
                {"rollback_of": undoing.run_id, "restore": undoing.restore}
                if undoing is not None
                else {}
            ),
        )
    record = Record(store)
    run = record.run(run_id, outputs=False).run
    take_locks(store, record, run, operator, resuming=False)
    return _execute(
        store,
        record,
        run,
        prepared,
        operator,
        options,
        view,
        approver,
        RunState(),
        resumed=False,
        connect=connect,
    )


def resume(
    store: Store,
    run_id: str,
    *,
    operator: str,
    options: RunOptions | None,
    view: ViewFactory,
    approver: Approver | None,
    environ: Mapping[str, str] | None = None,
    replan: bool = False,
) -> Outcome:
    """Carry on a run from its record: finished host-steps are not run again. Everything is
    taken from the run's verified events; a table that disagrees refuses (exit 4). Hosts
    are reached as planned: where the inventory now says otherwise (an address, a port, a
    user), the resume is refused, naming each change, unless `replan` (recorded)."""
    store.require_key()
    record = Record(store)
    details = record.run(run_id)
    details.require_intact("resume")
    run = details.run
    if run.status in RUN_ENDED or run.status == RunStatus.REFUSED:
        raise Refused(f"run {run_id} has ended ({run.status}); nothing to resume")
    table = store.get_run(run_id) or {}
    still_running(store, record, run)
    text = run.runbook_text if run.runbook_text is not None else table["runbook_text"]
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != run.runbook_sha256:
        raise RecordAltered(
            f"resume refused for run {run_id}: its runbook text does not have the SHA-256 "
            f"event {run.event} holds; nothing was run"
        )
    runbook_file = runbook_from_text(text, run.runbook_path)
    secret_names = run.secret_names if run.secret_names is not None else table["secret_names"]
    given = {k: v for k, v in run.params.items() if k not in secret_names and v is not None}
    inventory = run.inventory if run.inventory is not None else table["inventory"]
    registered: list[str] = []
    if run.rollback_of is not None:
        from .rollback import registered_names

        registered = registered_names(record.run(run.rollback_of, outputs=False).run)
    prepared = prepare_file(
        runbook_file,
        inventory,
        [],
        run.limit,
        run.operator,
        environ,
        given,
        run_id=run_id,
        registered=registered,
    )
    missing = [
        name
        for name in secret_names
        if run.params.get(name) is not None and prepared.params.values.get(name) is None
    ]
    if missing:
        params = runbook_file.runbook.params
        raise InputError(
            Problem(
                f"secret parameter {name!r} had a value when run {run_id} started and has "
                f"none now: set {params[name].env or 'its environment variable'} again "
                "(secrets are never recorded); nothing was run",
                field=f"params.{name}",
            )
            for name in missing
        )
    planned = [list(b) for b in run.batches]
    if [list(b) for b in prepared.plan.batches] != planned:
        raise InputError(
            Problem(
                f"the inventory no longer gives run {run_id} the hosts it planned "
                f"({', '.join(h for b in planned for h in b)}); nothing was run"
            )
        )
    changed = _connections_changed(run.connections, prepared.plan.connections)
    if changed and not replan:
        raise InputError(
            Problem(
                f"the inventory no longer reaches run {run_id}'s hosts as planned: "
                f"{'; '.join(changed)}. Put it back, or resume with --replan to use the "
                "inventory as it is now (recorded); nothing was run"
            )
        )
    if run.work_digest is not None and prepared.plan.work_digest != run.work_digest:
        raise InputError(
            Problem(
                f"run {run_id}'s plan no longer renders as event {run.event} recorded it: an "
                "inventory variable or a parameter read from the environment changed since "
                "it started; put it back, or start a new run; nothing was run"
            )
        )
    take_locks(store, record, run, operator, resuming=True)
    if changed:
        Auditor.for_recorded(store, run, operator).append(
            "run.replanned",
            changes=changed,
            connections={host: dict(c) for host, c in prepared.plan.connections.items()},
        )
    stored_options = recorded_options(run, store)
    return _execute(
        store,
        record,
        run,
        prepared,
        run.operator,
        options or stored_options,
        view,
        approver,
        replace(RunState.of(details), roll_back=run.rolling_back),
        resumed=True,
    )


def _connections_changed(
    planned: Mapping[str, Any] | None, now: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """`host2: port 2202 → 2203`, for each way the inventory now reaches a planned host
    differently (a run recorded before connections were: nothing to compare)."""
    if planned is None:
        return []
    changes = []
    for host, was in planned.items():
        is_now = now.get(host, {})
        for key in sorted(set(was) | set(is_now)):
            if was.get(key) != is_now.get(key):
                changes.append(f"{host}: {key} {was.get(key)} → {is_now.get(key)}")
    return changes


def _execute(
    store: Store,
    record: Record,
    run: RunRecord,
    prepared: Prepared,
    operator: str,
    options: RunOptions,
    view: ViewFactory,
    approver: Approver | None,
    state: RunState,
    *,
    resumed: bool,
    connect: Connect | None = None,
) -> Outcome:
    run_id = run.id
    history: Callable[[str, str], str | None] = record.previous_release
    if run.restore is not None and run.rollback_of is not None:
        # Undoing a run: "previous" is what was live before it, and its rollback steps see
        # what it registered, as they would have in that run.
        from .rollback import registered_values

        restore = run.restore
        history = lambda host, root: restore.get(host, {}).get(root)  # noqa: E731
        undone = registered_values(record.run(run.rollback_of))
        state = replace(state, registered={**undone, **state.registered})
    elif _needs_release_history(prepared.plan):
        record.previous_release("-", "-")  # refuses now, before any host, if it cannot vouch
    audit = Auditor.for_recorded(store, run, operator)
    with store.batch():
        audit.append("run.resumed" if resumed else "run.started")
        store.update_run(run_id, status="running", pid=os.getpid(), machine=socket.gethostname())
    writer = StoreRecorder(store, run_id, audit)

    context = RunContext(
        run_id,
        operator,
        prepared.runbook_file,
        prepared.hosts,
        prepared.plan,
        prepared.params,
        options,
        prepared.inventory,
        history,
        **({"connect": connect} if connect is not None else {}),
    )
    sink = sinks_for(run_id, writer, view(run_id))
    cancel = Cancellation()
    executor = Executor(context, sink, state, approver, cancel)
    try:
        status = asyncio.run(_with_signals(executor, cancel, sink))
    finally:
        writer.close()
    end_run(store, audit, run_id, status)
    hosts = {h.host: h.status for h in record.run(run_id, outputs=False).hosts}
    return Outcome(run_id, status, hosts)


def recorded_options(run: RunRecord, store: Store) -> RunOptions:
    """The options a run was started with, from its record (older runs: their table row)."""
    recorded = run.options if run.options is not None else (store.get_run(run.id) or {})["options"]
    return RunOptions(**{**recorded, "known_hosts": Path(recorded["known_hosts"])})


def end_run(store: Store, audit: Auditor, run_id: str, status: str) -> None:
    """Record how a run stopped or ended, in one transaction: its status, its hosts never
    reached (which say so, not "pending"), and, if it ended, its lock released."""
    ended = status in RUN_ENDED
    with store.batch():
        store.update_run(run_id, status=status, finished_at=time.time() if ended else None)
        if ended:
            for row in store.hosts_of(run_id):
                if row["status"] == "pending":
                    store.set_host_status(run_id, row["host"], "not_reached")
                    audit.append("host.status", host=row["host"], status="not_reached")
        audit.append("run.finished" if ended else "run.stopped", status=status)
        if ended:
            store.release_locks(run_id)


def _needs_release_history(plan: Plan) -> bool:
    """Whether a release step may switch a host to `previous`, which the record must vouch
    for before any host is touched. Read from the rendered plan (`activate: "{{ version }}"`
    with version=previous counts); a value known only at run time counts too."""
    for step in (*plan.steps, *plan.rollback):
        if step.kind != "release":
            continue
        for planned in step.actions:
            if planned.action is None:
                if "run time" in planned.note:
                    return True
                continue
            activate = str(planned.action["release"]["activate"])
            if activate == "previous" or "at run time>" in activate:
                return True
    return False


async def _with_signals(executor: Executor, cancel: Cancellation, sink: EventSink) -> str:
    """Ctrl-C (or SIGTERM) once: start no new work, let running commands end or time out.
    Twice: abandon them."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def stop() -> None:
        if cancel.request() == 1:
            sink.note(
                "stopping: no new work starts; running commands may finish "
                "(Ctrl-C again to abandon them)"
            )
        elif task is not None:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        return await executor.execute()
    except asyncio.CancelledError:
        return "interrupted"
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _options_record(options: RunOptions) -> dict[str, Any]:
    return {
        "forks": options.forks,
        "timeout": options.timeout,
        "connect_timeout": options.connect_timeout,
        "output_limit": options.output_limit,
        "known_hosts": str(options.known_hosts),
        "accept_new_host_keys": options.accept_new_host_keys,
    }


def summary_json(outcome: Outcome) -> str:
    return json.dumps(
        {
            "run_id": outcome.run_id,
            "status": outcome.status,
            "exit_code": outcome.exit_code,
            "hosts": outcome.hosts,
        },
        indent=2,
    )
