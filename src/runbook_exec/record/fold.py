"""Events in, records out: a run's audit events folded, in order, into the records of its
run, hosts, host-steps, gates, Ansible tasks, release switches and locks. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..store.audit import pruned_by, sha256_hex
from .values import (
    Flag,
    GateRecord,
    HostRecord,
    HostStepRecord,
    LockRecord,
    MeasurementRecord,
    NotificationRecord,
    RunDetails,
    RunRecord,
    SwitchRecord,
    TaskRecord,
    TickRecord,
)

ENDING = ("run.finished", "run.stopped")
LOCK_HELD = ("lock.taken", "lock.stolen")


def _lock_names(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The locks an event names: `locks` (every host's and the `lock:` name), or the one
    `lock` of a run recorded before hosts were locked one by one."""
    names = body.get("locks")
    if names is None:
        return (str(body["lock"]),) if body.get("lock") else ()
    return tuple(str(name) for name in names)


def epoch(at: Any) -> float:
    """An event's `at` (2026-11-23T08:40:03.123Z) as seconds since the epoch."""
    try:
        return datetime.fromisoformat(str(at)).timestamp()
    except ValueError:
        return 0.0


class RunFold:
    """Folds one run's events. `light` keeps only what a list of runs shows."""

    def __init__(self, run_id: str, *, light: bool = False) -> None:
        self.run_id = run_id
        self.light = light
        self.first: Mapping[str, Any] | None = None
        self.first_seq = 0
        self.fields: dict[str, Any] = {}
        self.hosts: dict[str, HostRecord] = {}
        self.steps: dict[tuple[str, int, str], HostStepRecord] = {}
        self.gates: dict[str, GateRecord] = {}
        self.tasks: list[tuple[TaskRecord, tuple[str, str] | None]] = []
        self.switches: list[SwitchRecord] = []
        self.locks: list[LockRecord] = []
        self.ticks: list[TickRecord] = []
        self.measurements: list[MeasurementRecord] = []
        self.notifications: list[NotificationRecord] = []
        # How many times each step started in each batch (a host starting it again begins
        # another attempt), and the hosts of the latest: an analysis's attempts.
        self.attempts: dict[tuple[str, int], tuple[int, set[str]]] = {}
        self.outputs: dict[tuple[str, int, str], tuple[str, str]] = {}  # digest, at
        self.flags: list[Flag] = []
        self.decided: str | None = None  # a person's cancel or reject, kept in the message

    def add(self, seq: int, body: Mapping[str, Any]) -> None:
        kind = body.get("type")
        if self.first is None:
            self.first, self.first_seq = body, seq
            self._request(body, seq)
            if kind == "run.requested":
                return
            why = (
                f"record altered: event {seq} is this run's first, but it is {kind!r}, "
                "not its request (events removed or moved)"
            )
            self.flags.append(Flag(seq, "run.requested", why))
        at = epoch(body.get("at"))
        if kind in ("run.started", "run.resumed"):
            self.fields.update(status="running", started=True, finished_at=None)
            self.fields["machine"] = (body.get("actor") or {}).get("machine")
        elif kind in ENDING:
            self.fields["status"] = str(body.get("status"))
            self.fields["finished_at"] = at if kind == "run.finished" else None
            if kind == "run.stopped" and self.locks:  # it keeps its locks, held by no process
                self.locks.append(replace(self.locks[-1], pid=0, since=at, event=seq))
            if body.get("message"):
                self.fields["message"] = body.get("message")
            if body.get("decision"):
                self.decided = body.get("decision")
        elif kind == "run.replanned":
            self.fields["connections"] = body.get("connections")
        elif kind == "run.cancelled":
            self.fields["message"] = self.decided = body.get("message")
            self.fields["rolling_back"] = bool(body.get("rollback"))
        elif kind == "run.note":  # after a person's decision, the decision stays first
            decided = self.decided
            note = body.get("message")
            self.fields["message"] = f"{decided}; {note}" if decided and note else note
        elif kind == "lock.refused" and not self.fields.get("started"):
            self.fields.update(status="refused", message=body.get("message"), finished_at=at)
        elif kind in LOCK_HELD:
            actor = body.get("actor") or {}
            self.locks.append(
                LockRecord(
                    _lock_names(body),
                    self.run_id,
                    str(body.get("operator")),
                    str(actor.get("machine")),
                    actor.get("pid"),
                    at,
                    seq,
                )
            )
            if kind == "lock.stolen":
                self.fields["message"] = body.get("message")
        elif kind == "lock.forced" and self.locks:  # `unlock NAME`: that one is let go
            last = self.locks[-1]
            kept = tuple(name for name in last.names if name != body.get("lock"))
            self.locks.append(replace(last, names=kept, pid=0, since=at, event=seq))
        elif kind and kind.startswith("gate."):
            self._gate(seq, body, at)
        elif self.light:
            return
        elif kind == "host.status":
            host = str(body.get("host"))
            batch = self.hosts[host].batch if host in self.hosts else 0
            self.hosts[host] = HostRecord(
                host, batch, str(body.get("status")), body.get("message"), seq
            )
        elif kind == "host_step.started":
            self._started(seq, body, at)
        elif kind == "host_step.finished":
            self._finished(seq, body, at)
        elif kind == "task.result":
            step = body.get("step") or {}
            task = TaskRecord(
                str(body.get("host")),
                str(step.get("section")),
                int(step.get("index", 0)),
                str(body.get("task")),
                str(body.get("status")),
                str(body.get("message") or ""),
                None,
                at,
                seq,
            )
            digest = body.get("payload_sha256")
            self.tasks.append((task, (str(digest), str(body.get("at"))) if digest else None))
        elif kind == "handover.ticked":
            self.ticks.append(
                TickRecord(
                    str(body.get("item")),
                    str(body.get("operator")),
                    body.get("comment"),
                    at,
                    seq,
                )
            )
        elif kind == "analysis.measured":
            self._measured(seq, body)
        elif kind in ("notify.delivered", "notify.failed"):
            self.notifications.append(
                NotificationRecord(
                    str(body.get("event_notified")),
                    str(body.get("target")),
                    str(body.get("via")),
                    kind == "notify.delivered",
                    int(body.get("attempts") or 0),
                    str(body.get("outcome") or ""),
                    at,
                    seq,
                )
            )
        elif kind == "release.switched":
            release = body.get("release") or {}
            self.switches.append(
                SwitchRecord(
                    str(body.get("host")),
                    str(release.get("root")),
                    release.get("from"),
                    str(release.get("to")),
                    str(release.get("chosen")),
                    self.run_id,
                    at,
                    seq,
                    release.get("artifact_sha256"),
                )
            )

    def _request(self, body: Mapping[str, Any], seq: int) -> None:
        runbook = body.get("runbook") or {}
        actor = body.get("actor") or {}
        batches = tuple(tuple(str(h) for h in b) for b in body.get("batches") or ())
        self.fields = {
            "runbook_name": str(runbook.get("name")),
            "runbook_path": str(runbook.get("path")),
            "runbook_sha256": str(runbook.get("sha256")),
            "runbook_text": body.get("runbook_text"),
            "params": dict(body.get("params") or {}),
            "secret_names": _tuple(body.get("secret_names")),
            "inventory": _tuple(body.get("inventory")),
            "limit": body.get("limit"),
            "targets": body.get("targets"),
            "batches": batches,
            "plan_digest": body.get("plan_digest"),
            "work_digest": body.get("work_digest"),
            "options": body.get("options"),
            "lock": body.get("lock"),
            "locks": _lock_names(body),
            "connections": body.get("connections"),
            "rollback_of": body.get("rollback_of"),
            "restore": body.get("restore"),
            "operator": str(body.get("operator")),
            "os_user": actor.get("os_user"),
            "machine": actor.get("machine"),
            "change_id": body.get("change_id"),
            "reason": body.get("reason"),
            "status": "pending",
            "message": None,
            "requested_at": epoch(body.get("at")),
            "finished_at": None,
            "started": False,
        }
        for number, batch in enumerate(batches, 1):
            for host in batch:
                self.hosts[host] = HostRecord(host, number, "pending", None, seq)

    def _gate(self, seq: int, body: Mapping[str, Any], at: float) -> None:
        gate = body.get("gate") or {}
        status = str(body["type"]).removeprefix("gate.")
        key = str(gate.get("key"))
        if gate.get("kind") == "analysis" and status == "waiting":
            count, _ = self.attempts.get((key, 0), (0, set()))
            self.attempts[(key, 0)] = (count + 1, set())
        by = body.get("decided_by")
        self.gates[key] = GateRecord(
            key,
            str(gate.get("kind")),
            gate.get("message"),
            status,
            by,
            body.get("comment"),
            at if by else None,
            seq,
        )
        if self.fields.get("finished_at") is not None:
            return  # a gate event after the end changes nothing
        if status == "waiting" and gate.get("kind") == "approve":
            self.fields["status"] = "awaiting_approval"
        elif status in ("approved", "rejected", "done"):
            self.fields["status"] = "running"

    def _measured(self, seq: int, body: Mapping[str, Any]) -> None:
        measurement = body.get("measurement") or {}
        step = body.get("step")
        batch = int(body.get("batch") or 0)
        if isinstance(step, Mapping):
            where, name = f"{step.get('section')}.{step.get('index')}", str(step.get("name"))
        else:
            where, name = str(body.get("gate")), "between batches"
        if isinstance(step, Mapping):
            attempt = self.attempts.get((where, batch), (1, set()))[0]
        else:  # a gate: each time it began waiting
            attempt = self.attempts.get((where, 0), (1, set()))[0]
        baseline = measurement.get("baseline")
        self.measurements.append(
            MeasurementRecord(
                int(body.get("batch") or 0),
                where,
                name,
                int(measurement.get("number") or 0),
                str(measurement.get("query")),
                measurement.get("value"),
                str(measurement.get("verdict")),
                str(measurement.get("message") or ""),
                dict(baseline) if isinstance(baseline, Mapping) else None,
                _seconds(measurement.get("at")),
                seq,
                attempt,
            )
        )

    def _started(self, seq: int, body: Mapping[str, Any], at: float) -> None:
        step = body.get("step") or {}
        where = (f"{step.get('section')}.{step.get('index')}", int(body.get("batch") or 0))
        host = str(body.get("host"))
        count, hosts = self.attempts.get(where, (0, set()))
        if count == 0 or host in hosts:
            count, hosts = count + 1, set()
        hosts.add(host)
        self.attempts[where] = (count, hosts)
        key = (str(step.get("section")), int(step.get("index", 0)), str(body.get("host")))
        self.steps[key] = HostStepRecord(
            key[2], int(body.get("batch") or 0), key[0], key[1], str(step.get("name")),
            "running", None, None, None, "", False, None, None, 0, at, None, None, "none", seq,
        )  # fmt: skip
        self.outputs.pop(key, None)

    def _finished(self, seq: int, body: Mapping[str, Any], at: float) -> None:
        step = body.get("step") or {}
        key = (str(step.get("section")), int(step.get("index", 0)), str(body.get("host")))
        started = self.steps.get(key)
        message = str(body.get("message") or "")
        ignored = bool(body.get("ignored", message.startswith("ignored:")))
        self.steps[key] = HostStepRecord(
            key[2],
            int(body.get("batch") or 0),
            key[0],
            key[1],
            str(step.get("name")),
            str(body.get("status")),
            body.get("rc"),
            None,
            None,
            message,
            ignored,
            body.get("output_bytes"),
            body.get("output_sha256"),
            int(body.get("attempts") or 0),
            started.started_at if started else at,
            at,
            body.get("duration_ms"),
            "none",
            seq,
        )
        if "payload_sha256" in body:
            self.outputs[key] = (str(body["payload_sha256"]), str(body.get("at")))

    def details(
        self,
        payloads: Mapping[int, str | None] | None,
        prunes: list[tuple[int, str]],
        only: tuple[str, int, str] | None = None,
    ) -> RunDetails:
        """The run's records; with `payloads` (by seq), host-steps and tasks get their
        output, checked against the digests their events hold (with `only`, that one
        host-step's alone)."""
        from dataclasses import replace

        run = RunRecord(id=self.run_id, event=self.first_seq, **self.fields)
        steps = list(self.steps.values())
        flags = list(self.flags)
        if payloads is not None:
            for step in steps:
                digest = self.outputs.get(step.key)
                if digest is None or (only is not None and step.key != only):
                    continue
                output, text = _payload(step.event, digest, payloads, prunes)
                if isinstance(output, Flag):
                    flags.append(output)
                    step.output = "missing"
                    continue
                parsed = json.loads(text).get("output", {}) if text else {}
                step.output, step.stdout, step.stderr = (
                    output,
                    parsed.get("stdout"),
                    parsed.get("stderr"),
                )
        tasks = []
        for task, digest in self.tasks:
            if payloads is None or digest is None or only is not None:
                tasks.append(task)
                continue
            output, text = _payload(task.event, digest, payloads, prunes)
            if isinstance(output, Flag):
                flags.append(output)
                tasks.append(task)
            else:
                tasks.append(replace(task, result=json.loads(text).get("result") if text else None))
        return RunDetails(
            run,
            sorted(self.hosts.values(), key=lambda h: h.batch),
            sorted(steps, key=lambda s: (s.started_at, s.event)),
            list(self.gates.values()),
            tasks,
            list(self.switches),
            list(self.locks),
            flags,
            list(self.ticks),
            list(self.measurements),
            list(self.notifications),
        )


def _payload(
    seq: int,
    digest_at: tuple[str, str],
    payloads: Mapping[int, str | None],
    prunes: list[tuple[int, str]],
) -> tuple[str | Flag, str | None]:
    """An event's payload, checked: ("kept", text), ("pruned", None), or a flag."""
    digest, at = digest_at
    text = payloads.get(seq)
    if text is None:
        if pruned_by(seq, at, prunes):
            return "pruned", None
        why = f"record altered: event {seq}'s output is missing, and no prune event covers it"
        return Flag(seq, "output", why), None
    if sha256_hex(text) != digest:
        why = f"record altered: event {seq}'s output does not match the digest the event holds"
        return Flag(seq, "output", why), None
    return "kept", text


def _seconds(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _tuple(value: Any) -> tuple[str, ...] | None:
    return tuple(str(v) for v in value) if isinstance(value, list) else None
