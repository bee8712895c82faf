"""The typed records the record answers with: each built from verified audit events and
naming the event it came from (`event`, its seq)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import EXIT_AUDIT, RunbookExecError
from ..jsonout import rfc3339


class RecordAltered(RunbookExecError):
    """The record does not prove what a decision needs: the audit chain does not hold, or a
    table disagrees with it. Nothing was done (exit 4)."""

    exit_code = EXIT_AUDIT


@dataclass(frozen=True)
class Flag:
    """Where the record cannot vouch for something: a table that says otherwise than the
    event, a row with no event, an event with no row, or a chain that does not hold."""

    seq: int | None
    field: str
    message: str

    def __str__(self) -> str:
        return self.message


def altered(seq: int | None, name: str, said: Any, table: Any) -> Flag:
    where = f"event {seq} says" if seq is not None else "the record says"
    return Flag(seq, name, f"record altered: {where} {name}={said!r}; the table says {table!r}")


@dataclass(frozen=True)
class RunRecord:
    """Who ran what, why, where and with which outcome, from the run's events."""

    id: str
    runbook_name: str
    runbook_path: str
    runbook_sha256: str
    runbook_text: str | None  # in the run's first event (runs recorded before: None)
    params: dict[str, Any]
    secret_names: tuple[str, ...] | None
    inventory: tuple[str, ...] | None
    limit: str | None
    targets: str | None
    batches: tuple[tuple[str, ...], ...]
    plan_digest: str | None
    work_digest: str | None  # what the plan does, rendered (runs recorded before: None)
    options: dict[str, Any] | None
    lock: str | None
    operator: str
    os_user: str | None
    machine: str | None
    change_id: str | None
    reason: str | None
    status: str
    message: str | None
    requested_at: float
    finished_at: float | None
    event: int
    started: bool = False  # it ran (or began to), as opposed to being refused at once
    locks: tuple[str, ...] = ()  # every lock it takes (a host's, a `lock:` name's)
    rolling_back: bool = False  # cancelled with --rollback: what is left is the rollback
    connections: dict[str, Any] | None = None  # how each host was reached, as planned
    rollback_of: str | None = None  # the run this one undoes
    restore: dict[str, dict[str, str]] | None = None  # host -> root -> what it puts back

    @property
    def ended(self) -> bool:
        return self.finished_at is not None

    @property
    def duration(self) -> float | None:
        """Seconds from its request to its end; None until it has ended."""
        return self.finished_at - self.requested_at if self.finished_at else None


@dataclass(frozen=True)
class HostRecord:
    host: str
    batch: int
    status: str  # pending, active, ok, stopped, failed, rolled_back, rollback_failed...
    message: str | None
    event: int


@dataclass(slots=True)
class HostStepRecord:
    """One step on one host: how it ended (or that it is running), with its output. Not
    frozen: the fold fills in the output once it has checked it (a run has thousands of
    these, and copying each to add its output cost a tenth of `show`); readers do not
    change it."""

    host: str
    batch: int
    section: str
    index: int
    name: str
    status: str
    rc: int | None
    stdout: str | None
    stderr: str | None
    message: str
    ignored: bool
    output_bytes: int | None
    output_sha256: str | None
    attempts: int
    started_at: float
    finished_at: float | None
    duration_ms: int | None
    output: str  # kept | pruned | missing | none
    event: int

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.section, self.index, self.host)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "batch": self.batch,
            "section": self.section,
            "step_index": self.index,
            "step_name": self.name,
            "status": self.status,
            "rc": self.rc,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "message": self.message,
            "ignored": self.ignored,
            "output_bytes": self.output_bytes,
            "output_sha256": self.output_sha256,
            "output": self.output,
            "attempts": self.attempts,
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "duration_ms": self.duration_ms,
            "event": self.event,
        }


@dataclass(frozen=True)
class GateRecord:
    key: str
    kind: str  # wait | approve | analysis
    message: str | None
    status: str  # waiting, approved, rejected, done; an analysis: passed, failed
    decided_by: str | None
    comment: str | None
    decided_at: float | None
    event: int


@dataclass(frozen=True)
class MeasurementRecord:
    """One measurement an analysis took: the query as sent, the value, the verdict."""

    batch: int
    where: str  # "steps.3" (a step's section and index) or a gate's key ("after:1:0")
    step: str  # the step's name, or "between batches"
    number: int  # 1, 2, …; 0 for the comparison with the baseline
    query: str
    value: Any  # a number, a list of numbers, "nan", or None (no data)
    verdict: str  # successful | failed | inconclusive | error
    message: str
    baseline: dict[str, Any] | None
    at: float  # the evaluation time sent to Prometheus
    event: int
    attempt: int = 1  # 2, 3, …: measured again after a stop (the earlier one gave no verdict)


@dataclass(frozen=True)
class NotificationRecord:
    """A notification's delivery, or its failure after every attempt."""

    notified: str  # the run's event it told of: run.started, gate.waiting, …
    target: str  # scheme and host only
    via: str  # webhook | apprise
    delivered: bool
    attempts: int
    outcome: str  # what the receiver said, or why it could not be reached
    at: float
    event: int


@dataclass(frozen=True)
class SwitchRecord:
    """A release switch on a host."""

    host: str
    root: str
    from_version: str | None
    to_version: str
    source: str  # activate | previous | disk
    run_id: str
    at: float
    event: int
    artifact_sha256: str | None = None


@dataclass(frozen=True)
class TaskRecord:
    host: str
    section: str
    index: int
    task: str
    status: str
    message: str
    result: str | None
    at: float
    event: int


@dataclass(frozen=True)
class TickRecord:
    """A handover item ticked by a person (`handover tick`)."""

    item: str
    by: str
    comment: str | None
    at: float
    event: int


@dataclass(frozen=True)
class LockRecord:
    """Locks a run took, and the process that held them then, as the event says."""

    names: tuple[str, ...]
    run_id: str
    operator: str
    machine: str
    pid: int | None
    since: float
    event: int


@dataclass
class RunDetails:
    """A run as its verified events tell it, and every place the record cannot vouch for."""

    run: RunRecord
    hosts: list[HostRecord] = field(default_factory=list)
    steps: list[HostStepRecord] = field(default_factory=list)
    gates: list[GateRecord] = field(default_factory=list)
    tasks: list[TaskRecord] = field(default_factory=list)
    switches: list[SwitchRecord] = field(default_factory=list)
    locks: list[LockRecord] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    ticks: list[TickRecord] = field(default_factory=list)
    measurements: list[MeasurementRecord] = field(default_factory=list)
    notifications: list[NotificationRecord] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.flags

    def holding(self, ended: frozenset[str]) -> frozenset[str]:
        """The locks its events say the run holds now: what it took (or kept) last, unless
        its status is one of `ended`."""
        if self.run.status in ended or not self.locks:
            return frozenset()
        return frozenset(self.locks[-1].names)

    def require_intact(self, doing: str) -> None:
        """For a decision: refuse (exit 4) unless the record vouches for everything."""
        if self.flags:
            more = f" (and {len(self.flags) - 1} more)" if len(self.flags) > 1 else ""
            raise RecordAltered(
                f"{doing} refused for run {self.run.id}: {self.flags[0]}{more}; nothing was "
                "done (`runbook-exec show` lists every difference, `audit verify` checks "
                "the chain)"
            )


def previous_of(switches: Sequence[SwitchRecord]) -> str | None:
    """The release that was live before the current one was deployed, from one root's
    switches on one host (oldest first). Switching back (`activate: previous`) is not a
    deploy: after 1 -> 2 -> 3 and a rollback to 2, the previous release is 1, not 3, so a
    second rollback goes further back instead of returning to the release just left."""
    if not switches:
        return None
    live = switches[-1].to_version
    for switch in reversed(switches):
        if switch.to_version == live and switch.source == "activate":
            return str(switch.from_version) if switch.from_version else None
    return None  # the live release was never deployed on record: the disk must tell
