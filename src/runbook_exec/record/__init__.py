"""The record: the one read API over the state store. Every view (`runs`, `show`,
`releases`, exports, later the web view and the report) and every decision (resume, gates,
locks, `activate: previous`) asks it, never a table.

It answers from the audit chain, verified over the events it reads: from the event before
a run's first to the chain's head, so an event cannot be removed, moved or hidden from it.
The tables beside the chain are indexes (which runs, in which order) and are checked
against the events; where they differ the answer carries a `Flag`, and a decision refuses
(`RunDetails.require_intact`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ParamSpec, TypeVar

from ..errors import NotFound
from ..store import LockHolder, Store, gc_paused
from ..store.audit import PRUNED, Start, Verified, sha256_hex, verify
from ..store.locks import describe_locks
from . import compare
from .fold import RunFold
from .values import (
    Flag,
    GateRecord,
    HostRecord,
    HostStepRecord,
    LockRecord,
    MeasurementRecord,
    RecordAltered,
    RunDetails,
    RunRecord,
    SwitchRecord,
    TaskRecord,
    TickRecord,
    previous_of,
)

__all__ = [
    "Flag",
    "GateRecord",
    "History",
    "HostRecord",
    "HostStepRecord",
    "LockRecord",
    "MeasurementRecord",
    "Record",
    "RecordAltered",
    "Releases",
    "RunDetails",
    "RunRecord",
    "SwitchRecord",
    "TaskRecord",
    "TickRecord",
    "history_of",
]


@dataclass
class Releases:
    """Every release switch on record, by (host, root), oldest first, and what the record
    cannot vouch for."""

    switches: dict[tuple[str, str], list[SwitchRecord]]
    flags: list[Flag]
    upto: int = 0  # the last event read: the next read goes on from there
    head: str = ""
    key_id: str | None = None


@dataclass
class History:
    """The whole chain up to an event (`head`), folded: every run (without outputs), every
    release switch, every audit checkpoint taken. Read from the chain alone (no table), so
    the same events always give the same history, from the store or from an export."""

    runs: dict[str, RunDetails]
    switches: list[SwitchRecord]
    checkpoints: list[tuple[int, float]]  # (seq, at) of each `audit.checkpoint`
    verified: Verified
    head: int  # the last event read (0: none)
    head_hash: str
    events: dict[int, dict[str, Any]]  # the events outside runs that a reader asked for
    # Each run's request event (seq, its payload's SHA-256) and a reader of payloads by seq:
    # the rendered plan lies in the payload, read only for the runs asked about.
    requests: dict[str, tuple[int, str]] = field(default_factory=dict)
    payloads: Callable[[Sequence[int]], Mapping[int, str | None]] = lambda seqs: {}
    last_events: dict[str, int] = field(default_factory=dict)  # each run's newest event

    @property
    def flags(self) -> list[Flag]:
        return _chain_flags(self.verified)

    def plans(self, run_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Each run's plan as rendered when it was requested, from its request's payload,
        checked against the digest the event holds (None: pruned, or it does not match)."""
        wanted = {run_id: self.requests[run_id] for run_id in run_ids if run_id in self.requests}
        texts = self.payloads([seq for seq, _ in wanted.values()])
        plans: dict[str, dict[str, Any] | None] = {}
        for run_id, (seq, digest) in wanted.items():
            text = texts.get(seq)
            if text is None or sha256_hex(text) != digest:
                plans[run_id] = None
                continue
            plan = json.loads(text).get("plan")
            plans[run_id] = plan if isinstance(plan, dict) else None
        return plans


def history_of(
    rows: Sequence[Mapping[str, Any]],
    keys: Any,
    upto: int | None = None,
    keep: frozenset[str] = frozenset(),
    payloads: Callable[[Sequence[int]], Mapping[int, str | None]] | None = None,
) -> History:
    """Fold `rows` (the chain from its first event, as the store or an export holds it)
    up to event `upto` (default: all). Events of the kinds in `keep` that belong to no run
    are handed back by seq (`History.events`). `payloads` reads events' payloads by seq
    (default: the rows' own `payload`, as an export holds them)."""
    from .fold import epoch

    folds: dict[str, RunFold] = {}
    checkpoints: list[tuple[int, float]] = []
    kept: dict[int, dict[str, Any]] = {}
    requests: dict[str, tuple[int, str]] = {}
    last_events: dict[str, int] = {}

    def visit(seq: int, body: Mapping[str, Any]) -> None:
        run_id = body.get("run_id")
        kind = body.get("type")
        if run_id is not None:
            last_events[str(run_id)] = seq
        if kind == "run.requested" and run_id is not None and body.get("payload_sha256"):
            requests.setdefault(str(run_id), (seq, str(body["payload_sha256"])))
        if run_id is not None:
            fold = folds.get(str(run_id))
            if fold is None:
                fold = folds[str(run_id)] = RunFold(str(run_id))
            fold.add(seq, body)
        elif kind == "audit.checkpoint":
            checkpoints.append((seq, epoch(body.get("at"))))
        if run_id is None and kind in keep:
            kept[seq] = dict(body)

    within = [r for r in rows if upto is None or int(r["seq"]) <= upto]
    verified = verify(within, keys, visit=visit)
    runs = {}
    for run_id, fold in folds.items():
        if fold.first is not None:
            runs[run_id] = fold.details(None, [])
    switches = sorted((s for d in runs.values() for s in d.switches), key=lambda s: s.event)
    last = within[-1] if within else None
    if payloads is None:
        held = {int(r["seq"]): r.get("payload") for r in within if r.get("payload")}
        payloads = lambda seqs: {seq: held.get(seq) for seq in seqs}  # noqa: E731
    return History(
        runs,
        switches,
        checkpoints,
        verified,
        int(last["seq"]) if last else 0,
        str(last.get("hash") or "") if last else "",
        kept,
        requests,
        payloads,
        last_events,
    )


P = ParamSpec("P")
T = TypeVar("T")


def _gc_paused(method: Callable[P, T]) -> Callable[P, T]:
    """A read that decodes and folds thousands of events runs with the cyclic garbage
    collector paused (see `store.gc_paused`): a fifth of `show` went to it."""

    @functools.wraps(method)
    def paused(*args: P.args, **kwargs: P.kwargs) -> T:
        with gc_paused():
            return method(*args, **kwargs)

    return paused


class Record:
    """Questions about runs, answered from verified events. One per command."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._releases: Releases | None = None

    # --- one run ----------------------------------------------------------------------------

    @_gc_paused
    def run(
        self, run_id: str, *, outputs: bool = True, only: tuple[str, int, str] | None = None
    ) -> RunDetails:
        """A run: its records from its events, checked against the tables. With `outputs`,
        its host-steps' output and Ansible results too; with `only` (section, index, host)
        as well, the output of that one host-step alone (read by itself: a big run's other
        outputs are not loaded)."""
        first = self.store.first_event_of([run_id])
        row = self.store.get_run(run_id)
        if first is None:
            if row is None:
                raise NotFound(
                    f"no run {run_id!r} in the state store {self.store.where} (see "
                    "`runbook-exec runs`; --db or RUNBOOK_EXEC_DB name another store)"
                )
            raise RecordAltered(
                f"run {run_id} is in the runs table, but no audit event records it (inserted, "
                "or its events removed); nothing from it is shown or used"
            )
        folds = {run_id: RunFold(run_id)}
        verified, prunes = self._walk(first, folds)
        fold = folds[run_id]
        if fold.first is None:
            raise RecordAltered(f"run {run_id}: its events do not verify ({verified.finding})")
        payloads: Mapping[int, str | None] | None = None
        if outputs and only is not None:
            step = fold.steps.get(only)
            payloads = self.store.payloads_at([step.event]) if step is not None else {}
        elif outputs:
            payloads = self.store.payloads_of(run_id)
        details = fold.details(payloads, prunes, only=only)
        details.flags[:0] = _chain_flags(verified)
        details.flags.extend(compare.run_row(details, row))
        details.flags.extend(compare.host_rows(details, self.store.hosts_of(run_id)))
        steps = self.store.host_steps_of(run_id)
        if not outputs:
            steps = [{**s, "stdout": None, "stderr": None} for s in steps]
        details.flags.extend(compare.step_rows(details, steps))
        details.flags.extend(compare.gate_rows(details, list(self.store.gates_of(run_id).values())))
        if outputs:
            details.flags.extend(compare.task_rows(details, self.store.task_results_of(run_id)))
        details.flags.extend(compare.switch_rows(details, self.store.switches_of_run(run_id)))
        return details

    # --- many runs --------------------------------------------------------------------------

    @_gc_paused
    def runs(self, limit: int = 50) -> list[RunDetails]:
        """The newest runs (as the runs table orders them, plus any of the newest requests
        on the chain whose row is missing from it, flagged), each from its events; newest
        first."""
        rows = {r["id"]: r for r in self.store.list_runs(limit)}
        starts = [self.store.first_event_of(list(rows)), self.store.newest_request(limit)]
        known = [seq for seq in starts if seq is not None]
        if not known:
            return []
        first = min(known)  # a run whose row is gone is among the newest by its events
        folds: dict[str, RunFold] = {}
        verified, _ = self._walk(first, folds, light=True, every_run=True)
        chain = _chain_flags(verified)
        listed = []
        for run_id, fold in folds.items():
            if fold.first is None:
                continue
            if run_id not in rows and (
                fold.first_seq < first or fold.first.get("type") != "run.requested"
            ):
                continue  # an older run whose later events fall in the window (or the
                # event before it, walked to check the link): not one of these runs
            details = fold.details(None, [])
            details.flags[:0] = chain
            row = rows.get(run_id) or self.store.get_run(run_id)
            details.flags.extend(compare.run_row(details, row))
            listed.append(details)
        for run_id in rows.keys() - folds.keys():
            raise RecordAltered(
                f"run {run_id} is in the runs table, but no audit event records it (inserted, "
                "or its events removed)"
            )
        listed.sort(key=lambda d: (d.run.requested_at, d.run.id), reverse=True)
        return listed

    @_gc_paused
    def history(self, upto: int | None = None, keep: frozenset[str] = frozenset()) -> History:
        """The whole chain up to event `upto`, folded from the events alone (see
        `History`): what a report is made of, and checked against."""
        rows = self.store.audit_range(1, until=upto)
        return history_of(rows, self.store.keys, upto, keep, self.store.payloads_at)

    # --- releases and locks -----------------------------------------------------------------

    @_gc_paused
    def releases(self) -> Releases:
        """Every release switch, from the whole chain, checked against the releases table.
        Asked again, it reads and verifies only the events appended since."""
        known = self._releases
        folds: dict[str, RunFold] = {}
        if known is None or known.flags:
            verified, _ = self._walk(1, folds, every_run=True, kinds=_SWITCH_KINDS)
            switches: dict[tuple[str, str], list[SwitchRecord]] = {}
        else:
            verified, _ = self._walk(
                known.upto + 1, folds, every_run=True, kinds=_SWITCH_KINDS, after=known
            )
            switches = {k: list(v) for k, v in known.switches.items()}
        flags = _chain_flags(verified)
        said = sorted((s for fold in folds.values() for s in fold.switches), key=lambda s: s.event)
        for switch in said:
            switches.setdefault((switch.host, switch.root), []).append(switch)
        everything = sorted((s for v in switches.values() for s in v), key=lambda s: s.event)
        table = [
            (r["host"], r["root"], r["from_version"], r["to_version"], r["run_id"])
            for r in self.store.all_switches()
        ]
        events = [(s.host, s.root, s.from_version, s.to_version, s.run_id) for s in everything]
        if table != events:
            flags.append(
                Flag(
                    None,
                    "releases",
                    f"record altered: the releases table holds {len(table)} switches that do "
                    f"not match the {len(events)} the audit events record",
                )
            )
        last = known.upto if known and not known.flags else 0
        self._releases = Releases(
            switches,
            flags,
            upto=verified.last_seq or last,
            head=verified.last_hash or (known.head if known else ""),
            key_id=verified.key_ids[-1] if verified.key_ids else None,
        )
        return self._releases

    def previous_release(self, host: str, root: str) -> str | None:
        """What was live before the current release of `root` on `host`, for a decision
        (`activate: previous`): refuses (exit 4) where the record cannot vouch for it."""
        releases = self.releases()
        if releases.flags:
            raise RecordAltered(
                f"activate: previous on {host} refused: {releases.flags[0]}; nothing was done"
            )
        return previous_of(releases.switches.get((host, root), []))

    def lock_holders(self, held: Sequence[LockHolder]) -> tuple[list[LockHolder], list[Flag]]:
        """The lock table's holders as their runs' events tell them (the run's status and
        process from the record), and where the table disagrees with those events: a lock
        no event of its run takes, or a process the last taking does not name."""
        holders: list[LockHolder] = []
        flags: list[Flag] = []
        for row in held:
            try:
                details = self.run(row.run_id, outputs=False)
            except (NotFound, RecordAltered) as exc:
                flags.append(Flag(None, "locks", f"record altered: {row.describe()}: {exc}"))
                continue
            # What the decision reads comes from the events: only a chain that does not
            # hold refuses here. (A running holder's tables may lag a moment behind the
            # events read just before them; that is no reason to refuse.)
            flags += [f for f in details.flags if f.field in ("chain", "run.requested")]
            taken = details.locks[-1] if details.locks else None
            claimed = (
                set(row.names) - set(details.run.locks) - (set(taken.names) if taken else set())
            )
            if taken is None or claimed:
                flags.append(
                    Flag(
                        None,
                        "locks",
                        f"record altered: no event of run {row.run_id} takes "
                        f"{describe_locks(sorted(claimed or row.names))}, which the table "
                        "says it holds",
                    )
                )
                continue
            said = (taken.operator, taken.machine, taken.pid)
            if taken.pid is not None and said != (row.operator, row.machine, row.pid):
                flags.append(
                    Flag(
                        taken.event,
                        "locks",
                        f"record altered: event {taken.event} says run {row.run_id}'s locks "
                        f"are held by {said}; the table says "
                        f"{(row.operator, row.machine, row.pid)}",
                    )
                )
                continue
            holders.append(replace(row, run_status=details.run.status))
        return holders, flags

    # --- the walk ---------------------------------------------------------------------------

    def _walk(
        self,
        first: int,
        folds: dict[str, RunFold],
        *,
        light: bool = False,
        every_run: bool = False,
        kinds: frozenset[str] | None = None,
        after: Releases | None = None,
    ) -> tuple[Verified, list[tuple[int, str]]]:
        """Verify the chain from the event before `first` to the head (or, `after` a walk
        already made, from `first` on), folding each run's events into `folds` (only the
        runs given, or `every_run`)."""
        if after is not None:
            begin = first
            key = self.store.keys.get(after.key_id) if after.key_id else None
            start = Start(first, after.head, key, after.key_id)
        else:
            begin = max(1, first - 1)
            start, _ = self.store.chain_start(begin)
        rows = self.store.audit_range(begin)
        prunes: list[tuple[int, str]] = []
        last = [0]

        def visit(seq: int, body: Mapping[str, Any]) -> None:
            last[0] = seq
            kind = body.get("type")
            if kind == PRUNED:
                prunes.append((seq, str(body.get("before"))))
            run_id = body.get("run_id")
            if run_id is None or (kinds is not None and kind not in kinds):
                return
            fold = folds.get(run_id)
            if fold is None:
                if not every_run:
                    return
                fold = folds[run_id] = RunFold(run_id, light=light)
            fold.add(seq, body)

        verified = verify(rows, self.store.keys, start, visit=visit)
        if verified.finding is not None:
            _fold_unverified(rows, last[0], visit)
        return verified, prunes


_SWITCH_KINDS = frozenset({"run.requested", "release.switched"})


def _chain_flags(verified: Verified) -> list[Flag]:
    if verified.finding is None:
        return []
    if verified.finding.missing_key:
        return [
            Flag(
                verified.finding.seq,
                "chain",
                f"not verified: {verified.finding}; what the events say from there on is "
                "shown unchecked",
            )
        ]
    return [
        Flag(
            verified.finding.seq,
            "chain",
            f"record altered: the audit chain does not hold at {verified.finding}; what it "
            "says from there on is shown but not verified",
        )
    ]


def _fold_unverified(
    rows: Sequence[Mapping[str, Any]],
    last_verified: int,
    visit: Callable[[int, Mapping[str, Any]], None],
) -> None:
    """After a break in the chain, the rest is still read (for a view, flagged)."""
    for row in rows:
        if int(row["seq"]) <= last_verified:
            continue
        try:
            body = json.loads(row["body"])
        except (TypeError, ValueError):
            continue
        if isinstance(body, dict):
            visit(int(row["seq"]), body)
