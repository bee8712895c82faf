"""The plan: hosts split into batches, gates between them, every step rendered for every host.

Pure: the same runbook, hosts and parameters always give the same plan, and nothing here
touches the network. `plan` and `check` print it; the executor carries it out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypeVar

from ..errors import RunbookError
from ..inventory import Host
from ..params import ResolvedParams
from ..runbook import RunbookFile
from .render import Renderer, RunTimeValue, render_action
from .values import HostAction, Plan, PlannedGate, PlannedStep, Rendered, lock_names

__all__ = [
    "PLAN_ONLY_RUN_ID",
    "HostAction",
    "Plan",
    "PlannedGate",
    "PlannedStep",
    "Rendered",
    "RunTimeValue",
    "build_plan",
    "connection_of",
    "lock_names",
    "render_action",
    "resolve_batches",
]

T = TypeVar("T")
PLAN_ONLY_RUN_ID = "(assigned when the run starts)"
"""What `{{ run.id }}` renders to in a plan only shown (`plan`, `check`, `run --dry-run`)."""


def resolve_batches(hosts: Sequence[T], sizes: Sequence[int | str]) -> list[list[T]]:
    """Split `hosts` as Ansible's `serial` does: counts or percentages of all hosts, rounded
    down but at least 1, the last size repeating until every host has a batch."""
    remaining = list(hosts)
    total = len(remaining)
    batches: list[list[T]] = []
    index = 0
    while remaining:
        size = _batch_count(sizes[index], total)
        batches.append(remaining[:size])
        del remaining[:size]
        index = min(index + 1, len(sizes) - 1)
    return batches


def _batch_count(size: int | str, total: int) -> int:
    if isinstance(size, str):
        return max(int(int(size.rstrip("%")) / 100.0 * total), 1)
    return size


def build_plan(
    runbook_file: RunbookFile,
    hosts: Sequence[Host],
    params: ResolvedParams,
    *,
    limit: str | None = None,
    run: Mapping[str, Any] | None = None,
    registered: Collection[str] = (),
) -> Plan:
    """The plan for these hosts and parameters; `RunbookError` lists every template problem."""
    runbook = runbook_file.runbook
    batches = resolve_batches([h.name for h in hosts], runbook.strategy.batches)
    renderer = Renderer(runbook_file, hosts, params, dict(run or {}))
    renderer.registered.update(registered)  # known before the run (one that undoes another)
    between = renderer.gates(runbook.strategy.between_batches)
    gates = tuple(
        PlannedGate(after, wait, approve, analysis)
        for after in range(1, len(batches))
        for wait, approve, analysis in between
    )
    steps = renderer.section("steps", runbook.steps)
    rollback = renderer.section("rollback", runbook.rollback)
    if renderer.problems:
        raise RunbookError(renderer.summarised_problems())
    return Plan(
        runbook={
            "name": runbook.name,
            "path": runbook_file.display_path,
            "sha256": runbook_file.sha256,
        },
        targets=runbook.targets,
        limit=limit,
        lock=runbook.lock,
        params=params.masked(),
        batches=tuple(tuple(b) for b in batches),
        gates=gates,
        max_fail_percentage=runbook.strategy.max_fail_percentage,
        on_failure=runbook.on_failure,
        steps=steps,
        rollback=rollback,
        connections={h.name: connection_of(h) for h in hosts},
    )


def connection_of(host: Host) -> dict[str, Any]:
    """What reaching `host` depends on, from its inventory variables."""
    return {
        "address": host.address,
        "port": host.port,
        "user": host.user,
        "key_file": host.key_file,
        "become": host.become,
    }
