"""Locks in the store: who holds one, taking it (or a stale one over), releasing and
forcing it open."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from ..errors import LockHeld
from ..events import RUN_ENDED
from ..processes import alive
from .base import StoreBase
from .schema import locks, runs


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, and whether that holder is known to be gone."""

    name: str
    run_id: str
    operator: str
    machine: str
    pid: int
    since: float
    run_status: str | None

    @property
    def stale(self) -> bool:
        """The holding process is known to be gone: on this machine and not running, or its
        run has ended. A holder on another machine is never presumed dead."""
        if self.run_status in RUN_ENDED:
            return True
        return self.machine == socket.gethostname() and not alive(self.pid)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        state = f", run {self.run_status}" if self.run_status else ""
        stale = "; the holder is gone (stale)" if self.stale else ""
        return (
            f"lock '{self.name}' is held by run {self.run_id} ({self.operator} on "
            f"{self.machine}, pid {self.pid}, since {since}{state}){stale}"
        )


class LockStore(StoreBase):
    """The locks' part of the store."""

    # --- locks ------------------------------------------------------------------------------

    def acquire_lock(
        self,
        name: str,
        run_id: str,
        operator: str,
        *,
        steal_stale: bool = False,
        holder_of: Callable[[str], LockHolder | None] | None = None,
    ) -> LockHolder | None:
        """Take `name` for `run_id`. Returns the stale holder it replaced, if any; raises
        `LockHeld` when someone else holds it. `holder_of` says who holds a lock (by
        default the lock table; the record's verified answer for a decision)."""
        holder_of = holder_of or self.lock_holder
        mine = {
            "run_id": run_id,
            "operator": operator,
            "machine": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.time(),
        }
        try:
            with self._tx() as tx:
                tx.execute(insert(locks).values(name=name, **mine))
            return None
        except IntegrityError:
            pass
        holder = holder_of(name)
        if holder is None:
            return self.acquire_lock(
                name, run_id, operator, steal_stale=steal_stale, holder_of=holder_of
            )
        if holder.run_id != run_id and not (steal_stale and holder.stale):
            raise LockHeld(holder.describe(), holder)
        with self._tx() as tx:
            taken = tx.execute(
                update(locks)
                .where(
                    locks.c.name == name, locks.c.run_id == holder.run_id, locks.c.pid == holder.pid
                )
                .values(**mine)
            ).rowcount
        if not taken:
            return self.acquire_lock(
                name, run_id, operator, steal_stale=steal_stale, holder_of=holder_of
            )
        return holder if holder.run_id != run_id else None

    def lock_holder(self, name: str) -> LockHolder | None:
        rows = self._read(
            select(locks, runs.c.status)
            .join(runs, runs.c.id == locks.c.run_id, isouter=True)
            .where(locks.c.name == name)
        )
        if not rows:
            return None
        row = rows[0]
        return LockHolder(
            row["name"],
            row["run_id"],
            row["operator"],
            row["machine"],
            row["pid"],
            row["since"],
            row["status"],
        )

    def release_lock(self, name: str, run_id: str) -> None:
        with self._tx() as tx:
            tx.execute(locks.delete().where(locks.c.name == name, locks.c.run_id == run_id))

    def force_unlock(self, name: str) -> LockHolder | None:
        holder = self.lock_holder(name)
        if holder is not None:
            with self._tx() as tx:
                tx.execute(locks.delete().where(locks.c.name == name))
        return holder
