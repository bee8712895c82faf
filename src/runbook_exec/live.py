"""What a run shows while it goes: a live Rich view on a terminal, one plain line per event
otherwise. Failures are always printed in full, with their output."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .errors import EXIT_AUDIT, EXIT_FAILED
from .events import (
    HOST_FAILED,
    NOTHING_TO_UNDO,
    STEP_FAILED,
    EventSink,
    HostStatus,
    HostStepResult,
    ReleaseSwitch,
    RunStatus,
    TaskResult,
)
from .steps.analysis import measurement_value

OUTPUT_LINES = 12
HOST_ROWS = 8  # running and failed hosts shown by name in the live view; the rest counted
STATUS_STYLE = {
    "ok": "green",
    "skipped": "dim",
    "failed": "red",
    "timeout": "red",
    "unreachable": "red",
}


class ConsoleRecorder(EventSink):
    """Shows a run to a person. `live=True` redraws a compact view in place (for a
    terminal); otherwise every event is one line, for logs and pipes."""

    def __init__(
        self,
        console: Console,
        run_id: str,
        batches: Sequence[Sequence[str]],
        live: bool,
        quiet: bool = False,
    ) -> None:
        self.console = console
        self.run_id = run_id
        self.batches = batches
        self.quiet = quiet
        self.current = 0
        self.steps: dict[tuple[str, int], dict[str, Any]] = {}
        self.running: dict[str, tuple[str, float]] = {}  # host -> (step, since: monotonic)
        self.failed: dict[str, str] = {}  # host -> "step: why"
        self.switched: dict[str, list[str]] = {}  # host -> ["/srv/app 1.0 → 2.0"]
        self.undid_nothing: set[str] = set()  # rolled back with every rollback step skipped
        self.live = self._new_live() if live else None

    def _new_live(self) -> Live:
        return Live(
            console=self.console,
            auto_refresh=True,
            refresh_per_second=8,
            transient=True,
            get_renderable=self._view,
        )

    def start(self) -> None:
        if self.live:
            # A fresh Live each time: a restarted one would move the cursor up by its old
            # height and overwrite lines printed since (a prompt, its answer).
            self.live = self._new_live()
            self.live.start()

    def stop(self) -> None:
        if self.live:
            self.live.stop()

    def _line(self, text: str, style: str | None = None) -> None:
        """One event. Plain mode writes the text as it is (Rich's markup rendering costs
        about a millisecond a line, which adds up over thousands of host-steps)."""
        if self.quiet:
            return
        if self.live is None:  # a log: the date and the zone too (UTC, as the record)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.console.file.write(f"{stamp} {text}\n")
        else:  # a person at a terminal: the time of day where they are
            stamp = time.strftime("%H:%M:%S")
            self.console.print(f"{stamp} {text}", style=style, markup=False, soft_wrap=True)

    def batch_started(self, batch: int, hosts: Sequence[str]) -> None:
        self.current = batch
        self.steps = {}
        shown = ", ".join(hosts) if len(hosts) <= 8 else f"{', '.join(hosts[:8])}, …"
        count = f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}"
        self._line(f"batch {batch}/{len(self.batches)}: {count} ({shown})", "bold")

    def steps_started(
        self, batch: int, section: str, index: int, name: str, hosts: Sequence[str]
    ) -> None:
        entry = self.steps.setdefault(
            (section, index), {"name": name, "hosts": 0, "done": Counter(), "section": section}
        )
        entry["hosts"] += len(hosts)
        now = time.monotonic()
        for host in hosts:
            self.running[host] = (name, now)
        if self.live is None:
            where = "rollback " if section == "rollback" else ""
            count = f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}"
            self._line(f"  {where}step {index + 1} {name} on {count}")

    def step_finished(self, batch: int, result: HostStepResult) -> None:
        entry = self.steps.get((result.section, result.index))
        if entry is not None:
            entry["done"][result.status] += 1
        self.running.pop(result.host, None)
        if result.status in STEP_FAILED and not result.ignored:
            self.failed[result.host] = f"{result.name}: {result.message}"
        if result.status in STEP_FAILED:
            ignored = " (ignored)" if result.ignored else ""
            self._line(
                f"  {result.status.upper()}{ignored} {result.host} · {result.name}: "
                f"{result.message}",
                "yellow" if result.ignored else "red",
            )
            for stream in (result.stdout, result.stderr):
                for line in stream.rstrip().splitlines()[-OUTPUT_LINES:]:
                    self._line(f"      │ {line}", "dim")
        elif self.live is None:
            detail = f" ({result.message})" if result.message else ""
            self._line(
                f"    {result.status} {result.host} · {result.name} {result.duration:.2f}s{detail}"
            )

    def host_status(self, host: str, status: HostStatus, message: str | None = None) -> None:
        if status in (HostStatus.ROLLED_BACK, HostStatus.ROLLBACK_FAILED):
            if message == NOTHING_TO_UNDO:
                self.undid_nothing.add(host)
            said = f" ({message})" if message else ""
            self._line(f"  {host}: {status.replace('_', ' ')}{said}", "yellow")

    def gate(
        self,
        key: str,
        kind: str,
        message: str,
        status: str,
        by: str | None = None,
        comment: str | None = None,
    ) -> None:
        if kind == "wait" and status == "waiting":
            self._line(message, "yellow")
        elif kind == "approve" and status == "waiting":
            self._line(f"approval needed: {message}", "yellow")
        elif kind == "approve":
            said = f" ({comment})" if comment else ""
            self._line(f"{status} by {by or '?'}{said}", "yellow")
        elif kind == "analysis":
            self._line(f"analysis {status}: {message}", "red" if status == "failed" else "yellow")

    def measured(
        self, batch: int, where: Mapping[str, Any], measurement: Mapping[str, Any]
    ) -> None:
        number = measurement.get("number")
        which = "against the baseline" if number == 0 else f"measurement {number}"
        verdict = str(measurement.get("verdict"))
        raw = measurement.get("value")
        value = "" if raw is None and verdict == "error" else measurement_value(raw)
        note = f" ({measurement['message']})" if measurement.get("message") else ""
        style = {"successful": None, "failed": "red"}.get(verdict, "yellow")
        self._line(f"  analysis {which}: {value} {verdict}{note}", style)

    def note(self, text: str) -> None:
        self._line(text, "yellow")

    def release_switched(self, host: str, switch: ReleaseSwitch) -> None:
        was = f" (was {switch.from_version})" if switch.from_version else ""
        pruned = f"; pruned {', '.join(switch.pruned)}" if switch.pruned else ""
        made = f"; artifact sha256 {switch.artifact_sha256[:12]}…" if switch.artifact_sha256 else ""
        change = f"{switch.root} {switch.from_version or '(none)'} → {switch.to_version}"
        self.switched.setdefault(host, []).append(change)
        self._line(
            f"  {host}: {switch.root}/current → {switch.to_version}{was}{pruned}{made}", "cyan"
        )

    def task_result(self, batch: int, section: str, index: int, result: TaskResult) -> None:
        if result.status in ("failed", "unreachable") and not result.ignored:
            self._line(
                f"  {result.status.upper()} {result.host} · {result.task}: {result.message}", "red"
            )
        elif self.live is None:
            self._line(f"      {result.status} {result.host} · {result.task}")

    async def flush(self) -> None:
        pass

    def _view(self) -> Any:
        table = Table.grid(padding=(0, 2))
        for entry in self.steps.values():
            done = entry["done"]
            finished = sum(done.values())
            marks = Text(" ").join(
                Text(f"{v} {k}", STATUS_STYLE.get(k, "")) for k, v in done.items()
            )
            state = "✓" if finished >= entry["hosts"] else "…"
            label = ("↩ " if entry["section"] == "rollback" else "") + entry["name"]
            table.add_row(state, Text(label), f"{finished}/{entry['hosts']}", marks)
        hosts = Table.grid(padding=(0, 2))
        now = time.monotonic()
        running = sorted(self.running.items(), key=lambda item: item[1][1])
        for host, (step, since) in running[:HOST_ROWS]:
            hosts.add_row("▶", Text(host), Text(step), f"{now - since:.0f}s")
        if len(running) > HOST_ROWS:
            hosts.add_row("", Text(f"… {len(running) - HOST_ROWS} more running"), "", "")
        for host, why in list(self.failed.items())[:HOST_ROWS]:
            hosts.add_row(Text("✗", "red"), Text(host, "red"), Text(why[:80]), "")
        if len(self.failed) > HOST_ROWS:
            hosts.add_row("", Text(f"… {len(self.failed) - HOST_ROWS} more failed", "red"), "", "")
        # Text, not markup: the view is drawn again inside each console.print(markup=False)
        # of a line above it, where markup in a plain string would be printed as it is.
        batch = f" · batch {self.current}/{len(self.batches)}"
        return Group(Text.assemble((f"run {self.run_id}", "bold"), batch), table, hosts)


def print_changes(console: Console, run_id: str, switched: dict[str, list[str]]) -> None:
    """After a run: what it changed where, and the commands that say more or undo it."""
    for host, changes in switched.items():
        for change in changes:
            console.print(f"  {escape(host)}: {escape(change)}")
    console.print(f"details: `runbook-exec show {run_id}`")
    if switched:
        console.print(f"to undo it: `runbook-exec rollback {run_id}`")


def print_outcome(
    console: Console,
    run_id: str,
    status: str,
    hosts: dict[str, str],
    exit_code: int,
    undid_nothing: Collection[str] = (),
) -> None:
    """The run's end in one line (hosts counted by status; of the hosts rolled back, those
    where nothing was undone), then what to do next."""
    counts = Counter(hosts.values())
    if status == RunStatus.SUCCEEDED:
        style = "green"
    elif exit_code in (EXIT_FAILED, EXIT_AUDIT):
        style = "red"
    else:
        style = "yellow"  # waiting for a decision, refused, or interrupted
    parts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))
    idle = sum(1 for h, s in hosts.items() if h in undid_nothing and s == HostStatus.ROLLED_BACK)
    if idle:
        parts += f"; of those rolled back, {idle} had nothing to undo"
    console.print(f"[{style}]run {run_id} {status.replace('_', ' ')}[/{style}] ({parts})")
    bad = [h for h, s in hosts.items() if s in HOST_FAILED]
    if bad:
        console.print(f"failed hosts: {escape(', '.join(bad))}")
    if status == RunStatus.AWAITING_APPROVAL:
        console.print(
            f"waiting for approval: `runbook-exec approve {run_id}` "
            f"(or `reject`), then `runbook-exec resume {run_id}`"
        )
    elif status == RunStatus.INTERRUPTED:
        console.print(f"interrupted; carry on with `runbook-exec resume {run_id}`")
