"""How plans and problems look on a terminal (Rich) and in plain text when piped."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .durations import format_duration
from .errors import Problem
from .jsonout import rfc3339
from .plan import Plan, PlannedGate, PlannedStep
from .record import Flag, HostStepRecord, MeasurementRecord, RunDetails, TaskRecord
from .steps import STEP_CLASSES
from .steps.analysis import describe_analysis, measurement_value

MAX_HOSTS_SHOWN = 6
MAX_ACTIONS_SHOWN = 3


def print_problems(console: Console, problems: Sequence[Problem]) -> None:
    for problem in problems:
        console.print(f"[red]error:[/red] {escape(str(problem))}", soft_wrap=True)


def host_list(hosts: Sequence[str], total: int | None = None) -> str:
    if total is not None and len(hosts) == total and total > 1:
        prefix = f"all {total} hosts"
        return prefix if total > MAX_HOSTS_SHOWN else f"{prefix}: {', '.join(hosts)}"
    if len(hosts) <= MAX_HOSTS_SHOWN:
        return ", ".join(hosts)
    return f"{', '.join(hosts[:MAX_HOSTS_SHOWN])} (+{len(hosts) - MAX_HOSTS_SHOWN} more)"


def action_summary(kind: str, action: Mapping[str, Any]) -> str:
    """One line that says what a rendered step does (as the plan records it)."""
    cls = STEP_CLASSES.get(kind)
    return cls.describe(action) if cls is not None else _compact(dict(action))


def _guards(action: Mapping[str, Any] | None) -> str:
    if not action:
        return ""
    text = f" [skip if {action['creates']} exists]" if action.get("creates") else ""
    return text + (f" [skip if `{action['unless']}` succeeds]" if action.get("unless") else "")


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str) if value else ""


def print_plan(console: Console, plan: Plan) -> None:
    book = plan.runbook
    console.print(
        f"[bold]Plan[/bold] for runbook [bold]{escape(book['name'])}[/bold] "
        f"({escape(book['path'])}, sha256 {book['sha256'][:12]})"
    )
    limit = f" --limit {plan.limit}" if plan.limit else ""
    console.print(
        f"targets {escape(plan.targets)}{escape(limit)}: {plan.host_count} hosts "
        f"in {len(plan.batches)} batches; each host locked"
        + (f", and lock {escape(plan.lock)!r}" if plan.lock else "")
    )
    if plan.params:
        shown = ", ".join(f"{k}={v!r}" for k, v in plan.params.items() if v is not None)
        console.print(f"params: {escape(shown)}")
    console.print()
    console.print("[bold]Batches[/bold]")
    gates: dict[int, list[PlannedGate]] = {}
    for gate in plan.gates:
        gates.setdefault(gate.after_batch, []).append(gate)
    for number, batch in enumerate(plan.batches, 1):
        console.print(
            f"  {number}. {len(batch)} host{'s' if len(batch) != 1 else ''}: "
            f"{escape(host_list(batch))}"
        )
        for gate in gates.get(number, []):
            what = (
                f"wait {format_duration(gate.wait)}"
                if gate.wait is not None
                else f"approval: {gate.approve}"
            )
            if gate.analysis is not None:
                what = "analysis: " + describe_analysis(gate.analysis)
            console.print(f"     [yellow]then {escape(what)}[/yellow]")
    console.print(f"  stop when more than {plan.max_fail_percentage:g}% of a batch fails")
    console.print()
    _print_steps(console, "Steps (run on each batch in turn)", plan.steps, plan.host_count)
    failure = {
        "stop": "stop: no further batch starts; hosts already changed stay as they are",
        "continue": "continue: failed hosts drop out, the others go on",
        "rollback": "rollback: the rollback steps run on every host this run changed, "
        "newest batch first",
    }[plan.on_failure]
    console.print(f"[bold]On failure[/bold]: {escape(failure)}")
    if plan.rollback:
        console.print()
        _print_steps(console, "Rollback steps", plan.rollback, plan.host_count)


def _print_steps(console: Console, title: str, steps: Sequence[PlannedStep], total: int) -> None:
    console.print(f"[bold]{title}[/bold]")
    for step in steps:
        options = ", ".join(f"{k}={v}" for k, v in step.options.items())
        options = f"  [dim]({escape(options)})[/dim]" if options else ""
        console.print(
            f"  {step.index + 1}. [cyan]{escape(step.name)}[/cyan] [dim]{step.kind}[/dim]{options}"
        )
        for action in step.actions[:MAX_ACTIONS_SHOWN]:
            who = (
                ""
                if action.hosts == ("*",)
                else f"[dim]{escape(host_list(action.hosts, total))}:[/dim] "
            )
            what = action_summary(step.kind, action.action) if action.action else ""
            note = f" [yellow]({escape(action.note)})[/yellow]" if action.note else ""
            console.print(
                f"     {who}{escape(what + _guards(action.action))}{note}", soft_wrap=True
            )
        hidden = step.actions[MAX_ACTIONS_SHOWN:]
        if hidden:
            count = sum(len(a.hosts) for a in hidden)
            console.print(
                f"     [dim]… {count} more hosts, each rendered for itself (--json shows all)[/dim]"
            )
    console.print()


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


_iso = rfc3339


def run_summary(details: RunDetails) -> dict[str, Any]:
    run = details.run
    return {
        "run_id": run.id,
        "runbook": run.runbook_name,
        "operator": run.operator,
        "change_id": run.change_id,
        "reason": run.reason,
        "status": run.status,
        "started": _iso(run.requested_at),
        "duration_s": round(run.duration, 3) if run.duration is not None else None,
        "verified": details.verified,
        "flags": [str(f) for f in details.flags],
        "event": run.event,
    }


def run_json(details: RunDetails) -> dict[str, Any]:
    """`show --json`: the run as its events tell it, with what the record cannot vouch for."""
    run = details.run
    return {
        **run_summary(details),
        "runbook_path": run.runbook_path,
        "runbook_sha256": run.runbook_sha256,
        "os_user": run.os_user,
        "machine": run.machine,
        "params": run.params,
        "limit": run.limit,
        "batches": [list(b) for b in run.batches],
        "message": run.message,
        "finished": _iso(run.finished_at),
        "hosts": [
            {"host": h.host, "batch": h.batch, "status": h.status, "message": h.message}
            for h in details.hosts
        ],
        "host_steps": [step.to_dict() for step in details.steps],
        "task_results": [
            {
                "host": t.host,
                "section": t.section,
                "step_index": t.index,
                "task": t.task,
                "status": t.status,
                "message": t.message,
                "result": t.result,
                "at": _iso(t.at),
                "event": t.event,
            }
            for t in details.tasks
        ],
        "gates": [
            {
                "gate_key": g.key,
                "kind": g.kind,
                "message": g.message,
                "status": g.status,
                "decided_by": g.decided_by,
                "comment": g.comment,
                "decided_at": _iso(g.decided_at),
                "event": g.event,
            }
            for g in details.gates
        ],
        "measurements": [measurement_json(m) for m in details.measurements],
        "notifications": [
            {
                "notified": n.notified,
                "target": n.target,
                "via": n.via,
                "delivered": n.delivered,
                "attempts": n.attempts,
                "outcome": n.outcome,
                "at": _iso(n.at),
                "event": n.event,
            }
            for n in details.notifications
        ],
        "release_switches": [
            {
                "host": w.host,
                "root": w.root,
                "from": w.from_version,
                "to": w.to_version,
                "chosen": w.source,
                "artifact_sha256": w.artifact_sha256,
                "at": _iso(w.at),
                "event": w.event,
            }
            for w in details.switches
        ],
    }


def measurement_json(m: MeasurementRecord) -> dict[str, Any]:
    return {
        "batch": m.batch,
        "where": m.where,
        "step": m.step,
        "number": m.number,
        "query": m.query,
        "value": m.value,
        "verdict": m.verdict,
        "message": m.message,
        "baseline": m.baseline,
        "attempt": m.attempt,
        "at": _iso(m.at),
        "event": m.event,
    }


def print_measurements(console: Console, measurements: Sequence[MeasurementRecord]) -> None:
    """Every measurement of the run's analyses: when, the query as sent, value, verdict."""
    shown: tuple[int, str, int] | None = None
    for m in measurements:
        if (m.batch, m.where, m.attempt) != shown:
            shown = (m.batch, m.where, m.attempt)
            again = f" (measured again: attempt {m.attempt})" if m.attempt > 1 else ""
            console.print(f"analysis: batch {m.batch} · {escape(m.step)}{again}")
        which = "vs baseline" if m.number == 0 else f"#{m.number}"
        note = f" ({escape(m.message)})" if m.message else ""
        console.print(
            f"  {which} {_when(m.at)} {escape(measurement_value(m.value))} "
            f"{_status(m.verdict)}{note}"
        )
        console.print(f"     [dim]query│[/dim] {escape(m.query)}", soft_wrap=True)
        if m.number == 0 and m.baseline and m.baseline.get("query"):
            said = escape(str(m.baseline["query"]))
            console.print(f"  [dim]baseline│[/dim] {said}", soft_wrap=True)


def print_flags(console: Console, flags: Sequence[Flag], limit: int = 20) -> None:
    """What the record cannot vouch for, first and in red."""
    for flag in flags[:limit]:
        console.print(f"[bold red]{escape(str(flag))}[/bold red]", soft_wrap=True)
    if len(flags) > limit:
        console.print(f"[bold red]… and {len(flags) - limit} more differences[/bold red]")


def print_runs(console: Console, records: Sequence[RunDetails]) -> None:
    if not records:
        console.print("no runs yet")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("run", "runbook", "operator", "change", "started (UTC)", "took", "status"):
        table.add_column(column)
    flagged = []
    for details in records:
        run = details.run
        took = run.duration
        mark = "" if details.verified else " [bold red](record altered)[/bold red]"
        if not details.verified:
            flagged.append(details)
        table.add_row(
            run.id,
            escape(run.runbook_name),
            escape(run.operator),
            escape(run.change_id or "-"),
            _when(run.requested_at),
            f"{took:.1f}s" if took is not None else "-",
            _status(run.status) + mark,
        )
    console.print(table)
    for details in flagged:
        console.print(f"run {details.run.id}:")
        print_flags(console, details.flags, limit=5)


def _status(status: str) -> str:
    style = {
        "succeeded": "green",
        "successful": "green",
        "passed": "green",
        "ok": "green",
        "failed": "red",
        "timeout": "red",
        "unreachable": "red",
        "rolled_back": "yellow",
        "rollback_failed": "red",
        "skipped": "dim",
    }.get(status, "yellow")
    return f"[{style}]{status.replace('_', ' ')}[/{style}]"


def print_run(console: Console, details: RunDetails) -> None:
    run = details.run
    print_flags(console, details.flags)
    verified = "" if details.verified else " [bold red](record altered)[/bold red]"
    console.print(f"[bold]run {run.id}[/bold] {_status(run.status)}{verified}")
    console.print(
        f"runbook {escape(run.runbook_name)} ({escape(run.runbook_path)}, "
        f"sha256 {run.runbook_sha256[:12]})"
    )
    console.print(
        f"by {escape(run.operator)} (OS user {escape(run.os_user or '-')} on "
        f"{escape(run.machine or '-')}), started {_when(run.requested_at)} UTC, "
        f"ended {_when(run.finished_at)}"
    )
    if run.change_id or run.reason:
        console.print(f"change {escape(run.change_id or '-')}: {escape(run.reason or '')}")
    shown = ", ".join(f"{k}={v!r}" for k, v in run.params.items() if v is not None)
    console.print(f"params: {escape(shown)}")
    if run.message:
        console.print(f"[yellow]{escape(run.message)}[/yellow]")
    for gate in details.gates:
        by = f" by {gate.decided_by}" if gate.decided_by else ""
        said = f": {gate.comment}" if gate.comment else ""
        console.print(
            f"gate {gate.key}: {gate.kind} {escape(gate.message or '')}"
            f" → {gate.status}{escape(by + said)}"
        )
    if details.measurements:
        print_measurements(console, details.measurements)
    undelivered = [n for n in details.notifications if not n.delivered]
    if details.notifications:
        told = len(details.notifications) - len(undelivered)
        console.print(f"notifications: {told} delivered, {len(undelivered)} not")
    for n in undelivered:
        console.print(
            f"  [red]not delivered[/red] {escape(n.notified)} to {escape(n.target)} after "
            f"{n.attempts} attempts: {escape(n.outcome)}"
        )
    console.print()
    steps: dict[str, list[HostStepRecord]] = {}
    for step in details.steps:
        steps.setdefault(step.host, []).append(step)
    tasks: dict[tuple[str, str, int], list[TaskRecord]] = {}
    for task in details.tasks:
        tasks.setdefault((task.host, task.section, task.index), []).append(task)
    for host in details.hosts:
        console.print(
            f"[bold]{escape(host.host)}[/bold] (batch {host.batch}) "
            f"{_status(host.status)} {escape(host.message or '')}"
        )
        for step in steps.get(host.host, []):
            took = (step.duration_ms or 0) / 1000
            rc = f"rc={step.rc}" if step.rc is not None else ""
            where = "↩ " if step.section == "rollback" else ""
            console.print(
                f"  {where}{step.index + 1}. {escape(step.name)} "
                f"{_status(step.status)} {rc} {took:.2f}s {escape(step.message)}"
            )
            ran = tasks.get((host.host, step.section, step.index), [])
            for task in ran:
                said = f" — {escape(task.message)}" if task.message else ""
                console.print(f"     task {escape(task.task)} {_status(task.status)}{said}")
            if ran:
                continue  # the tasks say it all; their summary is the step's stdout
            if step.output == "pruned":
                console.print(
                    f"     [dim](output pruned: {step.output_bytes} bytes, "
                    f"sha256 {step.output_sha256})[/dim]"
                )
            elif step.output == "missing":
                console.print(
                    f"     [bold red](output missing: {step.output_bytes} bytes, sha256 "
                    f"{step.output_sha256}; no prune event covers it)[/bold red]"
                )
            for stream in ("stdout", "stderr"):
                text = (getattr(step, stream) or "").rstrip()
                for line in text.splitlines():
                    console.print(f"     [dim]{stream[3:]}│[/dim] {escape(line)}")


def print_releases(console: Console, rows: Sequence[Any], *, checked: bool) -> None:
    if not rows:
        console.print("no release switches recorded")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = ["host", "root", "live", "previous", "since (UTC)", "run"]
    for column in [*columns, *(["on the host"] if checked else [])]:
        table.add_column(column)
    for row in rows:
        cells = [
            escape(row.host),
            escape(row.root),
            escape(row.live),
            escape(row.previous or "-"),
            _when(row.since),
            row.run_id,
        ]
        if checked:
            if row.problem:
                cells.append(f"[red]{escape(row.problem)}[/red]")
            elif row.drift:
                cells.append(f"[red]{escape(row.found or '')} (drift!)[/red]")
            else:
                cells.append(f"[green]{escape(row.found or '')}[/green]")
        table.add_row(*cells)
    console.print(table)
    drifted = [r.host for r in rows if checked and r.drift]
    if drifted:
        console.print(
            f"[red]drift on {escape(', '.join(drifted))}: the hosts do not run what "
            "the record says[/red]"
        )


def print_check_mode(console: Console, results: Sequence[tuple[str, Any]]) -> None:
    console.print("[bold]Check mode[/bold] (Ansible ran with --check: nothing was changed)")
    if not results:
        console.print("  no playbook or module steps")
    for name, outcome in results:
        console.print(f"  [cyan]{escape(name)}[/cyan]")
        for host, tasks in outcome.tasks.items():
            changed = [t.task for t in tasks if t.status == "changed"]
            failed = [
                f"{t.task}: {t.message}" for t in tasks if t.status in ("failed", "unreachable")
            ]
            if failed:
                console.print(
                    f"     {escape(host)}: [red]would fail[/red]: {escape('; '.join(failed))}"
                )
            elif changed:
                console.print(
                    f"     {escape(host)}: [yellow]would change[/yellow]: "
                    f"{escape(', '.join(changed))}"
                )
            else:
                console.print(f"     {escape(host)}: no change")
        for host, status in outcome.hosts.items():
            if host not in outcome.tasks and status != "ok":
                console.print(
                    f"     {escape(host)}: [red]{escape(outcome.messages.get(host, status))}[/red]"
                )
