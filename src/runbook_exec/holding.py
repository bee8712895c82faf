"""A run's hold on its hosts: taking its locks, all or none, with every holder in the way
taken from the record; and whether a run's process may still be carrying it out."""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from typing import NoReturn

from .errors import LockHeld, Refused
from .events import RUN_ENDED, RunStatus
from .record import Record, RecordAltered, RunRecord
from .recorders import Auditor
from .store import LockHolder, Store
from .store.locks import PARKED, process_gone

ENDED_OR_REFUSED = RUN_ENDED | {RunStatus.REFUSED}


def take_locks(
    store: Store, record: Record, run: RunRecord, operator: str, *, resuming: bool
) -> None:
    """Take every lock of the run (each host's, its `lock:` name's), all or none. Another
    run in the way refuses this one (exit 3), naming it, its operator, its status and what
    they share; it keeps its hosts until it ends, however long it waits. Only two holders
    are dealt with here: one whose run has ended left its locks behind (they are cleared),
    and one whose run says running while its process is provably gone, which becomes
    interrupted (resumable) and keeps its hosts. Every holder is taken from the record: a
    lock row its run's events do not vouch for refuses (exit 4). A refused resume leaves
    its run as it was; a refused new run is recorded as refused."""
    audit = Auditor.for_recorded(store, run, operator)
    names = list(run.locks)

    def refuse(error: Refused | RecordAltered) -> NoReturn:
        if not resuming:
            with store.batch():
                audit.append("lock.refused", locks=names, message=str(error))
                store.update_run(
                    run.id, status="refused", message=str(error), finished_at=time.time()
                )
        raise error

    def taken() -> None:
        """In the transaction that takes the locks: the run has not ended meanwhile (a
        `cancel` while this resume was being prepared); no run that has not ended holds
        one of them by its record while the lock table says nothing (rows deleted by
        hand); and the locks' event."""
        now = record.run(run.id, outputs=False).run
        if now.status in RUN_ENDED or now.status == RunStatus.REFUSED:
            raise Refused(f"run {run.id} has ended meanwhile ({now.status}); nothing was run")
        for other in store.runs_not_in(ENDED_OR_REFUSED):
            if other == run.id:
                continue
            theirs = record.run(other, outputs=False).holding(ENDED_OR_REFUSED) & set(names)
            if theirs:
                raise RecordAltered(
                    f"record altered: run {other} holds {', '.join(sorted(theirs))} by its "
                    "events, but the lock table does not say so (rows deleted by hand?); "
                    "nothing was done"
                )
        audit.append("lock.taken", lock=run.lock, locks=names)

    for _ in range(5):
        try:
            held = store.take_locks(names, run.id, operator, then=taken)
        except RecordAltered as exc:
            refuse(exc)
        if not held:
            return
        holders, flags = record.lock_holders(held)
        if flags:
            refuse(RecordAltered(f"taking the run's locks refused: {flags[0]}; nothing was done"))
        for holder in holders:
            if holder.run_id == run.id:  # a second `resume` of it, say
                raise Refused(
                    f"run {run.id} is being carried out by another process (pid {holder.pid} "
                    f"on {holder.machine}); wait for it, or stop it first"
                )
        ended = [h for h in holders if h.run_status in RUN_ENDED or h.run_status == "refused"]
        if not ended:
            break
        with store.batch():  # locks left by runs that have ended: cleared, on record
            for holder in ended:
                store.clear_locks(holder.run_id, holder.names)
                audit.append(
                    "lock.cleared",
                    locks=list(holder.names),
                    message=f"left by run {holder.run_id}, which has ended ({holder.run_status})",
                )
    waiting = []
    for holder in holders:
        active = holder.run_status in (RunStatus.RUNNING, RunStatus.PENDING)
        if active and holder.pid != PARKED and holder.gone:
            holder = _interrupt(store, record, holder, operator, run.id)
        waiting.append(f"{holder.describe()}: {_what_to_do(holder)}")
    refuse(LockHeld(f"another run holds what this run needs: {'; '.join(waiting)}", holders))


def _interrupt(
    store: Store, record: Record, holder: LockHolder, operator: str, found_by: str
) -> LockHolder:
    """The run of a holder whose process is gone, recorded as interrupted: resumable, and
    still holding its hosts."""
    why = f"its process (pid {holder.pid} on {holder.machine}) is gone; found by run {found_by}"
    run = record.run(holder.run_id, outputs=False).run
    with store.batch():
        Auditor.for_recorded(store, run, operator).append(
            "run.stopped", status="interrupted", message=why
        )
        store.update_run(run.id, status="interrupted", message=why)
        store.park_locks(run.id)
    return replace(holder, run_status=RunStatus.INTERRUPTED)


def _what_to_do(holder: LockHolder) -> str:
    run = holder.run_id
    cancel = f"`runbook-exec cancel {run} -m WHY`"
    if holder.run_status == RunStatus.AWAITING_APPROVAL:
        return f"it waits for approval: `runbook-exec approve {run}` (or reject), or {cancel}"
    if holder.run_status == RunStatus.INTERRUPTED:
        return f"it was interrupted: `runbook-exec resume {run}`, or {cancel}"
    if holder.pid == PARKED:
        return f"it is to be carried on: `runbook-exec resume {run}`, or {cancel}"
    if holder.gone is False and holder.machine != socket.gethostname():
        return "it runs on another machine: wait for it to end"
    return "wait for it to end"


def still_running(store: Store, record: Record, run: RunRecord) -> None:
    """Refuse (exit 3) to act on a run whose process may still be carrying it out: a
    process holding its locks is alive on this machine (running, or asking a person at a
    gate), or the run says running and that process is on another machine."""
    active = run.status in (RunStatus.RUNNING, RunStatus.PENDING)
    holders, _ = record.lock_holders(store.lock_holders(run_id=run.id))
    # The record's word too: lock rows deleted by hand must not hide a live process.
    locks = record.run(run.id, outputs=False).locks if active else []
    said = [(lock.machine, lock.pid) for lock in locks[-1:] if lock.pid is not None]
    for machine, pid in [(h.machine, h.pid) for h in holders] + said:
        if not process_gone(machine, pid) and (active or machine == socket.gethostname()):
            raise Refused(
                f"run {run.id} is still running (pid {pid} on {machine}); "
                "stop it first (Ctrl-C, or kill that process), or wait for it"
            )
