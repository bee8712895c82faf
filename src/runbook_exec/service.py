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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError, NotFound, Problem, Refused
from .events import sinks_for
from .record import Flag, Record, RecordAltered, RunDetails
from .recorders import Auditor
from .store import LockHolder, Store
from .store.audit import operator_name

if TYPE_CHECKING:
    from .executor import Approver, RunOptions
    from .inventory import Host
    from .prepare import Prepared
    from .releases import LiveRelease
    from .runner import Outcome, ViewFactory
    from .transports.ansible import PlaybookOutcome


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

    def run(self, run_id: str, *, outputs: bool = True) -> RunDetails:
        """A run's every event folded: host-steps, gates, switches, with what failed
        verification flagged."""
        return self.record.run(run_id, outputs=outputs)

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
            options = SshOptions((known_hosts or default_known_hosts()).resolve())
            rows = asyncio.run(live.check(rows, hosts, options))
        return LiveReleases(rows, recorded.flags)

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
        steal_stale_lock: bool = False,
        on_note: Callable[[str], None] = lambda text: None,
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
            steal_stale_lock=steal_stale_lock,
            on_note=on_note,
        )

    def resume(
        self,
        run_id: str,
        *,
        view: ViewFactory,
        approver: Approver | None,
        steal_stale_lock: bool = False,
        on_note: Callable[[str], None] = lambda text: None,
    ) -> Outcome:
        """Carry on a run from its verified record; what finished is not run again."""
        from . import runner

        return runner.resume(
            self.store,
            run_id,
            operator=self.operator,
            options=None,
            view=view,
            approver=approver,
            steal_stale_lock=steal_stale_lock,
            on_note=on_note,
        )

    def decide(self, run_id: str, approved: bool, comment: str | None) -> str:
        """Record a decision on the gate a run waits at; returns the gate's message. Taken
        from the run's verified events: a gate the table alone says is waiting is not."""
        from .runner import auditor, end_run

        store = self.store
        store.require_key()
        details = self.record.run(run_id, outputs=False)
        details.require_intact("approving or rejecting")
        run = details.run
        waiting = [g for g in details.gates if g.status == "waiting" and g.kind == "approve"]
        if run.status != "awaiting_approval" or not waiting:
            raise Refused(f"run {run_id} is not waiting for approval (it is {run.status})")
        gate = waiting[0]
        decision = "approved" if approved else "rejected"
        audit = auditor(store, run, self.operator)
        with store.batch():  # the decision and what it changes: both or neither
            audit.append(
                f"gate.{decision}",
                gate={"key": gate.key, "kind": "approve", "message": gate.message},
                decided_by=self.operator,
                comment=comment,
            )
            store.set_gate(
                run_id,
                gate.key,
                kind="approve",
                message=gate.message,
                status=decision,
                decided_by=self.operator,
                comment=comment,
                decided_at=time.time(),
            )
            if approved:
                store.update_run(run_id, status="running")
        # Recorded: now the registered listeners (a notifier, metrics) hear of it too.
        sinks_for(run_id).gate(
            gate.key, "approve", str(gate.message), decision, self.operator, comment
        )
        if not approved:
            why = f"rejected by {self.operator}" + (f": {comment}" if comment else "")
            store.update_run(run_id, message=why)
            lock = run.lock or (store.get_run(run_id) or {})["lock_name"]
            end_run(store, audit, run_id, "rejected", lock)
        return str(gate.message)

    def unlock(self, name: str) -> LockHolder:
        """Force a lock open (for a holder known to be gone), with its event; returns who
        held it. The run it belonged to can still be resumed, and takes the lock again."""
        from .runner import auditor

        store = self.store
        store.require_key()
        with store.batch():  # the lock forced open and its event: both or neither
            holder = store.force_unlock(name)
            if holder is None:
                raise InputError(Problem(f"no lock named {name!r}"))
            try:
                run = self.record.run(holder.run_id, outputs=False).run
                auditor(store, run, self.operator).append(
                    "lock.forced", lock=name, message=holder.describe()
                )
            except (RecordAltered, NotFound):  # a lock whose run is not on record: forced
                Auditor.outside_runs(store, self.operator).append(
                    "lock.forced",
                    lock=name,
                    message=f"{holder.describe()} (a run the audit trail does not record)",
                )
        return holder


def check_mode(prepared: Prepared, options: RunOptions) -> list[tuple[str, PlaybookOutcome]]:
    """Run the plan's playbook and module steps in Ansible's check mode on every planned
    host: what they would change, changing nothing (and recording nothing). Steps before
    them have not run, so what they would have changed is not seen here."""
    from .steps import Scope
    from .transports.ansible import AnsibleSettings, run_playbook

    settings = AnsibleSettings(
        options.known_hosts,
        options.accept_new_host_keys,
        options.forks,
        options.timeout,
        prepared.params.secrets,
    )
    hosts = [h.name for h in prepared.hosts]

    async def all_steps() -> list[tuple[str, PlaybookOutcome]]:
        results = []
        for planned in prepared.plan.steps:
            steps = [r.step for r in planned.hosts.values() if r.step is not None]
            if not steps or steps[0].scope is not Scope.HOSTS:
                continue
            playbook, call = steps[0].ansible_call(prepared.runbook_file.workspace)
            call["check"] = True
            outcome = await run_playbook(playbook, prepared.inventory, hosts, settings, **call)
            results.append((planned.name, outcome))
        return results

    return asyncio.run(all_steps())
