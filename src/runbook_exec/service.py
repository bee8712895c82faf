"""What runbook-exec does, as one person acting on one store: the calls the CLI makes, and
next the web view and the report. Each validates, acts, records and answers in the record's
typed values (`record.values`); none prints, prompts or exits. Who acts (`operator`) is
fixed when the service is opened, so that every event it records names that person.

    service = Service.open("sqlite:///.runbook-exec/state.db", "anna")
    prepared = prepare(path, [inventory], ["version=1.4.2"], None, service.operator,
                       run_id=new_run_id())
    outcome = service.start(prepared, change_id="CHG-1", reason=None, options=RunOptions(),
                            view=lambda run_id: EventSink(), approver=None)
    service.run(outcome.run_id).run.status      # read back from the verified record
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError, NotFound, Problem, Refused
from .events import RUN_ENDED, RunStatus, sinks_for
from .record import Flag, Record, RecordAltered, RunDetails, RunRecord, TickRecord
from .recorders import Auditor
from .store import LockHolder, Store
from .store.audit import operator_name

if TYPE_CHECKING:
    from .executor import Approver, RunOptions
    from .inventory import Host
    from .plan import Plan
    from .prepare import Prepared
    from .releases import LiveRelease
    from .rollback import UndoPlan
    from .runner import Outcome, ViewFactory


@dataclass(frozen=True)
class Decision:
    """What a decision on a run said, and whether a rollback is left to do (by `resume`)."""

    message: str
    roll_back: bool
    switched: tuple[str, ...] = ()
    """An interrupted run's release switches ("host1: /srv/app 2.0 → 1.0"), whose later
    steps (a restart, a proxy reload) may not have run: a cancel leaves them so."""


@dataclass(frozen=True)
class LiveReleases:
    """What is live where (each host and root), and what the record could not verify."""

    rows: list[LiveRelease]
    flags: list[Flag]

    @property
    def drift(self) -> bool:
        return any(row.drift for row in self.rows)


class Service:
    """One person (`operator`) acting on one state store."""

    def __init__(self, store: Store, operator: str) -> None:
        self.store = store
        self.operator = operator
        self.record = Record(store)

    @classmethod
    def open(cls, db: str, operator: str | None = None) -> Service:
        """The service on the store at `db` (a SQLAlchemy URL), acting as `operator` (by
        default RUNBOOK_EXEC_OPERATOR, else the login name)."""
        return cls(Store.open(db), operator_name(operator))

    # --- reading the record -------------------------------------------------------------

    def runs(self, limit: int = 20) -> list[RunDetails]:
        """The newest runs first, from the verified audit trail (without outputs)."""
        return self.record.runs(limit)

    def run(
        self, run_id: str, *, outputs: bool = True, only: tuple[str, int, str] | None = None
    ) -> RunDetails:
        """A run's every event folded: host-steps, gates, switches, with what failed
        verification flagged (with `only`, that one host-step's output alone)."""
        return self.record.run(run_id, outputs=outputs, only=only)

    def releases(
        self,
        hosts: Mapping[str, Host] | None = None,
        *,
        check: bool = False,
        known_hosts: Path | None = None,
    ) -> LiveReleases:
        """What is live on each host, from the recorded switches (only `hosts`, when
        given); with `check`, each host's `current` link read over SSH and compared."""
        from . import releases as live
        from .transports.base import default_known_hosts
        from .transports.ssh import SshOptions

        if check and hosts is None:
            raise InputError(Problem("--check needs -i INVENTORY to reach the hosts"))
        recorded = self.record.releases()
        rows = live.recorded(recorded.switches, set(hosts) if hosts is not None else None)
        if check and hosts is not None:
            from .ansiblecfg import ansible_defaults

            known = (known_hosts or default_known_hosts()).resolve()
            options = SshOptions(known, ansible=ansible_defaults())
            rows = asyncio.run(live.check(rows, hosts, options))
            # What was found is recorded: the web view's hosts page shows the last check.
            found = [
                {"host": r.host, "root": r.root, "recorded": r.live, "found": r.found,
                 "problem": r.problem, "drift": r.drift}
                for r in rows
            ]  # fmt: skip
            Auditor.outside_runs(self.store, self.operator).append(
                "releases.checked",
                hosts=sorted(hosts),
                rows=found,
                drift=sorted({r["host"] for r in found if r["drift"]}),
            )
        return LiveReleases(rows, recorded.flags)

    def previous_releases(self, plan: Plan) -> list[str]:
        """What `activate: previous` means on each planned host, from the recorded switches:
        `host1: /srv/app 3.0.0 → 2.0.0`, or why it cannot be told from the record."""
        from .record.values import previous_of

        wanted: dict[tuple[str, str], None] = {}
        for step in (*plan.steps, *plan.rollback):
            for host, rendered in step.hosts.items():
                spec = (rendered.shown or {}).get("release") if rendered.shown else None
                if isinstance(spec, Mapping) and spec.get("activate") == "previous":
                    wanted[(host, str(spec.get("root")))] = None
        if not wanted:
            return []
        releases = self.record.releases()
        if releases.flags:
            return [f"the record cannot vouch for what was live: {releases.flags[0]}"]
        lines = []
        for host, root in wanted:
            history = releases.switches.get((host, root), [])
            live = history[-1].to_version if history else None
            before = previous_of(history)
            if before is None:
                known = f"{live} live; nothing before it on record" if live else "no record"
                lines.append(f"{host}: {root}: {known} (the release before on disk)")
            else:
                lines.append(f"{host}: {root} {live} → {before}")
        return lines

    # --- acting -------------------------------------------------------------------------

    def start(
        self,
        prepared: Prepared,
        *,
        change_id: str | None,
        reason: str | None,
        options: RunOptions,
        view: ViewFactory,
        approver: Approver | None,
    ) -> Outcome:
        """Record a new run of `prepared`, take its lock and carry it out."""
        from . import runner

        return runner.start(
            self.store,
            prepared,
            operator=self.operator,
            change_id=change_id,
            reason=reason,
            options=options,
            view=view,
            approver=approver,
        )

    def resume(
        self,
        run_id: str,
        *,
        view: ViewFactory,
        approver: Approver | None,
        replan: bool = False,
        become_password: str | None = None,
    ) -> Outcome:
        """Carry on a run from its verified record; what finished is not run again. With
        `replan`, hosts are reached as the inventory says now, not as planned."""
        from . import runner

        return runner.resume(
            self.store,
            run_id,
            operator=self.operator,
            options=None,
            view=view,
            approver=approver,
            replan=replan,
            become_password=become_password,
        )

    def decide(
        self, run_id: str, approved: bool, comment: str | None, *, four_eyes: bool = False
    ) -> Decision:
        """Record a decision on the gate a run waits at. Taken from the run's verified
        events: a gate the table alone says is waiting is not. A rejection ends the run
        through its `on_failure`: with rollback, and hosts this run changed, the rollback
        is what is left to do (`resume` carries it out); otherwise the run ends, rejected.
        With `four_eyes` (signed-in people: the web view, the API), an approval must come
        from one of the runbook's `approvers:`, or, if it names none, from anyone but the
        person who started the run."""
        from .holding import still_running
        from .runner import end_run

        store = self.store
        store.require_key()
        details = self.record.run(run_id, outputs=False)
        details.require_intact("approving or rejecting")
        run = details.run
        if approved and four_eyes:
            self._may_approve(run)
        if run.rolling_back:
            raise Refused(f"run {run_id} was cancelled with --rollback: `resume` finishes that")
        still_running(store, self.record, run)  # a person asked at its own prompt answers there
        waiting = [g for g in details.gates if g.status == "waiting" and g.kind == "approve"]
        if run.status != RunStatus.AWAITING_APPROVAL or not waiting:
            raise Refused(f"run {run_id} is not waiting for approval (it is {run.status})")
        gate = waiting[0]
        decision = "approved" if approved else "rejected"
        why = f"{decision} by {self.operator}" + (f": {comment}" if comment else "")
        roll_back = not approved and bool(_changed(details)) and _on_failure(run) == "rollback"
        audit = Auditor.for_recorded(store, run, self.operator)
        with store.batch():  # the decision and what it changes: both or neither
            decided = store.decide_gate(
                run_id,
                gate.key,
                status=decision,
                decided_by=self.operator,
                comment=comment,
                decided_at=time.time(),
            )
            if not decided:  # another decision came first: this one is not recorded
                raise Refused(f"run {run_id}'s gate was decided meanwhile; nothing was done")
            audit.append(
                f"gate.{decision}",
                gate={"key": gate.key, "kind": "approve", "message": gate.message},
                decided_by=self.operator,
                comment=comment,
            )
            if approved:
                store.update_run(run_id, status=RunStatus.RUNNING)
            elif roll_back:
                message = f"{why}; the rollback is left to do"
                audit.append(
                    "run.stopped", status=RunStatus.INTERRUPTED, message=message, decision=why
                )
                store.update_run(run_id, status=RunStatus.INTERRUPTED, message=message)
                store.park_locks(run_id)
        # Recorded: now the registered listeners (a notifier, metrics) hear of it too.
        sinks_for(run_id).gate(
            gate.key, "approve", str(gate.message), decision, self.operator, comment
        )
        if not approved and not roll_back:
            store.update_run(run_id, message=why)
            end_run(store, audit, run_id, RunStatus.REJECTED)
            self._told_of_end(run, RunStatus.REJECTED)
        return Decision(str(gate.message), roll_back)

    def _told_of_end(self, run: RunRecord, status: str) -> None:
        """A run a decision ended (not its executor): its notification targets hear of it
        as they hear of every end. Settings that cannot be read leave them unheard."""
        from . import notify
        from .masking import Secrets

        try:
            found = notify.configured()
        except InputError:
            return
        auditor = Auditor.for_recorded(self.store, run, self.operator)
        notifier = notify.for_run(found, run, Secrets(), auditor)
        if notifier is not None:
            hosts = {h.host: h.status for h in self.record.run(run.id, outputs=False).hosts}
            notifier.finished(status, hosts)
            notifier.close()

    def _may_approve(self, run: RunRecord) -> None:
        from .runbook import runbook_from_text

        book = runbook_from_text(run.runbook_text, run.runbook_path) if run.runbook_text else None
        approvers = book.runbook.approvers if book is not None else None
        me = same_person(self.operator)
        if approvers is not None and me not in {same_person(a) for a in approvers}:
            raise Refused(
                f"{self.operator} may not approve run {run.id}: its runbook names its "
                f"approvers ({', '.join(approvers)})"
            )
        if approvers is None and me == same_person(run.operator):
            raise Refused(
                f"{self.operator} started run {run.id} and may not approve it too (four eyes; "
                "a runbook's `approvers:` can name who may)"
            )

    def cancel(self, run_id: str, comment: str, *, rollback: bool = False) -> Decision:
        """End a run that waits (for approval) or was interrupted, on record, and free its
        hosts. With `rollback`, the runbook's rollback steps are left to do on the hosts it
        changed (`resume` carries them out, and only them); with no host changed, it just
        ends. A run still running is refused: stop it first."""
        from .holding import still_running
        from .runbook import runbook_from_text
        from .runner import end_run

        store = self.store
        store.require_key()
        if not comment.strip():
            raise InputError(Problem("say why: cancel RUN_ID -m REASON (it is recorded)"))
        details = self.record.run(run_id, outputs=False)
        details.require_intact("cancel")
        run = details.run
        if run.status in RUN_ENDED or run.status == RunStatus.REFUSED:
            raise Refused(f"run {run_id} has ended ({run.status}); nothing to cancel")
        still_running(store, self.record, run)
        book = runbook_from_text(run.runbook_text, run.runbook_path) if run.runbook_text else None
        if rollback and book is not None and not book.runbook.rollback:
            raise InputError(
                Problem(f"run {run_id}'s runbook has no rollback steps; cancel without it")
            )
        roll_back = rollback and bool(_changed(details))
        if roll_back:  # what `resume` will need is there, before anything is recorded
            from .resuming import prepare_resume

            prepare_resume(store, self.record, run)
        why = f"cancelled by {self.operator}: {comment}"
        audit = Auditor.for_recorded(store, run, self.operator)
        with store.batch():
            audit.append("run.cancelled", message=why, comment=comment, rollback=roll_back)
            store.update_run(run_id, message=why)
        if not roll_back:
            end_run(store, audit, run_id, RunStatus.CANCELLED)
            self._told_of_end(run, RunStatus.CANCELLED)
        switched: tuple[str, ...] = ()
        if run.status == RunStatus.INTERRUPTED and not roll_back:
            switched = tuple(
                f"{w.host}: {w.root} {w.from_version or '(none)'} → {w.to_version}"
                for w in details.switches
            )
        return Decision(why, roll_back, switched)

    def undo_plan(self, run_id: str | None, *, force: bool = False) -> UndoPlan:
        """What undoing a run (by default the newest that deployed a release) would put
        back where, from its verified record and the verified release history; refuses
        (exit 4) where the record cannot vouch, and (exit 3) a run that has not ended."""
        from .rollback import undo_plan

        if run_id is None:
            run_id = self._last_deploy()
        details = self.record.run(run_id, outputs=False)
        details.require_intact("rollback")
        run = details.run
        if run.status == RunStatus.REFUSED:
            raise Refused(f"run {run_id} was refused before it started: it changed nothing")
        if run.status not in RUN_ENDED:
            raise Refused(
                f"run {run_id} has not ended ({run.status}): `runbook-exec cancel {run_id} "
                "--rollback -m WHY` undoes what it changed and ends it"
            )
        releases = self.record.releases()
        if releases.flags:
            raise RecordAltered(f"rollback of run {run_id} refused: {releases.flags[0]}")
        return undo_plan(details, releases.switches, force=force)

    def prepare_rollback(self, undo: UndoPlan, *, for_run: bool = True) -> Prepared:
        """The run that puts back what `undo` says, on exactly its hosts, ready to start
        (`for_run`) or to show: the undone run's rollback steps (or a release switch back
        per root), in its batches, with the parameters it recorded (secrets read again
        from their environment variables). Refused while any host is."""
        from .rollback import prepare_undoing
        from .runner import new_run_id

        run = self.record.run(undo.run_id, outputs=False).run
        return prepare_undoing(run, undo, self.operator, new_run_id() if for_run else None)

    def rollback(
        self,
        undo: UndoPlan,
        prepared: Prepared,
        *,
        reason: str | None,
        options: RunOptions | None,
        view: ViewFactory,
        approver: Approver | None,
        become_password: str | None = None,
    ) -> Outcome:
        """Start the run `prepare_rollback` made: recorded as undoing `undo.run_id`, under
        the same change id, and resumable as any run. Without `options`, those the undone
        run recorded (its known_hosts, forks, timeouts)."""
        from .runner import recorded_options, start

        run = self.record.run(undo.run_id, outputs=False).run
        given = options or recorded_options(run, self.store)
        options = replace(given, become_password=become_password or given.become_password)
        return start(
            self.store,
            prepared,
            operator=self.operator,
            change_id=run.change_id,
            reason=reason or f"rollback of run {undo.run_id}",
            options=options,
            view=view,
            approver=approver,
            undoing=undo,
        )

    def _last_deploy(self) -> str:
        from .rollback import last_deploy

        switches = self.record.releases().switches.values()
        found = last_deploy(s for by_host in switches for s in by_host)
        if found is None:
            raise NotFound("no run on record has deployed a release: nothing to roll back")
        return found

    def handover(self, run_id: str) -> list[tuple[str, TickRecord | None]]:
        """A run's handover items (its runbook's `handover:`), each with its last tick."""
        from .report.facts import declared_items

        details = self.record.run(run_id, outputs=False)
        ticks = {t.item: t for t in details.ticks}
        return [(item, ticks.get(item)) for item in declared_items(details.run.runbook_text)]

    def tick(self, run_id: str, item: str, comment: str | None) -> str:
        """Tick one of a run's handover items (its text, or its number in `handover`);
        recorded as an event naming who, when and why. Returns the item."""
        details = self.record.run(run_id, outputs=False)
        details.require_intact("handover tick")
        items = [name for name, _ in self.handover(run_id)]
        if not items:
            raise InputError(
                Problem(f"run {run_id}'s runbook declares no `handover:` items", field="ITEM")
            )
        chosen = item
        if item not in items and item.isascii() and item.isdigit() and 1 <= int(item) <= len(items):
            chosen = items[int(item) - 1]
        if chosen not in items:
            listed = "; ".join(f"{n}. {name}" for n, name in enumerate(items, 1))
            raise InputError(Problem(f"{item!r} is not one of run {run_id}'s items: {listed}"))
        Auditor.for_recorded(self.store, details.run, self.operator).append(
            "handover.ticked", item=chosen, comment=comment
        )
        return chosen

    def unlock(self, name: str) -> LockHolder:
        """Force a lock open (for a holder known to be gone), with its event; returns who
        held it. The run it belonged to can still be resumed, and takes the lock again."""
        store = self.store
        store.require_key()
        with store.batch():  # the lock forced open and its event: both or neither
            holder = store.force_unlock(name)
            if holder is None:
                raise InputError(Problem(f"no lock named {name!r}"))
            try:
                run = self.record.run(holder.run_id, outputs=False).run
                Auditor.for_recorded(store, run, self.operator).append(
                    "lock.forced", lock=name, message=holder.describe()
                )
            except (RecordAltered, NotFound):  # a lock whose run is not on record: forced
                Auditor.outside_runs(store, self.operator).append(
                    "lock.forced",
                    lock=name,
                    message=f"{holder.describe()} (a run the audit trail does not record)",
                )
        return holder


def same_person(name: str) -> str:
    """A name as four eyes compares it: a token counts as the person it is named for, and
    case and spaces around do not make another person."""
    return name.removeprefix("token:").strip().casefold()


def _changed(details: RunDetails) -> set[str]:
    """The hosts a step of this run ran on (not skipped): those a rollback undoes."""
    return {
        step.host
        for step in details.steps
        if step.section == "steps" and step.status != "skipped"  # "running": perhaps changed
    }


def _on_failure(run: RunRecord) -> str | None:
    from .runbook import runbook_from_text

    if run.runbook_text is None:
        return None
    return runbook_from_text(run.runbook_text, run.runbook_path).runbook.on_failure
