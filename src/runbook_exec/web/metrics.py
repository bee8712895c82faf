"""`/metrics`: what the record says, in Prometheus' text format and naming. Computed at
each scrape from the chain's history (folded again only when the chain has grown), so a
restart of `serve` loses nothing: counters are totals over the record.

    runbook_exec_runs_total{runbook, outcome}                   runs by how they ended
    runbook_exec_run_duration_seconds{runbook}                  ended runs, histogram
    runbook_exec_step_duration_seconds{runbook, step}           host-steps, histogram
    runbook_exec_host_step_failures_total{runbook, step}        failed host-steps
    runbook_exec_runs_awaiting_approval                         runs waiting at a gate
    runbook_exec_locks_held                                     host and named locks held
    runbook_exec_audit_events                                   events in the chain
    runbook_exec_audit_last_verified_seq                        the last event that verified
    runbook_exec_audit_chain_intact                             1, or 0 from the first break
    runbook_exec_release_info{host, root, version}              the live release, per host
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from ..events import RUN_ENDED, STEP_FAILED
from ..record import History

RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def exposition(history: History, locks_held: int) -> bytes:
    """The metrics page for this history and this count of held locks."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Record(history, locks_held))
    return generate_latest(registry)


class _Record:
    def __init__(self, history: History, locks_held: int) -> None:
        self.history = history
        self.locks_held = locks_held

    def collect(self) -> Iterator[Any]:
        runs = list(self.history.runs.values())
        outcomes = Counter(
            (d.run.runbook_name, d.run.status) for d in runs if d.run.status in RUN_ENDED
        )
        total = CounterMetricFamily(
            "runbook_exec_runs",
            "Runs that ended, by runbook and outcome.",
            labels=["runbook", "outcome"],
        )
        for (runbook, outcome), count in sorted(outcomes.items()):
            total.add_metric([runbook, outcome], count)
        yield total

        durations: dict[str, list[float]] = defaultdict(list)
        steps: dict[tuple[str, ...], list[float]] = defaultdict(list)
        failures: Counter[tuple[str, str]] = Counter()
        for d in runs:
            if d.run.duration is not None:
                durations[d.run.runbook_name].append(d.run.duration)
            for s in d.steps:
                if s.duration_ms is not None:
                    steps[(d.run.runbook_name, s.name)].append(s.duration_ms / 1000)
                if s.status in STEP_FAILED and not s.ignored:
                    failures[(d.run.runbook_name, s.name)] += 1
        yield _histogram(
            "runbook_exec_run_duration_seconds",
            "How long ended runs took, request to end.",
            ["runbook"],
            {(k,): v for k, v in durations.items()},
            RUN_BUCKETS,
        )
        yield _histogram(
            "runbook_exec_step_duration_seconds",
            "How long each host-step took.",
            ["runbook", "step"],
            dict(steps),
            STEP_BUCKETS,
        )
        failed = CounterMetricFamily(
            "runbook_exec_host_step_failures",
            "Host-steps that failed (timed out, unreachable), not ignored.",
            labels=["runbook", "step"],
        )
        for (runbook, step), count in sorted(failures.items()):
            failed.add_metric([runbook, step], count)
        yield failed

        waiting = sum(1 for d in runs if d.run.status == "awaiting_approval")
        yield GaugeMetricFamily(
            "runbook_exec_runs_awaiting_approval",
            "Runs waiting at an approval gate.",
            value=waiting,
        )
        yield GaugeMetricFamily(
            "runbook_exec_locks_held", "Host and named locks held by runs.", value=self.locks_held
        )
        verified = self.history.verified
        yield GaugeMetricFamily(
            "runbook_exec_audit_events", "Events in the audit chain.", value=self.history.head
        )
        yield GaugeMetricFamily(
            "runbook_exec_audit_last_verified_seq",
            "The last audit event that verified.",
            value=verified.last_seq,
        )
        yield GaugeMetricFamily(
            "runbook_exec_audit_chain_intact",
            "1 when the whole chain verifies, else 0.",
            value=1 if verified.finding is None else 0,
        )
        live: dict[tuple[str, str], str] = {}
        for switch in self.history.switches:
            live[(switch.host, switch.root)] = switch.to_version
        info = InfoMetricFamily(
            "runbook_exec_release",
            "The release live on each host, as recorded.",
            labels=["host", "root"],
        )
        for (host, root), version in sorted(live.items()):
            info.add_metric([host, root], {"version": version})
        yield info


def _histogram(
    name: str,
    text: str,
    labels: Sequence[str],
    samples: dict[tuple[str, ...], list[float]],
    buckets: Sequence[float],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, text, labels=list(labels))
    for key, values in sorted(samples.items()):
        cumulative = [(str(float(b)), sum(1 for v in values if v <= b)) for b in buckets]
        cumulative.append(("+Inf", len(values)))
        family.add_metric(list(key), cumulative, sum_value=sum(values))
    return family
