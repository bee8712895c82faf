"""Runs as the CLI (or a script) starts them: validate, record, lock, execute, resume, decide.

Everything that can be wrong with the input is found before any connection is made; the run
is in the store before its first remote step, and its lock is taken before that.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import queue
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
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
    NotFound,
    Problem,
    Refused,
    StoreError,
)
from .executor import Approver, Executor, HostStepResult, Recorder, RunOptions, RunState
from .inventory import Host, select_hosts
from .params import ResolvedParams, parse_extra_vars, resolve_params
from .plan import Plan, build_plan
from .releases import previous_of
from .runbook import RunbookFile, load_runbook, runbook_from_text
from .steps import NOT_YET, ReleaseSwitch
from .store import Store

ViewFactory = Callable[[str], Recorder]
"""Given the run id, the recorder that shows the run to a person (or records nothing)."""

EXIT_FOR_STATUS = {
    "succeeded": EXIT_OK,
    "failed": EXIT_FAILED,
    "rolled_back": EXIT_FAILED,
    "rollback_failed": EXIT_FAILED,
    "awaiting_approval": EXIT_REFUSED,
    "rejected": EXIT_REFUSED,
    "refused": EXIT_REFUSED,
    "interrupted": EXIT_INTERRUPTED,
}
ENDED = frozenset({"succeeded", "failed", "rolled_back", "rollback_failed", "rejected"})


@dataclass(frozen=True)
class Prepared:
    """A validated request: everything needed to run, found without connecting anywhere."""

    runbook_file: RunbookFile
    inventory: tuple[str, ...]
    hosts: list[Host]
    params: ResolvedParams
    plan: Plan
    limit: str | None


@dataclass
class Outcome:
    run_id: str
    status: str
    hosts: dict[str, str] = field(default_factory=dict)
    message: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_FOR_STATUS.get(self.status, EXIT_FAILED)


def operator_name(given: str | None) -> str:
    return given or os.environ.get("RUNBOOK_EXEC_OPERATOR") or getpass.getuser()


def prepare(
    runbook: Path,
    inventory: Sequence[Path],
    extra_vars: Sequence[str],
    limit: str | None,
    operator: str,
    environ: Mapping[str, str] | None = None,
) -> Prepared:
    """Load and check everything a run needs; `InputError` lists every problem found."""
    runbook_file = load_runbook(runbook, str(runbook))
    return _prepare(runbook_file, [str(p) for p in inventory], extra_vars, limit, operator, environ)


def _prepare(
    runbook_file: RunbookFile,
    inventory: Sequence[str],
    extra_vars: Sequence[str],
    limit: str | None,
    operator: str,
    environ: Mapping[str, str] | None,
    given_values: Mapping[str, Any] | None = None,
) -> Prepared:
    problems: list[Problem] = []
    params = hosts = None
    try:
        from .params import GivenValue

        given = parse_extra_vars(list(extra_vars))
        for name, value in (given_values or {}).items():
            given.setdefault(name, GivenValue(value, "the run's record"))
        params = resolve_params(runbook_file, given, environ or os.environ, Path.cwd())
    except InputError as exc:
        problems.extend(exc.problems)
    if not inventory:
        problems.append(Problem("no inventory given; use -i INVENTORY (repeatable)"))
    else:
        try:
            hosts = select_hosts(inventory, runbook_file.runbook.targets, limit)
        except InputError as exc:
            problems.extend(exc.problems)
    problems.extend(_unsupported(runbook_file))
    if problems or params is None or hosts is None:
        raise InputError(problems)
    plan = build_plan(
        runbook_file,
        hosts,
        params,
        limit=limit,
        run={"id": "(assigned when the run starts)", "operator": operator},
    )
    return Prepared(runbook_file, tuple(inventory), hosts, params, plan, limit)


def _unsupported(runbook_file: RunbookFile) -> list[Problem]:
    problems = []
    for section in ("steps", "rollback"):
        for index, step in enumerate(getattr(runbook_file.runbook, section)):
            if step.kind in NOT_YET:
                problems.append(
                    Problem(
                        f"{NOT_YET[step.kind]} cannot run yet in this version; nothing was run",
                        runbook_file.display_path,
                        runbook_file.line_of((section, index)),
                        runbook_file.step_field(section, index),
                    )
                )
    return problems


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
) -> Outcome:
    """Record a new run, take its lock, and carry it out."""
    run_id = new_run_id()
    plan = prepared.plan
    store.create_run(
        {
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
        },
        [(host, number) for number, batch in enumerate(plan.batches, 1) for host in batch],
    )
    _take_lock(store, run_id, plan.lock, operator, steal_stale_lock, on_note)
    return _execute(store, run_id, prepared, operator, options, view, approver, RunState())


def _take_lock(
    store: Store, run_id: str, name: str, operator: str, steal: bool, on_note: Callable[[str], None]
) -> None:
    try:
        stolen = store.acquire_lock(name, run_id, operator, steal_stale=steal)
    except LockHeld as exc:
        hint = (
            " Pass --steal-stale-lock to take it over."
            if exc.holder is not None and getattr(exc.holder, "stale", False)
            else " Wait for it, or `runbook-exec unlock NAME` if you know it is abandoned."
        )
        store.update_run(run_id, status="refused", message=str(exc), finished_at=time.time())
        raise LockHeld(f"{exc}.{hint}", exc.holder) from None
    if stolen is not None:
        on_note(f"took over a stale lock: {stolen.describe()}")
        store.update_run(run_id, message=f"took over stale lock from run {stolen.run_id}")


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
    """Carry on a run from its record: finished host-steps are not run again."""
    record = load_run(store, run_id)
    if record["status"] in ENDED or record["status"] == "refused":
        raise Refused(f"run {run_id} has ended ({record['status']}); nothing to resume")
    holder = store.lock_holder(record["lock_name"])
    if holder is not None and holder.run_id == run_id and not holder.stale:
        raise Refused(
            f"run {run_id} is still running (pid {holder.pid} on {holder.machine}); "
            "stop it first, or wait for it"
        )
    runbook_file = runbook_from_text(record["runbook_text"], record["runbook_path"])
    secrets_needed = set(record["secret_names"])
    given = {k: v for k, v in record["params"].items() if k not in secrets_needed and v is not None}
    prepared = _prepare(
        runbook_file,
        record["inventory"],
        [],
        record["limit_pattern"],
        record["operator"],
        environ,
        given,
    )
    planned = [list(b) for b in record["plan"]["batches"]]
    if [list(b) for b in prepared.plan.batches] != planned:
        raise InputError(
            Problem(
                f"the inventory no longer gives run {run_id} the hosts it planned "
                f"({', '.join(h for b in planned for h in b)}); nothing was run"
            )
        )
    _take_lock(store, run_id, record["lock_name"], operator, steal_stale_lock, on_note)
    stored_options = RunOptions(
        **{**record["options"], "known_hosts": Path(record["options"]["known_hosts"])}
    )
    return _execute(
        store,
        run_id,
        prepared,
        record["operator"],
        options or stored_options,
        view,
        approver,
        _state_of(store, run_id),
    )


def _state_of(store: Store, run_id: str) -> RunState:
    finished = {}
    for row in store.host_steps_of(run_id):
        if row["status"] == "running":
            continue  # started and never finished: runs again
        finished[(row["section"], row["step_index"], row["host"])] = HostStepResult(
            row["host"],
            row["section"],
            row["step_index"],
            row["step_name"],
            row["status"],
            row["rc"],
            row["stdout"] or "",
            row["stderr"] or "",
            row["message"] or "",
            attempts=row["attempts"],
            ignored=bool(row["message"] and row["message"].startswith("ignored:")),
        )
    hosts = {row["host"]: row["status"] for row in store.hosts_of(run_id)}
    return RunState(finished, hosts, store.gates_of(run_id))


def _execute(
    store: Store,
    run_id: str,
    prepared: Prepared,
    operator: str,
    options: RunOptions,
    view: ViewFactory,
    approver: Approver | None,
    state: RunState,
) -> Outcome:
    store.update_run(run_id, status="running", pid=os.getpid(), machine=socket.gethostname())
    writer = StoreRecorder(store, run_id)

    def previous_release(host: str, root: str) -> str | None:
        return previous_of(store.switches(host, root))

    executor = Executor(
        run_id,
        operator,
        prepared.runbook_file,
        prepared.hosts,
        prepared.plan.batches,
        prepared.params,
        Fanout(writer, view(run_id)),
        options,
        state,
        approver,
        previous_release,
        [(g.wait, g.approve) for g in prepared.plan.gates if g.after_batch == 1],
    )
    try:
        status = asyncio.run(_with_signals(executor))
    finally:
        writer.close()
    ended = status in ENDED
    store.update_run(run_id, status=status, finished_at=time.time() if ended else None)
    if ended:
        store.release_lock(prepared.plan.lock, run_id)
        for row in store.hosts_of(run_id):  # hosts never reached say so, not "pending"
            if row["status"] == "pending":
                store.set_host_status(run_id, row["host"], "not_reached")
    hosts = {row["host"]: row["status"] for row in store.hosts_of(run_id)}
    return Outcome(run_id, status, hosts)


async def _with_signals(executor: Executor) -> str:
    """Ctrl-C (or SIGTERM) once: start no new work, let running commands end or time out.
    Twice: abandon them."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    presses = 0

    def stop() -> None:
        nonlocal presses
        presses += 1
        executor.stopping = True
        if presses == 1:
            executor.recorder.note(
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


def decide(store: Store, run_id: str, approved: bool, operator: str, comment: str | None) -> str:
    """Record a decision on the gate a run waits at; returns the gate's message."""
    record = load_run(store, run_id)
    waiting = [
        (k, g)
        for k, g in store.gates_of(run_id).items()
        if g["status"] == "waiting" and g["kind"] == "approve"
    ]
    if record["status"] != "awaiting_approval" or not waiting:
        raise Refused(f"run {run_id} is not waiting for approval (it is {record['status']})")
    key, gate = waiting[0]
    store.set_gate(
        run_id,
        key,
        kind="approve",
        message=gate["message"],
        status="approved" if approved else "rejected",
        decided_by=operator,
        comment=comment,
        decided_at=time.time(),
    )
    if not approved:
        store.update_run(
            run_id,
            status="rejected",
            finished_at=time.time(),
            message=f"rejected by {operator}" + (f": {comment}" if comment else ""),
        )
        store.release_lock(record["lock_name"], run_id)
        for row in store.hosts_of(run_id):
            if row["status"] == "pending":
                store.set_host_status(run_id, row["host"], "not_reached")
    return str(gate["message"])


def load_run(store: Store, run_id: str) -> dict[str, Any]:
    record = store.get_run(run_id)
    if record is None:
        raise NotFound(f"no run {run_id!r} in the state store (see `runbook-exec runs`)")
    return record


def _options_record(options: RunOptions) -> dict[str, Any]:
    return {
        "forks": options.forks,
        "timeout": options.timeout,
        "connect_timeout": options.connect_timeout,
        "output_limit": options.output_limit,
        "known_hosts": str(options.known_hosts),
        "accept_new_host_keys": options.accept_new_host_keys,
    }


class StoreRecorder:
    """Writes every state change of a run to the store. Writes go, in order, to one writer
    thread that commits whatever has queued up in a single transaction (group commit), so
    they overlap the hosts' work; `flush` is the barrier the executor awaits before any new
    remote action, and it raises if anything could not be written."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.queue: queue.Queue[Callable[[], None] | dict[str, Any] | None] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write, name="store-writer", daemon=True)
        self.thread.start()

    def _write(self) -> None:
        while True:
            operations = [self.queue.get()]
            while True:
                try:
                    operations.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                if self.error is None:
                    with self.store.batch():
                        finished: list[dict[str, Any]] = []
                        for pending in operations:
                            if isinstance(pending, dict):
                                finished.append(pending)  # consecutive ones: one statement
                                continue
                            self.store.steps_finished(finished)
                            finished = []
                            if pending is not None:
                                pending()
                        self.store.steps_finished(finished)
            except BaseException as exc:  # surfaced by flush()
                self.error = exc
            finally:
                for _ in operations:
                    self.queue.task_done()
            if None in operations:
                return

    async def flush(self) -> None:
        await asyncio.to_thread(self.queue.join)
        if self.error is not None:
            error = self.error
            if isinstance(error, StoreError):
                raise error
            raise StoreError(f"the state store could not be written: {error}")

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def batch_started(self, batch: int, hosts: Sequence[str]) -> None:
        pass  # the batch's hosts become "active" through host_status

    def steps_started(
        self, batch: int, section: str, index: int, name: str, hosts: Sequence[str]
    ) -> None:
        now = time.time()
        rows = [
            {
                "run_id": self.run_id,
                "batch": batch,
                "section": section,
                "step_index": index,
                "step_name": name,
                "host": host,
                "started_at": now,
            }
            for host in hosts
        ]
        self.queue.put(lambda: self.store.steps_started(rows))

    def step_finished(self, batch: int, result: HostStepResult) -> None:
        message = f"ignored: {result.message}" if result.ignored else result.message
        self.queue.put(
            {
                "k_run": self.run_id,
                "k_section": result.section,
                "k_index": result.index,
                "k_host": result.host,
                "status": result.status,
                "rc": result.rc,
                "stdout": result.stdout,
                "stderr": result.stderr,
                "message": message,
                "output_bytes": result.output_bytes,
                "output_sha256": result.output_sha256,
                "attempts": result.attempts,
                "finished_at": time.time(),
            }
        )

    def host_status(self, host: str, status: str, message: str | None = None) -> None:
        self.queue.put(lambda: self.store.set_host_status(self.run_id, host, status, message))

    def gate(
        self,
        key: str,
        kind: str,
        message: str,
        status: str,
        by: str | None = None,
        comment: str | None = None,
    ) -> None:
        decided = time.time() if by else None

        def write() -> None:
            self.store.set_gate(
                self.run_id,
                key,
                kind=kind,
                message=message,
                status=status,
                decided_by=by,
                comment=comment,
                decided_at=decided,
            )
            if status == "waiting" and kind == "approve":
                self.store.update_run(self.run_id, status="awaiting_approval")
            elif status in ("approved", "rejected", "done"):
                self.store.update_run(self.run_id, status="running")

        self.queue.put(write)

    def note(self, text: str) -> None:
        self.queue.put(lambda: self.store.update_run(self.run_id, message=text))

    def release_switched(self, host: str, switch: ReleaseSwitch) -> None:
        self.queue.put(
            lambda: self.store.record_switch(
                host=host,
                root=switch.root,
                from_version=switch.from_version,
                to_version=switch.to_version,
                run_id=self.run_id,
                source=switch.source,
            )
        )


class Fanout:
    """Hands every event to each recorder in turn: the store first, then the view."""

    def __init__(self, *recorders: Recorder) -> None:
        self.recorders = recorders

    def batch_started(self, batch: int, hosts: Sequence[str]) -> None:
        for recorder in self.recorders:
            recorder.batch_started(batch, hosts)

    def steps_started(
        self, batch: int, section: str, index: int, name: str, hosts: Sequence[str]
    ) -> None:
        for recorder in self.recorders:
            recorder.steps_started(batch, section, index, name, hosts)

    def step_finished(self, batch: int, result: HostStepResult) -> None:
        for recorder in self.recorders:
            recorder.step_finished(batch, result)

    def host_status(self, host: str, status: str, message: str | None = None) -> None:
        for recorder in self.recorders:
            recorder.host_status(host, status, message)

    def gate(
        self,
        key: str,
        kind: str,
        message: str,
        status: str,
        by: str | None = None,
        comment: str | None = None,
    ) -> None:
        for recorder in self.recorders:
            recorder.gate(key, kind, message, status, by, comment)

    def note(self, text: str) -> None:
        for recorder in self.recorders:
            recorder.note(text)

    def release_switched(self, host: str, switch: ReleaseSwitch) -> None:
        for recorder in self.recorders:
            recorder.release_switched(host, switch)

    async def flush(self) -> None:
        for recorder in self.recorders:
            await recorder.flush()


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
