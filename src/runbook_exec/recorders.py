"""Where a run's events go: the store (written by one writer thread, group-committed) and
the audit events that go with each, made by one `Auditor`."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import StoreError
from .events import EventSink, HostStatus, HostStepResult, ReleaseSwitch, TaskResult
from .store import Store, first_line

if TYPE_CHECKING:
    from .record import RunRecord
from .store.audit import actor, utc_now


class Auditor:
    """Makes a run's audit events: each says who (OS user, operator, machine), why (change
    id, reason), what (runbook name, path and SHA-256), when (UTC, milliseconds), and the
    event's own fields (host, step, status, exit code, duration, output...)."""

    def __init__(self, store: Store, context: Mapping[str, Any]) -> None:
        self.store = store
        self.context = dict(context)

    @classmethod
    def for_run(cls, store: Store, run: Mapping[str, Any], operator: str | None = None) -> Auditor:
        """The event maker for a run (`operator`: who acts now, if not the run's own)."""
        who = operator or run["operator"]
        return cls(
            store,
            {
                "run_id": run["id"],
                "operator": who,
                "actor": actor(who),
                "change_id": run.get("change_id"),
                "reason": run.get("reason"),
                "runbook": {
                    "name": run["runbook_name"],
                    "path": run["runbook_path"],
                    "sha256": run["runbook_sha256"],
                },
            },
        )

    @classmethod
    def for_recorded(cls, store: Store, run: RunRecord, operator: str | None = None) -> Auditor:
        """The event maker for a run as its record tells it (`operator`: who acts now)."""
        return cls.for_run(
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

    @classmethod
    def outside_runs(cls, store: Store, operator: str) -> Auditor:
        """The event maker for what is done to no run (or to one the trail does not
        record): reading, exporting, checkpointing, pruning the trail; forcing a lock."""
        context = {"run_id": None, "operator": operator, "actor": actor(operator)}
        return cls(store, {**context, "change_id": None})

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"at": utc_now(), "type": kind, **self.context, "host": None, **fields}

    def append(self, kind: str, **fields: Any) -> None:
        """Write one event now, in its own transaction (or the current batch)."""
        self.store.append_audit(self.event(kind, **fields))


class StoreRecorder(EventSink):
    """Writes every state change of a run to the store. Writes go, in order, to one writer
    thread that commits whatever has queued up in a single transaction (group commit), so
    they overlap the hosts' work; `flush` is the barrier the executor awaits before any new
    remote action, and it raises if anything could not be written."""

    def __init__(self, store: Store, run_id: str, auditor: Auditor) -> None:
        self.store = store
        self.run_id = run_id
        self.auditor = auditor
        self.queue: queue.Queue[Callable[[], None] | dict[str, Any] | tuple[str, Any] | None]
        self.queue = queue.Queue()
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
                        audits: list[dict[str, Any]] = []
                        for pending in operations:
                            if isinstance(pending, dict):
                                finished.append(pending)  # consecutive ones: one statement
                            elif isinstance(pending, tuple):
                                audits.append(pending[1])
                            elif pending is not None:
                                self.store.steps_finished(finished)
                                finished = []
                                pending()
                        self.store.steps_finished(finished)
                        # In the order they happened, in the same commit as their state.
                        self.store.append_audits(audits)
            except BaseException as exc:  # surfaced by flush()
                self.error = exc
            finally:
                for _ in operations:
                    self.queue.task_done()
            if None in operations:
                return

    def _audit(self, kind: str, **fields: Any) -> None:
        self.queue.put(("audit", self.auditor.event(kind, **fields)))

    async def flush(self) -> None:
        await asyncio.to_thread(self.queue.join)
        if self.error is not None:
            error = self.error
            if isinstance(error, StoreError):
                raise error
            raise StoreError(f"the state store could not be written: {first_line(error)}")

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

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
        for host in hosts:
            self._audit(
                "host_step.started",
                host=host,
                batch=batch,
                step={"section": section, "index": index, "name": name},
            )

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
        self._audit(
            "host_step.finished",
            host=result.host,
            batch=batch,
            step={"section": result.section, "index": result.index, "name": result.name},
            status=result.status,
            rc=result.rc,
            duration_ms=round(result.duration * 1000),
            message=message,
            output={"stdout": result.stdout, "stderr": result.stderr},
            output_bytes=result.output_bytes,
            output_sha256=result.output_sha256,
            attempts=result.attempts,
            ignored=result.ignored,
        )

    def host_status(self, host: str, status: HostStatus, message: str | None = None) -> None:
        self.queue.put(lambda: self.store.set_host_status(self.run_id, host, status, message))
        self._audit("host.status", host=host, status=status, message=message)

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
        self._audit(
            f"gate.{status}",
            gate={"key": key, "kind": kind, "message": message},
            decided_by=by,
            comment=comment,
        )

    def note(self, text: str) -> None:
        self.queue.put(lambda: self.store.update_run(self.run_id, message=text))
        self._audit("run.note", message=text)

    def task_result(self, batch: int, section: str, index: int, result: TaskResult) -> None:
        self.queue.put(
            lambda: self.store.record_task(
                run_id=self.run_id,
                section=section,
                step_index=index,
                host=result.host,
                task=result.task,
                status=result.status,
                message=result.message,
                result=result.result,
            )
        )
        self._audit(
            "task.result",
            host=result.host,
            batch=batch,
            step={"section": section, "index": index},
            task=result.task,
            status=result.status,
            message=result.message,
            result=result.result,
        )

    def measured(
        self, batch: int, where: Mapping[str, Any], measurement: Mapping[str, Any]
    ) -> None:
        self._audit("analysis.measured", batch=batch, **where, measurement=dict(measurement))

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
        self._audit(
            "release.switched",
            host=host,
            release={
                "root": switch.root,
                "from": switch.from_version,
                "to": switch.to_version,
                "pruned": list(switch.pruned),
                "chosen": switch.source,
                **({"artifact_sha256": switch.artifact_sha256} if switch.artifact_sha256 else {}),
            },
        )
