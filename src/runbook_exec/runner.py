"""Runs as the CLI (or a script) starts them: validate, record, lock, execute, resume, decide.

Everything that can be wrong with the input is found before any connection is made; the run
is in the store before its first remote step, and its lock is taken before that.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import notify
from .errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    InputError,
    Refused,
)
from .events import RUN_ENDED, EventSink, RunStatus, register_sink, sinks_for
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
from .prepare import Prepared
from .record import Record, RecordAltered, RunRecord
from .recorders import Auditor, StoreRecorder
from .resuming import prepare_resume
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
    targets = notify.configured()  # a mistake in them is bad input: nothing is recorded
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
        targets=targets,
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
    become_password: str | None = None,
) -> Outcome:
    """Carry on a run from its record: finished host-steps are not run again. Everything is
    taken from the run's verified events; a table that disagrees refuses (exit 4). Hosts
    are reached as planned: where the inventory now says otherwise (an address, a port, a
    user), the resume is refused, naming each change, unless `replan` (recorded)."""
    store.require_key()
    try:
        targets = notify.configured()
    except InputError as exc:  # a run already under way is not held up by its notifications
        print(f"warning: no notifications for this resume: {exc}", file=sys.stderr)
        targets = []
    record = Record(store)
    details = record.run(run_id)
    details.require_intact("resume")
    run = details.run
    if run.status in RUN_ENDED or run.status == RunStatus.REFUSED:
        raise Refused(f"run {run_id} has ended ({run.status}); nothing to resume")
    still_running(store, record, run)
    prepared, changed = prepare_resume(store, record, run, environ, replan=replan)
    take_locks(store, record, run, operator, resuming=True)
    if changed:
        Auditor.for_recorded(store, run, operator).append(
            "run.replanned",
            changes=changed,
            connections={host: dict(c) for host, c in prepared.plan.connections.items()},
        )
    given = options or recorded_options(run, store)
    options = replace(given, become_password=become_password or given.become_password)
    return _execute(
        store,
        record,
        run,
        prepared,
        run.operator,
        options,
        view,
        approver,
        replace(RunState.of(details), roll_back=run.rolling_back),
        resumed=True,
        targets=targets,
    )


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
    targets: Sequence[notify.Target] = (),
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
    notifier = notify.for_run(targets, run, prepared.params.secrets, audit)
    if notifier is not None:
        notifier.started(resumed)

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
        _undoing(record, run_id, [h.name for h in prepared.hosts]),
        **({"connect": connect} if connect is not None else {}),
    )
    listening = register_sink(lambda rid: notifier if rid == run_id else None)
    try:
        sink = sinks_for(run_id, writer, view(run_id))
    finally:
        listening()
    cancel = Cancellation()
    executor = Executor(context, sink, state, approver, cancel)
    try:
        status = asyncio.run(_with_signals(executor, cancel, sink))
    except BaseException:
        if notifier is not None:
            notifier.close(2.0)  # what is queued goes out, briefly; the error goes on
        raise
    finally:
        writer.close()
    end_run(store, audit, run_id, status)
    hosts = {h.host: h.status for h in record.run(run_id, outputs=False).hosts}
    if notifier is not None:
        if status != RunStatus.AWAITING_APPROVAL:  # that one said so as its gate began
            notifier.finished(status, hosts)
        notifier.close()
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
        else:
            store.park_locks(run_id)


def _undoing(
    record: Record, run_id: str, hosts: list[str]
) -> Callable[[str, str, str, bool], tuple[str | None, str]]:
    """What a release step's `undo: RUN_ID|last` puts back on a host, from the verified
    release history (refused, exit 4, where the record cannot vouch for it)."""
    from .rollback import undo_here

    def target(host: str, root: str, which: str, force: bool) -> tuple[str | None, str]:
        releases = record.releases()
        if releases.flags:
            raise RecordAltered(f"undo on {host} refused: {releases.flags[0]}; nothing was done")
        return undo_here(
            releases.switches, host, root, which, hosts=hosts, current_run=run_id, force=force
        )

    return target


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
            release = planned.action.get("release") or {}
            activate = str(release.get("activate"))
            if activate == "previous" or "at run time>" in activate or release.get("undo"):
                return True
    return False


async def _with_signals(executor: Executor, cancel: Cancellation, sink: EventSink) -> str:
    """Ctrl-C (or SIGTERM) once: start no new work, let running commands end or time out.
    Twice: stop now; closing the connections ends the running commands on their hosts."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def stop() -> None:
        if cancel.request() == 1:
            sink.note(
                "stopping: no new work starts; running commands may finish "
                "(Ctrl-C again to end them)"
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
    from .jsonout import dumps

    return dumps(
        {
            "run_id": outcome.run_id,
            "status": outcome.status,
            "exit_code": outcome.exit_code,
            "hosts": outcome.hosts,
        }
    )
