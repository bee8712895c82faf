"""What a plan is: batches, gates and every step as each host gets it, and how it is
recorded (its JSON and digests)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..durations import format_duration
from ..steps import StepBase


@dataclass(frozen=True)
class HostAction:
    """What one step does on some hosts: the rendered action, or why it does nothing there."""

    hosts: tuple[str, ...]
    action: Mapping[str, Any] | None
    note: str = ""


@dataclass(frozen=True)
class Rendered:
    """One step as one host gets it: the step with its fields rendered for the host (what
    runs; None when nothing runs there) and the same with secrets masked (what is shown and
    recorded). What needs a registered result waits for the run: `when_at_run_time`, and
    `step` None with `render_at_run_time`."""

    step: StepBase | None
    shown: Mapping[str, Any] | None
    when_at_run_time: bool = False
    render_at_run_time: bool = False


@dataclass(frozen=True)
class PlannedStep:
    section: str
    index: int
    name: str
    kind: str
    options: Mapping[str, Any]
    actions: tuple[HostAction, ...]
    hosts: Mapping[str, Rendered] = field(default_factory=dict, compare=False, repr=False)
    """Every host's rendering ("*" for a step run once per batch); not part of the record,
    whose `actions` are these, grouped and masked."""


@dataclass(frozen=True)
class PlannedGate:
    after_batch: int
    wait: float | None = None
    approve: str | None = None
    analysis: Mapping[str, Any] | None = None
    """As written: rendered when its batch ends, with the batch's names."""


@dataclass(frozen=True)
class Plan:
    """Everything a run will do, in order, before it does any of it."""

    runbook: Mapping[str, str]
    targets: str
    limit: str | None
    lock: str | None
    """The runbook's `lock:` name, taken besides each host's lock (see `locks`)."""
    params: Mapping[str, Any]
    batches: tuple[tuple[str, ...], ...]
    gates: tuple[PlannedGate, ...]
    max_fail_percentage: float
    on_failure: str
    steps: tuple[PlannedStep, ...]
    rollback: tuple[PlannedStep, ...]
    connections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """How each host is reached (address, port, user, key, become), as the inventory said
    when planned: what a resume connects to, and compares with the inventory now."""
    host_count: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "host_count", sum(len(b) for b in self.batches))

    @property
    def locks(self) -> tuple[str, ...]:
        """Every lock a run of this plan takes, all or none."""
        return lock_names((h for batch in self.batches for h in batch), self.lock)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runbook": dict(self.runbook),
            "targets": self.targets,
            "limit": self.limit,
            "lock": self.lock,
            "params": dict(self.params),
            "hosts": self.host_count,
            "batches": [list(b) for b in self.batches],
            "gates": [_gate_dict(g) for g in self.gates],
            "max_fail_percentage": self.max_fail_percentage,
            "on_failure": self.on_failure,
            "steps": [_step_dict(s) for s in self.steps],
            "rollback": [_step_dict(s) for s in self.rollback],
            "connections": {host: dict(c) for host, c in self.connections.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=str)

    @property
    def digest(self) -> str:
        """SHA-256 of the plan's canonical JSON: equal plans, equal digests."""
        return _sha256(self.to_dict())

    @property
    def work_digest(self) -> str:
        """SHA-256 of what the plan does (batches, gates, failure policy, every host's
        rendered steps), not of how it was asked for: a resume re-renders the plan from
        the record and compares this, so that it carries out what was recorded or nothing."""
        whole = self.to_dict()
        work = ("batches", "gates", "max_fail_percentage", "on_failure", "steps", "rollback")
        return _sha256({key: whole[key] for key in work})


def lock_names(hosts: Any, lock: str | None) -> tuple[str, ...]:
    """The locks a run takes, all or none: one per host it may touch, and its runbook's
    `lock:` name if it has one (which runs on other hosts may share)."""
    names = [f"host:{name}" for name in sorted(set(hosts))]
    return (*names, f"name:{lock}") if lock else tuple(names)


def _sha256(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _gate_dict(gate: PlannedGate) -> dict[str, Any]:
    if gate.wait is not None:
        return {"after_batch": gate.after_batch, "wait": format_duration(gate.wait)}
    if gate.analysis is not None:
        return {"after_batch": gate.after_batch, "analysis": dict(gate.analysis)}
    return {"after_batch": gate.after_batch, "approve": gate.approve}


def _step_dict(step: PlannedStep) -> dict[str, Any]:
    return {
        "index": step.index,
        "name": step.name,
        "kind": step.kind,
        "options": dict(step.options),
        "actions": [
            {"hosts": list(a.hosts), "action": a.action, "note": a.note} for a in step.actions
        ],
    }


def step_options(step: StepBase) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in ("when", "retries", "run_once", "ignore_errors", "register_as"):
        value = getattr(step, key)
        if value not in (None, False, 0):
            options["register" if key == "register_as" else key] = value
    for key in ("timeout", "delay"):
        value = getattr(step, key)
        if value is not None:
            options[key] = format_duration(value)
    return options


def group_actions(
    rows: Sequence[tuple[str, Mapping[str, Any] | None, str]],
) -> tuple[HostAction, ...]:
    """Hosts that get the identical action share one entry, in first-seen order."""
    groups: dict[str, tuple[list[str], Mapping[str, Any] | None, str]] = {}
    for host, action, note in rows:
        key = json.dumps([action, note], sort_keys=True, default=str)
        groups.setdefault(key, ([], action, note))[0].append(host)
    return tuple(HostAction(tuple(hosts), action, note) for hosts, action, note in groups.values())
