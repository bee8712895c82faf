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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    InputError,
    LockHeld,
    Problem,
    Refused,
)
from .events import RUN_ENDED, EventSink, HostStepResult, RunStatus, StepStatus, sinks_for
from .executor import (
    Approver,
    Cancellation,
    Connect,
    Executor,
    RunContext,
    RunOptions,
    RunState,
)
from .plan import Plan
from .prepare import Prepared, prepare_file
from .record import Record, RecordAltered, RunDetails, RunRecord
from .recorders import Auditor, StoreRecorder
from .runbook import runbook_from_text
from .store import LockHolder, Store

ViewFactory = Callable[[str], EventSink]
"""Given the run id, the recorder that shows the run to a person (or records nothing)."""

EXIT_FOR_STATUS: dict[str, int] = {
    RunStatus.SUCCEEDED: EXIT_OK,
    RunStatus.FAILED: EXIT_FAILED,
    RunStatus.ROLLED_BACK: EXIT_FAILED,
    RunStatus.ROLLBACK_FAILED: EXIT_FAILED,
    RunStatus.AWAITING_APPROVAL: EXIT_REFUSED,
    RunStatus.REJECTED: EXIT_REFUSED,
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
    steal_stale_lock: bool = False,
    on_note: Callable[[str], None] = lambda text: None,
    connect: Connect | None = None,
) -> Outcome:
    """Record a new run, take its lock, and carry it out (through `connect`'s sessions if
    given, else SSH)."""
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
        "lock_name": plan.lock,
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
            options=row["options"],
            plan_digest=plan.digest,
            work_digest=plan.work_digest,
            batches=[list(b) for b in plan.batches],
            plan=row["plan"],
        )
    record = Record(store)
    run = record.run(run_id, outputs=False).run
    _take_lock(store, record, run, plan.lock, operator, steal_stale_lock, on_note)
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


def auditor(store: Store, run: RunRecord, operator: str | None = None) -> Auditor:
    """The audit event maker for a recorded run (operator: who acts now, if not its own)."""
    return Auditor.for_run(
        store,
        {
            "id": run.id,
            "operator": run.operator,
            "change_id": run.change_id,
            "reason": run.reason,
            "runbook_name": run.runbook_name,
            "runbook_path": run.runbook_path,
            "runbook_sha256": run.runbook_sha256,
        },
        operator,
    )


def _take_lock(
    store: Store,
    record: Record,
    run: RunRecord,
    name: str,
    operator: str,
    steal: bool,
    on_note: Callable[[str], None],
) -> None:
    run_id = run.id
    audit = auditor(store, run, operator)

    def holder_of(lock: str) -> LockHolder | None:
        """The lock's holder as the record vouches for it; a lock row that disagrees with
        its holder's events is not trusted to refuse, nor to be stolen."""
        holder, flags = record.lock_holder(lock)
        if flags:
            raise RecordAltered(f"taking lock {lock!r} refused: {flags[0]}; nothing was done")
        return holder

    try:
        stolen = store.acquire_lock(name, run_id, operator, steal_stale=steal, holder_of=holder_of)
    except LockHeld as exc:
        audit.append("lock.refused", lock=name, message=str(exc))
        hint = (
            " Pass --steal-stale-lock to take it over."
            if exc.holder is not None and getattr(exc.holder, "stale", False)
            else " Wait for it, or `runbook-exec unlock NAME` if you know it is abandoned."
        )
        if not run.started:
            store.update_run(run_id, status="refused", message=str(exc), finished_at=time.time())
        raise LockHeld(f"{exc}.{hint}", exc.holder) from None
    except RecordAltered as exc:
        audit.append("lock.refused", lock=name, message=str(exc))
        if not run.started:
            store.update_run(run_id, status="refused", message=str(exc), finished_at=time.time())
        raise
    if stolen is not None:
        on_note(f"took over a stale lock: {stolen.describe()}")
        message = f"took over stale lock from run {stolen.run_id}"
        with store.batch():
            store.update_run(run_id, message=message)
            audit.append("lock.stolen", lock=name, message=message, holder=stolen.describe())
    else:
        audit.append("lock.taken", lock=name)


def resume(
    store: Store,
    run_id: str,
    *,
    operator: str,
    options: RunOptions | None,
    view: ViewFactory,
    approver: Approver | None,
    steal_stale_lock: bool = False,
    environ: Mapping[str, str] | None = None,
    on_note: Callable[[str], None] = lambda text: None,
) -> Outcome:
    """Carry on a run from its record: finished host-steps are not run again. Everything is
    taken from the run's verified events; a table that disagrees refuses (exit 4)."""
    store.require_key()
    record = Record(store)
    details = record.run(run_id)
    details.require_intact("resume")
    run = details.run
    if run.status in RUN_ENDED or run.status == RunStatus.REFUSED:
        raise Refused(f"run {run_id} has ended ({run.status}); nothing to resume")
    table = store.get_run(run_id) or {}
    lock = run.lock or table["lock_name"]
    holder, _ = record.lock_holder(lock)
    if holder is not None and holder.run_id == run_id and not holder.stale:
        raise Refused(
            f"run {run_id} is still running (pid {holder.pid} on {holder.machine}); "
            "stop it first, or wait for it"
        )
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
    prepared = prepare_file(
        runbook_file, inventory, [], run.limit, run.operator, environ, given, run_id=run_id
    )
    planned = [list(b) for b in run.batches]
    if [list(b) for b in prepared.plan.batches] != planned:
        raise InputError(
            Problem(
                f"the inventory no longer gives run {run_id} the hosts it planned "
                f"({', '.join(h for b in planned for h in b)}); nothing was run"
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
    _take_lock(store, record, run, lock, operator, steal_stale_lock, on_note)
    recorded = run.options if run.options is not None else table["options"]
    stored_options = RunOptions(**{**recorded, "known_hosts": Path(recorded["known_hosts"])})
    return _execute(
        store,
        record,
        run,
        prepared,
        run.operator,
        options or stored_options,
        view,
        approver,
        _state_of(details),
        resumed=True,
    )


def _state_of(details: RunDetails) -> RunState:
    finished = {
        step.key: HostStepResult(
            step.host,
            step.section,
            step.index,
            step.name,
            StepStatus(step.status),
            step.rc,
            step.stdout or "",
            step.stderr or "",
            step.message,
            attempts=step.attempts,
            ignored=step.ignored,
        )
        for step in details.steps
        if step.status != "running"  # started and never finished: runs again
    }
    hosts = {host.host: host.status for host in details.hosts}
    gates = {gate.key: {"status": gate.status} for gate in details.gates}
    return RunState(finished, hosts, gates)


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
    if _needs_release_history(prepared.plan):
        record.previous_release("-", "-")  # refuses now, before any host, if it cannot vouch
    audit = auditor(store, run, operator)
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
        record.previous_release,
        **({"connect": connect} if connect is not None else {}),
    )
    sink = sinks_for(run_id, writer, view(run_id))
    cancel = Cancellation()
    executor = Executor(context, sink, state, approver, cancel)
    try:
        status = asyncio.run(_with_signals(executor, cancel, sink))
    finally:
        writer.close()
    end_run(store, audit, run_id, status, prepared.plan.lock)
    hosts = {h.host: h.status for h in record.run(run_id, outputs=False).hosts}
    return Outcome(run_id, status, hosts)


def end_run(store: Store, audit: Auditor, run_id: str, status: str, lock: str) -> None:
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
            store.release_lock(lock, run_id)


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
