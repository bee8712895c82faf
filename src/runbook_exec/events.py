"""What a run says as it goes, in one place: the statuses (enums, so that a set of them is
written once), the results it produces, and the sink every listener subclasses.

The executor reports each state change to one `EventSink`; `Fanout` hands it to every
registered sink in order (the store first, then the views). A sink overrides only what it
cares about: a new event breaks none of them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Section(StrEnum):
    """The two lists of steps a runbook has."""

    STEPS = "steps"
    ROLLBACK = "rollback"


class StepStatus(StrEnum):
    """How one step ended on one host (RUNNING while it has not)."""

    RUNNING = "running"
    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"

    @property
    def failed(self) -> bool:
        return self in STEP_FAILED


STEP_FAILED = frozenset({StepStatus.FAILED, StepStatus.TIMEOUT, StepStatus.UNREACHABLE})
"""The step statuses that fail a host (unless the step ignores errors); plain text from the
record tests the same way, `"timeout" in STEP_FAILED`."""


# A host's message when it is rolled back although no rollback step did anything there.
NOTHING_TO_UNDO = "nothing to undo: every rollback step was skipped here"


class HostStatus(StrEnum):
    """Where one host of a run stands."""

    PENDING = "pending"
    ACTIVE = "active"
    OK = "ok"
    STOPPED = "stopped"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    NOT_REACHED = "not_reached"

    @property
    def failed(self) -> bool:
        """Dropped out of the run: no further step runs on it."""
        return self in HOST_FAILED


HOST_FAILED = frozenset({HostStatus.FAILED, HostStatus.ROLLBACK_FAILED})


class RunStatus(StrEnum):
    """Where a run stands. `ended` is the one place that says which statuses are final."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    AWAITING_APPROVAL = "awaiting_approval"
    REJECTED = "rejected"
    REFUSED = "refused"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """Final: nothing resumes it, and its lock is released."""
        return self in RUN_ENDED


RUN_ENDED = frozenset(
    {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.ROLLED_BACK,
        RunStatus.ROLLBACK_FAILED,
        RunStatus.REJECTED,
        RunStatus.CANCELLED,
    }
)


@dataclass(frozen=True)
class HostStepResult:
    """How one step ended on one host."""

    host: str
    section: str
    index: int
    name: str
    status: StepStatus
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    message: str = ""
    duration: float = 0.0
    attempts: int = 0
    output_bytes: int = 0
    output_sha256: str = ""
    ignored: bool = False

    @property
    def failed(self) -> bool:
        """Failed and not ignored: the host drops out of the run."""
        return self.status in STEP_FAILED and not self.ignored


@dataclass(frozen=True)
class TaskResult:
    """One Ansible task's result on one host."""

    host: str
    task: str
    status: str  # ok | changed | failed | skipped | unreachable (Ansible's own words)
    message: str
    result: str  # the module's result as JSON, capped
    ignored: bool = False


@dataclass(frozen=True)
class ReleaseSwitch:
    """What a release step did on a host, read from its output."""

    root: str
    from_version: str | None
    to_version: str
    pruned: tuple[str, ...]
    source: str  # activate (a named release), previous (from the record) or disk
    artifact_sha256: str | None = None  # of the artifact the release was made from, if named


class EventSink:
    """Where the executor reports every state change, in order, before acting on the next.
    Every method does nothing here; a sink overrides what it records or shows."""

    def batch_started(self, batch: int, hosts: Sequence[str]) -> None:
        """A batch begins on these hosts."""

    def steps_started(
        self, batch: int, section: str, index: int, name: str, hosts: Sequence[str]
    ) -> None:
        """A step begins on these hosts."""

    def step_finished(self, batch: int, result: HostStepResult) -> None:
        """A step ended on one host."""

    def host_status(self, host: str, status: HostStatus, message: str | None = None) -> None:
        """A host's standing in the run changed."""

    def gate(
        self,
        key: str,
        kind: str,
        message: str,
        status: str,
        by: str | None = None,
        comment: str | None = None,
    ) -> None:
        """A gate (a wait or an approval) is waiting, or was passed or decided."""

    def note(self, text: str) -> None:
        """Something a person should read (a batch stopped, a rollback begins)."""

    def release_switched(self, host: str, switch: ReleaseSwitch) -> None:
        """A release step switched a host's live release."""

    def task_result(self, batch: int, section: str, index: int, result: TaskResult) -> None:
        """One Ansible task ended on one host."""

    def measured(
        self, batch: int, where: Mapping[str, Any], measurement: Mapping[str, Any]
    ) -> None:
        """An analysis took one measurement (`where`: its step, or its gate's key)."""

    async def flush(self) -> None:
        """Return once everything reported so far is durably recorded (or raise)."""


class Fanout(EventSink):
    """Hands every event to each sink in turn, in the order given (the
    store first, so that nothing is shown that is not recorded)."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks: list[EventSink] = list(sinks)

    def batch_started(self, batch: int, hosts: Sequence[str]) -> None:
        for sink in self.sinks:
            sink.batch_started(batch, hosts)

    def steps_started(
        self, batch: int, section: str, index: int, name: str, hosts: Sequence[str]
    ) -> None:
        for sink in self.sinks:
            sink.steps_started(batch, section, index, name, hosts)

    def step_finished(self, batch: int, result: HostStepResult) -> None:
        for sink in self.sinks:
            sink.step_finished(batch, result)

    def host_status(self, host: str, status: HostStatus, message: str | None = None) -> None:
        for sink in self.sinks:
            sink.host_status(host, status, message)

    def gate(
        self,
        key: str,
        kind: str,
        message: str,
        status: str,
        by: str | None = None,
        comment: str | None = None,
    ) -> None:
        for sink in self.sinks:
            sink.gate(key, kind, message, status, by, comment)

    def note(self, text: str) -> None:
        for sink in self.sinks:
            sink.note(text)

    def release_switched(self, host: str, switch: ReleaseSwitch) -> None:
        for sink in self.sinks:
            sink.release_switched(host, switch)

    def task_result(self, batch: int, section: str, index: int, result: TaskResult) -> None:
        for sink in self.sinks:
            sink.task_result(batch, section, index, result)

    def measured(
        self, batch: int, where: Mapping[str, Any], measurement: Mapping[str, Any]
    ) -> None:
        for sink in self.sinks:
            sink.measured(batch, where, measurement)

    async def flush(self) -> None:
        for sink in self.sinks:
            await sink.flush()


SinkFactory = Callable[[str], "EventSink | None"]
"""Given a run's id, the sink that listens to it (or None, to sit this run out)."""

_REGISTERED: list[SinkFactory] = []


def register_sink(factory: SinkFactory) -> Callable[[], None]:
    """Have every run from now on tell `factory(run_id)`'s sink what happens: how a metrics
    exporter or a notifier listens, without an edit to the runner. Returns the call that
    takes it away again."""
    _REGISTERED.append(factory)
    return lambda: _REGISTERED.remove(factory)


def sinks_for(run_id: str, *first: EventSink) -> Fanout:
    """One fan-out for a run: the sinks given (the store's first), then every registered
    one. A registered sink that raises is told nothing more of this run, and the run goes
    on: a listener cannot break what it listens to."""
    registered: list[EventSink] = []
    for factory in _REGISTERED:
        try:
            sink = factory(run_id)
        except Exception as exc:  # a listener that cannot start: the run goes on without it
            _warn(f"listener {getattr(factory, '__name__', factory)!r} could not start ({exc!r})")
            continue
        if sink is not None:
            registered.append(_Guarded(sink))
    return Fanout(*first, *registered)


def _warn(text: str) -> None:
    print(f"warning: {text}; the run goes on without it", file=sys.stderr)


class _Guarded(EventSink):
    """A registered sink whose first exception silences it (reported once on stderr)."""

    def __init__(self, sink: EventSink) -> None:
        self.sink: EventSink | None = sink

    def _call(self, method: str, *args: object) -> None:
        if self.sink is None:
            return
        try:
            getattr(self.sink, method)(*args)
        except Exception as exc:  # a listener's bug, not the run's
            self._silence(method, exc)

    def _silence(self, method: str, exc: Exception) -> None:
        _warn(f"listener {type(self.sink).__name__} failed in {method} ({exc!r}) and hears no more")
        self.sink = None

    async def flush(self) -> None:
        if self.sink is None:
            return
        try:
            await self.sink.flush()
        except Exception as exc:
            self._silence("flush", exc)

    def batch_started(self, batch: int, hosts: Sequence[str]) -> None:
        self._call("batch_started", batch, hosts)

    def steps_started(
        self, batch: int, section: str, index: int, name: str, hosts: Sequence[str]
    ) -> None:
        self._call("steps_started", batch, section, index, name, hosts)

    def step_finished(self, batch: int, result: HostStepResult) -> None:
        self._call("step_finished", batch, result)

    def host_status(self, host: str, status: HostStatus, message: str | None = None) -> None:
        self._call("host_status", host, status, message)

    def gate(
        self,
        key: str,
        kind: str,
        message: str,
        status: str,
        by: str | None = None,
        comment: str | None = None,
    ) -> None:
        self._call("gate", key, kind, message, status, by, comment)

    def note(self, text: str) -> None:
        self._call("note", text)

    def release_switched(self, host: str, switch: ReleaseSwitch) -> None:
        self._call("release_switched", host, switch)

    def task_result(self, batch: int, section: str, index: int, result: TaskResult) -> None:
        self._call("task_result", batch, section, index, result)

    def measured(
        self, batch: int, where: Mapping[str, Any], measurement: Mapping[str, Any]
    ) -> None:
        self._call("measured", batch, where, measurement)
