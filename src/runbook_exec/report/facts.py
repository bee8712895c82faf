"""What a handover report says, as data: built from the chain's history (`record.History`)
up to the report's own `report.made` event, for a selection of runs. Pure: the same events
give the same facts, which is how `audit verify --report` checks a report, from the store
or from an export.

Every time is RFC 3339 UTC; every list is in the record's order (runs by request, hosts by
batch, events by seq), so the facts serialize the same way every time.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml

from ..errors import InputError, NotFound, Problem
from ..events import STEP_FAILED
from ..jsonout import rfc3339
from ..record import History, RunDetails

REPORT_EVENT = "report.made"
# A host's last outcome that leaves it well: done, put back, or never touched.
HEALTHY = frozenset({"ok", "rolled_back", "not_reached", "skipped"})
UNREACHED = frozenset({"not_reached", "pending"})


@dataclass(frozen=True)
class Selection:
    """Which runs a report covers: one run (and the runs that undo it), every run of a
    change, or the runs of a period on hosts that match a pattern."""

    run_id: str | None = None
    change_id: str | None = None
    since: str | None = None  # RFC 3339 or ISO date/time, UTC
    until: str | None = None
    hosts: str | None = None  # names or globs, colon-separated: web*:db1

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Selection:
        known = {k: str(v) for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def check(self) -> None:
        """Exactly one way of choosing, and times that parse (bad input otherwise)."""
        ways = [self.run_id is not None, self.change_id is not None, self._period]
        if sum(ways) != 1:
            raise InputError(
                Problem("give one of: RUN_ID, --change-id, or --since/--until (with -l)")
            )
        for name, value in (("--since", self.since), ("--until", self.until)):
            if value is not None:
                _epoch(value, name)

    @property
    def _period(self) -> bool:
        return self.since is not None or self.until is not None or self.hosts is not None

    def describe(self) -> str:
        if self.run_id:
            return f"run {self.run_id}"
        if self.change_id:
            return f"change {self.change_id}"
        parts = [
            f"since {self.since}" if self.since else "",
            f"until {self.until}" if self.until else "",
        ]
        where = f"on {self.hosts}" if self.hosts else ""
        return " ".join(p for p in ("runs", *parts, where) if p)


def _epoch(text: str, name: str = "time") -> float:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        why = f"{text!r} is not a date or time (2026-11-01 or 2026-11-01T08:00Z)"
        raise InputError(Problem(why, field=name)) from None
    if parsed.tzinfo is None:
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def matches(host: str, pattern: str) -> bool:
    """A host name against names or globs, colon-separated (`web*:db1`)."""
    return any(fnmatch.fnmatchcase(host, part) for part in pattern.split(":") if part)


def selected(history: History, selection: Selection) -> list[RunDetails]:
    """The runs `selection` names, oldest first. None at all is not found."""
    runs = sorted(history.runs.values(), key=lambda d: (d.run.requested_at, d.run.event))
    if selection.run_id is not None:
        chosen = [d for d in runs if selection.run_id in (d.run.id, d.run.rollback_of)]
        if not any(d.run.id == selection.run_id for d in chosen):
            raise NotFound(f"no run {selection.run_id!r} on record")
        return chosen
    if selection.change_id is not None:
        chosen = [d for d in runs if d.run.change_id == selection.change_id]
        if not chosen:
            raise NotFound(f"no run of change {selection.change_id!r} on record")
        return chosen
    since = _epoch(selection.since) if selection.since else float("-inf")
    until = _epoch(selection.until) if selection.until else float("inf")
    chosen = [
        d
        for d in runs
        if since <= d.run.requested_at < until
        and (
            selection.hosts is None
            or any(matches(h, selection.hosts) for b in d.run.batches for h in b)
        )
    ]
    if not chosen:
        raise NotFound(f"no run on record for {selection.describe()}")
    return chosen


def build(history: History, selection: Selection, anchor: int) -> dict[str, Any]:
    """The report's facts, from the history up to `anchor` (its `report.made` event)."""
    runs = selected(history, selection)
    made = history.events.get(anchor, {})
    wanted = None if selection.hosts is None else selection.hosts
    hosts = _hosts_in(runs, wanted)
    first = min(d.run.event for d in runs)
    last = max(history.last_events[d.run.id] for d in runs)
    summary = _summary(runs, hosts)
    facts = {
        "selection": selection.to_dict(),
        "made": {"by": made.get("operator"), "at": made.get("at"), "event": anchor},
        "chain": {
            "verified": history.verified.finding is None,
            "finding": None if history.verified.finding is None else str(history.verified.finding),
            "events": history.verified.count,
            "head": {"seq": history.head, "hash": history.head_hash},
            "keys": list(history.verified.key_ids),
        },
        "events": {"first": first, "last": last},
        "runs": [_run(d, hosts) for d in runs],
        "hosts": summary,
        "approvals": _approvals(runs),
        "failures": _failures(runs, hosts),
        "rollbacks": _rollbacks(runs, hosts),
        "commands": _commands(runs, history.plans([d.run.id for d in runs]), hosts),
        "changed_tasks": _changed_tasks(runs, hosts),
        "live": _live(history, hosts),
        "way_back": _way_back(history, runs, hosts),
        "checklist": _checklist(history, runs, summary, last, anchor),
    }
    analyses = _analyses(runs)
    if analyses:  # only then: a report made before analyses existed rebuilds as it was
        facts["analyses"] = analyses
    return facts


# --- the parts ------------------------------------------------------------------------------


def _hosts_in(runs: Sequence[RunDetails], pattern: str | None) -> list[str]:
    seen: dict[str, None] = {}
    for details in runs:
        for batch in details.run.batches:
            for host in batch:
                if pattern is None or matches(host, pattern):
                    seen.setdefault(host, None)
    return list(seen)


def _run(details: RunDetails, hosts: Sequence[str]) -> dict[str, Any]:
    run = details.run
    wanted = set(hosts)
    return {
        "id": run.id,
        "runbook": {
            "name": run.runbook_name,
            "path": run.runbook_path,
            "sha256": run.runbook_sha256,
            "text": run.runbook_text,
        },
        "operator": run.operator,
        "os_user": run.os_user,
        "machine": run.machine,
        "change_id": run.change_id,
        "reason": run.reason,
        "status": run.status,
        "message": run.message,
        "requested_at": rfc3339(run.requested_at),
        "finished_at": rfc3339(run.finished_at),
        "params": run.params,
        "secret_names": list(run.secret_names or ()),
        "inventory": list(run.inventory or ()),
        "targets": run.targets,
        "limit": run.limit,
        "batches": [list(b) for b in run.batches],
        "connections": {h: c for h, c in (run.connections or {}).items() if h in wanted},
        "rollback_of": run.rollback_of,
        "event": run.event,
    }


def _summary(runs: Sequence[RunDetails], hosts: Sequence[str]) -> list[dict[str, Any]]:
    """Per host: each root's releases in order (before, each one switched to), when it
    last switched, and its outcome in the last run that had it."""
    rows = []
    for host in hosts:
        paths: dict[str, list[str | None]] = {}
        last_at: dict[str, float] = {}
        outcome, message, run_of = None, None, None
        for details in runs:
            for switch in details.switches:
                if switch.host != host:
                    continue
                path = paths.setdefault(switch.root, [switch.from_version])
                path.append(switch.to_version)
                last_at[switch.root] = switch.at
            for record in details.hosts:
                # A later run that never reached the host says nothing about it.
                reached = record.status not in UNREACHED or outcome is None
                if record.host == host and reached:
                    outcome, message, run_of = record.status, record.message, details.run.id
        releases = [
            {
                "root": root,
                "before": path[0],
                "after": path[-1],
                "path": path,
                "at": rfc3339(last_at[root]),
            }
            for root, path in paths.items()
        ]
        rows.append(
            {
                "host": host,
                "releases": releases,
                "changed": any(r["before"] != r["after"] for r in releases),
                "outcome": outcome,
                "message": message,
                "run": run_of,
            }
        )
    return rows


def _approvals(runs: Sequence[RunDetails]) -> list[dict[str, Any]]:
    return [
        {
            "run": d.run.id,
            "gate": g.key,
            "message": g.message,
            "status": "undecided" if g.status == "waiting" and d.run.ended else g.status,
            "by": g.decided_by,
            "comment": g.comment,
            "at": rfc3339(g.decided_at),
        }
        for d in runs
        for g in d.gates
        if g.kind == "approve"
    ]


def _analyses(runs: Sequence[RunDetails]) -> list[dict[str, Any]]:
    """Every measurement the runs' analyses took: the query as sent, value and verdict."""
    return [
        {
            "run": d.run.id,
            "batch": m.batch,
            "step": m.step,
            "number": m.number,
            "query": m.query,
            "value": m.value,
            "verdict": m.verdict,
            "message": m.message,
            "at": rfc3339(m.at),
        }
        for d in runs
        for m in d.measurements
    ]


def _failures(runs: Sequence[RunDetails], hosts: Sequence[str]) -> list[dict[str, Any]]:
    wanted = set(hosts)
    return [
        {
            "run": d.run.id,
            "host": s.host,
            "section": s.section,
            "step": s.index + 1,
            "name": s.name,
            "status": s.status,
            "rc": s.rc,
            "message": s.message,
            "at": rfc3339(s.finished_at),
        }
        for d in runs
        for s in sorted(d.steps, key=lambda s: s.event)
        if s.status in STEP_FAILED and not s.ignored and s.host in wanted
    ]


def _rollbacks(runs: Sequence[RunDetails], hosts: Sequence[str]) -> list[dict[str, Any]]:
    """Hosts rolled back within a run (on_failure: rollback, a rejection) and runs that
    undid another."""
    wanted = set(hosts)
    rows: list[dict[str, Any]] = []
    for d in runs:
        if d.run.rollback_of:
            rows.append(
                {"run": d.run.id, "of": d.run.rollback_of, "host": None, "status": d.run.status}
            )
        for h in d.hosts:
            if h.status in ("rolled_back", "rollback_failed") and h.host in wanted:
                rows.append(
                    {"run": d.run.id, "of": None, "host": h.host, "status": h.status,
                     "message": h.message}
                )  # fmt: skip
    return rows


def _commands(
    runs: Sequence[RunDetails],
    plans: Mapping[str, Mapping[str, Any] | None],
    hosts: Sequence[str],
) -> list[dict[str, Any]]:
    """Each run's steps as rendered for its hosts, identical renderings grouped (none for
    a run whose plan was pruned)."""
    from ..views import action_summary

    out = []
    for d in runs:
        plan = plans.get(d.run.id) or {}
        for section in ("steps", "rollback"):
            for step in plan.get(section) or []:
                wanted = set(hosts)
                groups = [
                    {
                        "hosts": [h for h in a.get("hosts") or [] if h in wanted],
                        "text": action_summary(str(step.get("kind")), a.get("action") or {})
                        if a.get("action") is not None
                        else "",
                        "note": a.get("note") or "",
                    }
                    for a in step.get("actions") or []
                    if any(h in wanted for h in a.get("hosts") or [])
                ]
                out.append(
                    {
                        "run": d.run.id,
                        "section": section,
                        "step": int(step.get("index", 0)) + 1,
                        "name": step.get("name"),
                        "kind": step.get("kind"),
                        "groups": groups,
                    }
                )
    return out


def _changed_tasks(runs: Sequence[RunDetails], hosts: Sequence[str]) -> list[dict[str, Any]]:
    wanted = set(hosts)
    return [
        {
            "run": d.run.id,
            "host": t.host,
            "section": t.section,
            "step": t.index + 1,
            "task": t.task,
            "message": t.message,
            "at": rfc3339(t.at),
        }
        for d in runs
        for t in d.tasks
        if t.status == "changed" and t.host in wanted
    ]


def _live(history: History, hosts: Sequence[str]) -> list[dict[str, Any]]:
    """What the record says is live on each host now (at the report's event)."""
    last: dict[tuple[str, str], Any] = {}
    for switch in history.switches:
        last[(switch.host, switch.root)] = switch
    wanted = set(hosts)
    return [
        {
            "host": host,
            "root": root,
            "version": s.to_version,
            "since": rfc3339(s.at),
            "run": s.run_id,
        }
        for (host, root), s in last.items()
        if host in wanted
    ]


def _way_back(
    history: History, runs: Sequence[RunDetails], wanted: Sequence[str]
) -> list[dict[str, Any]]:
    """For each run that left a release switched (not put back within the run, as a
    rollback on failure does): the command that undoes it, and the run that already did,
    if one has."""
    undone: dict[str, str] = {}
    for details in history.runs.values():
        if details.run.rollback_of and details.run.status == "succeeded":
            undone.setdefault(details.run.rollback_of, details.run.id)
    ways = []
    for d in runs:
        if d.run.rollback_of:
            continue
        net: dict[tuple[str, str], list[str | None]] = {}
        for switch in d.switches:
            net.setdefault((switch.host, switch.root), [switch.from_version])[1:] = [
                switch.to_version
            ]
        hosts = sorted(
            {host for (host, _), (was, now) in net.items() if was != now and host in wanted}
        )
        if hosts:
            ways.append(
                {
                    "run": d.run.id,
                    "command": f"runbook-exec rollback {d.run.id}",
                    "undone_by": undone.get(d.run.id),
                    "hosts": hosts,
                }
            )
    return ways


def declared_items(text: str | None) -> list[str]:
    """The `handover:` items of a runbook, from its recorded text. Read as plain YAML, not
    through today's model: a report made now must rebuild the same tomorrow, whatever the
    model then accepts."""
    if not text:
        return []
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    items = data.get("handover") if isinstance(data, dict) else None
    return [str(i) for i in items] if isinstance(items, list) else []


def _checklist(
    history: History,
    runs: Sequence[RunDetails],
    summary: Sequence[Mapping[str, Any]],
    last: int,
    anchor: int,
) -> dict[str, Any]:
    declared: dict[str, dict[str, Any]] = {}
    for d in runs:
        for item in declared_items(d.run.runbook_text):
            declared.setdefault(item, {"item": item, "ticked": None})
    for d in runs:
        for tick in d.ticks:
            if tick.item in declared:
                declared[tick.item]["ticked"] = {
                    "by": tick.by,
                    "at": rfc3339(tick.at),
                    "comment": tick.comment,
                    "run": d.run.id,
                    "event": tick.event,
                }
    unhealthy = [r["host"] for r in summary if r["outcome"] not in HEALTHY]
    unended = [f"run {d.run.id} is {d.run.status}" for d in runs if not d.run.ended]
    checkpoint = next(((seq, at) for seq, at in history.checkpoints if last <= seq < anchor), None)
    checked = [
        {
            "check": "hosts_healthy",
            "ok": not unhealthy and not unended,
            "detail": "; ".join([*unended, *unhealthy]),
        },
        {
            "check": "chain_verified",
            "ok": history.verified.finding is None,
            "detail": f"{history.verified.count} events up to {history.head}",
        },
        {
            "check": "checkpoint_taken",
            "ok": checkpoint is not None,
            "detail": f"event {checkpoint[0]}, {rfc3339(checkpoint[1])}"
            if checkpoint
            else f"none after event {last}",
        },
    ]
    return {"declared": list(declared.values()), "checked": checked}
