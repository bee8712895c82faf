"""The tables checked against the record: every value a view shows or a decision takes
from a table row must be what the run's events say. Pure: rows and records in, flags out."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .values import Flag, RunDetails, altered

# runs columns and the record field each must equal
_RUN_FIELDS = {
    "runbook_name": "runbook_name",
    "runbook_path": "runbook_path",
    "runbook_sha256": "runbook_sha256",
    "operator": "operator",
    "change_id": "change_id",
    "reason": "reason",
    "status": "status",
    "limit_pattern": "limit",
    "params": "params",
}
_RUN_OPTIONAL = {  # recorded in the first event only by runs made since it holds them
    "lock_name": "lock",
    "inventory": "inventory",
    "secret_names": "secret_names",
    "options": "options",
}
_STEP_FIELDS = ("status", "rc", "message", "attempts", "output_bytes", "output_sha256")


def run_row(details: RunDetails, row: Mapping[str, Any] | None) -> list[Flag]:
    run = details.run
    if row is None:
        return [Flag(run.event, "runs", f"record altered: run {run.id} has no row in the table")]
    flags = []
    for column, name in _RUN_FIELDS.items():
        said = getattr(run, name)
        if row.get(column) != said:
            flags.append(altered(run.event, name, said, row.get(column)))
    for column, name in _RUN_OPTIONAL.items():
        said = getattr(run, name)
        table = row.get(column)
        if said is not None and _plain(table) != _plain(said):
            flags.append(altered(run.event, name, said, table))
    text = row.get("runbook_text")
    if text is not None and hashlib.sha256(str(text).encode()).hexdigest() != run.runbook_sha256:
        flags.append(
            Flag(
                run.event,
                "runbook_text",
                f"record altered: the table's runbook text does not have the SHA-256 event "
                f"{run.event} holds ({run.runbook_sha256[:12]}…)",
            )
        )
    plan = row.get("plan")
    if run.plan_digest and plan is not None and _plan_digest(plan) != run.plan_digest:
        flags.append(
            Flag(
                run.event,
                "plan",
                f"record altered: the table's plan does not have the digest event {run.event} "
                "holds",
            )
        )
    return flags


def host_rows(details: RunDetails, rows: Sequence[Mapping[str, Any]]) -> list[Flag]:
    flags = []
    table = {r["host"]: r for r in rows}
    for host in details.hosts:
        row = table.pop(host.host, None)
        if row is None:
            flags.append(_no_row(host.event, f"host {host.host}"))
            continue
        for name in ("status", "batch", "message"):
            said = getattr(host, name)
            if row.get(name) != said:
                flags.append(altered(host.event, f"{host.host} {name}", said, row.get(name)))
    flags.extend(_no_event(f"host {h}") for h in table)
    return flags


def step_rows(details: RunDetails, rows: Sequence[Mapping[str, Any]]) -> list[Flag]:
    flags = []
    table = {(r["section"], r["step_index"], r["host"]): r for r in rows}
    for step in details.steps:
        where = f"{step.host} step {step.index + 1}"
        row = table.pop(step.key, None)
        if row is None:
            flags.append(_no_row(step.event, f"host-step {where}"))
            continue
        if row.get("step_name") != step.name:
            flags.append(altered(step.event, f"{where} name", step.name, row.get("step_name")))
        if step.status == "running":
            if row.get("status") != "running":
                flags.append(altered(step.event, f"{where} status", "running", row["status"]))
            continue
        for name in _STEP_FIELDS:
            said = getattr(step, name)
            if row.get(name) != said:
                flags.append(altered(step.event, f"{where} {name}", said, row.get(name)))
        if step.output == "kept":
            for stream in ("stdout", "stderr"):
                said = getattr(step, stream)
                if row.get(stream) is not None and (row.get(stream) or "") != (said or ""):
                    flags.append(altered(step.event, f"{where} {stream}", said, row.get(stream)))
    flags.extend(_no_event(f"host-step {k[2]} step {k[1] + 1}") for k in table)
    return flags


def gate_rows(details: RunDetails, rows: Sequence[Mapping[str, Any]]) -> list[Flag]:
    flags = []
    table = {r["gate_key"]: r for r in rows}
    for gate in details.gates:
        row = table.pop(gate.key, None)
        if row is None:
            flags.append(_no_row(gate.event, f"gate {gate.key}"))
            continue
        for name in ("kind", "status", "decided_by", "comment"):
            said = getattr(gate, name)
            if row.get(name) != said:
                flags.append(altered(gate.event, f"gate {gate.key} {name}", said, row.get(name)))
    flags.extend(_no_event(f"gate {k}") for k in table)
    return flags


def task_rows(details: RunDetails, rows: Sequence[Mapping[str, Any]]) -> list[Flag]:
    flags = []
    for task, row in zip(details.tasks, rows, strict=False):
        said = (task.host, task.section, task.index, task.task, task.status, task.message)
        table = tuple(
            row.get(c) for c in ("host", "section", "step_index", "task", "status", "message")
        )
        if said != (*table[:5], table[5] or ""):
            flags.append(altered(task.event, f"task {task.task!r} on {task.host}", said, table))
        elif task.result is not None and row.get("result") not in (None, task.result):
            flags.append(altered(task.event, f"task {task.task!r} result", task.result, "…"))
    if len(rows) != len(details.tasks):
        flags.append(
            Flag(
                None,
                "task_results",
                f"record altered: the events hold {len(details.tasks)} Ansible task results, "
                f"the table {len(rows)}",
            )
        )
    return flags


def switch_rows(details: RunDetails, rows: Sequence[Mapping[str, Any]]) -> list[Flag]:
    said = [(s.host, s.root, s.from_version, s.to_version, s.source) for s in details.switches]
    table = [(r["host"], r["root"], r["from_version"], r["to_version"], r["source"]) for r in rows]
    if said == table:
        return []
    first = next((i for i, (a, b) in enumerate(zip(said, table, strict=False)) if a != b), None)
    index = first if first is not None else min(len(said), len(table))
    seq = details.switches[index].event if index < len(details.switches) else None
    return [
        Flag(
            seq,
            "releases",
            f"record altered: the release switches of run {details.run.id} in the table "
            f"differ from its events ({len(said)} recorded, {len(table)} in the table)",
        )
    ]


def _no_row(seq: int, what: str) -> Flag:
    return Flag(seq, what, f"record altered: event {seq} records {what}; the table has no row")


def _no_event(what: str) -> Flag:
    return Flag(None, what, f"record altered: the table has {what}, which no event records")


def _plain(value: Any) -> Any:
    """Lists and tuples alike, for comparing a table's JSON with an event's."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _plan_digest(plan: Any) -> str:
    canonical = json.dumps(plan, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
