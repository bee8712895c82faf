"""Locks in the store: one per host a run may touch (`host:NAME`) and one per runbook
`lock:` name (`name:NAME`), taken all or none in one transaction, held until the run ends.
Who holds what, as the table says; the record vouches for a holder before any decision."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

from ..processes import alive
from .base import CHAIN_LOCK, StoreBase, _serialize
from .schema import locks, runs

_CHUNK = 500  # names per IN (...): far below every backend's limit on bound parameters
PARKED = 0  # the pid of locks whose run stopped without ending: held by no process


@dataclass(frozen=True)
class LockHolder:
    """A run holding some locks: which (among those asked about), its process and its run's
    status."""

    run_id: str
    names: tuple[str, ...]
    operator: str
    machine: str
    pid: int
    since: float
    run_status: str | None

    @property
    def gone(self) -> bool:
        """No process holds these locks now: the run stopped and parked them (pid 0), or its
        process is provably gone (on this machine, and not running). A process on another
        machine is never presumed gone (its pid cannot be checked from here)."""
        return process_gone(self.machine, self.pid)

    @property
    def hosts(self) -> list[str]:
        return [name.removeprefix("host:") for name in self.names if name.startswith("host:")]

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        status = self.run_status or "not on record"
        return (
            f"run {self.run_id} ({self.operator}, {status}; pid {self.pid} on {self.machine} "
            f"since {since}) holds {describe_locks(self.names)}"
        )


def describe_locks(names: Sequence[str], most: int = 8) -> str:
    """`host h0, h1 and lock 'db'`, long host lists cut short with their count."""
    hosts = [n.removeprefix("host:") for n in names if n.startswith("host:")]
    named = [n.removeprefix("name:") for n in names if n.startswith("name:")]
    other = [n for n in names if not n.startswith(("host:", "name:"))]
    parts = []
    if hosts:
        shown = ", ".join(hosts[:most]) + (f" … ({len(hosts)} hosts)" if len(hosts) > most else "")
        parts.append(f"host{'s' if len(hosts) > 1 else ''} {shown}")
    parts += [f"lock {name!r}" for name in named + other]
    return " and ".join(parts) if parts else "no lock"


class LockStore(StoreBase):
    """The locks' part of the store."""

    def take_locks(
        self,
        names: Collection[str],
        run_id: str,
        operator: str,
        then: Callable[[], object] | None = None,
    ) -> list[LockHolder]:
        """Take every lock in `names` for `run_id`, in one transaction: those it holds
        already (a resumed run) now name this process. Returns [] when all were taken;
        otherwise the other runs holding some of them, and nothing changed. `then` (the
        lock's audit event) is written in the same transaction: no reader ever sees a lock
        row its run's events do not vouch for. Lock takers and chain appenders take turns
        (PostgreSQL; SQLite's writers always do)."""
        mine = {
            "run_id": run_id,
            "operator": operator,
            "machine": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.time(),
        }
        wanted = sorted(set(names))
        with self.batch():
            with self._tx() as tx:
                _serialize(tx, CHAIN_LOCK)
                rows = [r for chunk in _chunks(wanted) for r in _rows(tx, chunk)]
                # Another run's, or this run's held by another process that may be alive
                # (a second `resume` of it): in the way.
                others = [r for r in rows if r["run_id"] != run_id or _busy(r)]
                if others:
                    return _holders(others)
                own = {r["name"] for r in rows}
                if own:
                    tx.execute(
                        update(locks)
                        .where(locks.c.run_id == run_id, locks.c.name.in_(sorted(own)))
                        .values(**mine)
                    )
                new = [{"name": name, **mine} for name in wanted if name not in own]
                if new:
                    tx.execute(insert(locks), new)
            if then is not None:
                then()
        return []

    def lock_holders(
        self, names: Collection[str] | None = None, *, run_id: str | None = None
    ) -> list[LockHolder]:
        """Who holds the locks in `names` (or every lock of `run_id`, or every lock)."""
        query = select(locks, runs.c.status).join(runs, runs.c.id == locks.c.run_id, isouter=True)
        if run_id is not None:
            return _holders(self._read(query.where(locks.c.run_id == run_id)))
        if names is None:
            return _holders(self._read(query))
        rows = []
        for chunk in _chunks(sorted(set(names))):
            rows += self._read(query.where(locks.c.name.in_(chunk)))
        return _holders(rows)

    def park_locks(self, run_id: str) -> None:
        """The run stopped without ending (a gate, Ctrl-C, found dead): it keeps its locks,
        held by no process, until it is resumed or ended."""
        with self._tx() as tx:
            tx.execute(update(locks).where(locks.c.run_id == run_id).values(pid=PARKED))

    def release_locks(self, run_id: str) -> None:
        """Every lock `run_id` holds (it has ended)."""
        with self._tx() as tx:
            tx.execute(locks.delete().where(locks.c.run_id == run_id))

    def clear_locks(self, run_id: str, names: Collection[str]) -> None:
        """The locks in `names` that `run_id` still holds (left by a run that has ended)."""
        with self._tx() as tx:
            for chunk in _chunks(sorted(set(names))):
                tx.execute(locks.delete().where(locks.c.run_id == run_id, locks.c.name.in_(chunk)))

    def force_unlock(self, name: str) -> LockHolder | None:
        """Remove lock `name` whoever holds it; returns who did."""
        held = self.lock_holders([name])
        if held:
            with self._tx() as tx:
                tx.execute(locks.delete().where(locks.c.name == name))
        return held[0] if held else None


def process_gone(machine: str, pid: int) -> bool:
    """No process holds locks named (machine, pid): they are parked (pid 0), or the process
    is provably gone (on this machine, and not running). One on another machine is never
    presumed gone: its pid cannot be checked from here."""
    return pid == PARKED or (machine == socket.gethostname() and not alive(pid))


def _busy(row: dict[str, Any]) -> bool:
    """A lock row held by a process other than this one that may still run."""
    mine = row["machine"] == socket.gethostname() and row["pid"] == os.getpid()
    return not mine and not process_gone(row["machine"], row["pid"])


def _chunks(names: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(names), _CHUNK):
        yield list(names[start : start + _CHUNK])


def _rows(tx: Any, names: list[str]) -> list[dict[str, Any]]:
    query = (
        select(locks, runs.c.status)
        .join(runs, runs.c.id == locks.c.run_id, isouter=True)
        .where(locks.c.name.in_(names))
    )
    return [dict(row) for row in tx.execute(query).mappings()]


def _holders(rows: Sequence[dict[str, Any]]) -> list[LockHolder]:
    """Rows grouped by run, in the order the runs first appear."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["run_id"], []).append(row)
    holders = []
    for run_id, held in by_run.items():
        first = held[0]
        holders.append(
            LockHolder(
                run_id,
                tuple(sorted(r["name"] for r in held)),
                first["operator"],
                first["machine"],
                first["pid"],
                first["since"],
                first["status"],
            )
        )
    return holders
