"""The state store: runs, their hosts and host-steps, gates and locks, in SQLite or PostgreSQL.

The only code that touches the database. SQLAlchemy errors are turned into `StoreError` here;
the schema is created and upgraded by the Alembic migrations beside this file.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update

from .base import StoreBase, _decode, _encode, engine_url, first_line, gc_paused
from .chain import ChainStore
from .locks import LockHolder, LockStore
from .schema import (
    api_tokens,
    gates,
    host_steps,
    releases,
    run_hosts,
    runs,
    task_results,
    web_users,
)

__all__ = ["LockHolder", "Store", "StoreBase", "engine_url", "first_line", "gc_paused"]

# A host-step named by the parameters k_run, k_section, k_index and k_host, for statements
# executed once with many of them.
_HOST_STEP_KEY = (
    host_steps.c.run_id == bindparam("k_run"),
    host_steps.c.section == bindparam("k_section"),
    host_steps.c.step_index == bindparam("k_index"),
    host_steps.c.host == bindparam("k_host"),
)


class Store(ChainStore, LockStore):
    """One database: open it with `Store.open(url)`, which applies pending migrations."""

    # --- web users --------------------------------------------------------------------------

    def put_user(self, name: str, role: str, password_hash: str) -> None:
        """Add a web user, or change one's role and password."""
        with self._tx() as tx:
            tx.execute(delete(web_users).where(web_users.c.name == name))
            tx.execute(
                insert(web_users).values(
                    name=name, role=role, password_hash=password_hash, created_at=time.time()
                )
            )

    def remove_user(self, name: str) -> bool:
        with self._tx() as tx:
            return bool(tx.execute(delete(web_users).where(web_users.c.name == name)).rowcount)

    def users(self) -> list[dict[str, Any]]:
        return self._read(select(web_users).order_by(web_users.c.name))

    def user(self, name: str) -> dict[str, Any] | None:
        rows = self._read(select(web_users).where(web_users.c.name == name))
        return rows[0] if rows else None

    # --- API tokens (kept as SHA-256 digests) -----------------------------------------------

    def put_token(self, name: str, role: str, digest: str) -> None:
        with self._tx() as tx:
            tx.execute(delete(api_tokens).where(api_tokens.c.name == name))
            tx.execute(
                insert(api_tokens).values(
                    name=name, role=role, token_sha256=digest, created_at=time.time()
                )
            )

    def remove_token(self, name: str) -> bool:
        with self._tx() as tx:
            return bool(tx.execute(delete(api_tokens).where(api_tokens.c.name == name)).rowcount)

    def tokens(self) -> list[dict[str, Any]]:
        columns = (api_tokens.c.name, api_tokens.c.role, api_tokens.c.created_at)
        return self._read(select(*columns).order_by(api_tokens.c.name))

    def token(self, digest: str) -> dict[str, Any] | None:
        rows = self._read(select(api_tokens).where(api_tokens.c.token_sha256 == digest))
        return rows[0] if rows else None

    # --- runs -------------------------------------------------------------------------------

    def create_run(self, record: Mapping[str, Any], hosts: Sequence[tuple[str, int]]) -> None:
        with self._tx() as tx:
            tx.execute(insert(runs).values(**_encode(record)))
            if hosts:
                tx.execute(
                    insert(run_hosts),
                    [
                        {"run_id": record["id"], "host": h, "batch": b, "status": "pending"}
                        for h, b in hosts
                    ],
                )

    def update_run(self, run_id: str, **fields: Any) -> None:
        with self._tx() as tx:
            tx.execute(update(runs).where(runs.c.id == run_id).values(**_encode(fields)))

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._read(select(runs).where(runs.c.id == run_id))
        return _decode(rows[0]) if rows else None

    def runs_not_in(self, statuses: Collection[str]) -> list[str]:
        """The ids of the runs whose status (as the table has it) is none of `statuses`."""
        statement = select(runs.c.id).where(runs.c.status.not_in(list(statuses)))
        return [str(row["id"]) for row in self._read(statement)]

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        statement = select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
        return [_decode(row) for row in self._read(statement)]

    # --- hosts and host-steps ---------------------------------------------------------------

    def set_host_status(
        self, run_id: str, host: str, status: str, message: str | None = None
    ) -> None:
        with self._tx() as tx:
            tx.execute(
                update(run_hosts)
                .where(run_hosts.c.run_id == run_id, run_hosts.c.host == host)
                .values(status=status, message=message)
            )

    def hosts_of(self, run_id: str) -> list[dict[str, Any]]:
        return self._read(
            select(run_hosts).where(run_hosts.c.run_id == run_id).order_by(run_hosts.c.batch)
        )

    def steps_started(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record host-steps as running (replacing a record left running by a crash): one
        query for which exist, then one statement each for updates and inserts."""
        if not rows:
            return
        steps: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
        for row in rows:
            steps.setdefault((row["run_id"], row["section"], row["step_index"]), []).append(row)
        restart = (
            update(host_steps)
            .where(*_HOST_STEP_KEY)
            .values(status="running", started_at=bindparam("k_started"), attempts=0)
            .values(finished_at=None)
        )
        with self._tx() as tx:
            for (run_id, section, index), step_rows in steps.items():
                known = set(
                    tx.scalars(
                        select(host_steps.c.host).where(
                            host_steps.c.run_id == run_id,
                            host_steps.c.section == section,
                            host_steps.c.step_index == index,
                            host_steps.c.host.in_([r["host"] for r in step_rows]),
                        )
                    )
                )
                again = [
                    {
                        "k_run": run_id,
                        "k_section": section,
                        "k_index": index,
                        "k_host": r["host"],
                        "k_started": r["started_at"],
                    }
                    for r in step_rows
                    if r["host"] in known
                ]
                new = [
                    {"status": "running", "attempts": 0, **r}
                    for r in step_rows
                    if r["host"] not in known
                ]
                if again:
                    tx.execute(restart, again)
                if new:
                    tx.execute(insert(host_steps), new)

    def steps_finished(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record how host-steps ended: one statement for all of `rows` (executemany).
        Each row names its host-step with k_run, k_section, k_index and k_host."""
        if not rows:
            return
        statement = (
            update(host_steps)
            .where(*_HOST_STEP_KEY)
            .values({name: bindparam(name) for name in rows[0] if not name.startswith("k_")})
        )
        with self._tx() as tx:
            tx.execute(statement, list(rows))

    def host_steps_of(self, run_id: str) -> list[dict[str, Any]]:
        return self._read(
            select(host_steps)
            .where(host_steps.c.run_id == run_id)
            .order_by(host_steps.c.started_at, host_steps.c.id)
        )

    # --- gates ------------------------------------------------------------------------------

    def gates_of(self, run_id: str) -> dict[str, dict[str, Any]]:
        rows = self._read(select(gates).where(gates.c.run_id == run_id))
        return {row["gate_key"]: row for row in rows}

    def set_gate(self, run_id: str, key: str, **fields: Any) -> None:
        with self._tx() as tx:
            changed = tx.execute(
                update(gates)
                .where(gates.c.run_id == run_id, gates.c.gate_key == key)
                .values(**fields)
            ).rowcount
            if not changed:
                tx.execute(insert(gates).values(run_id=run_id, gate_key=key, **fields))

    def decide_gate(self, run_id: str, key: str, **fields: Any) -> bool:
        """Set a gate that is still waiting to a decision; False when it no longer waits
        (decided meanwhile, by another person or process): the caller refuses."""
        with self._tx() as tx:
            changed = tx.execute(
                update(gates)
                .where(gates.c.run_id == run_id, gates.c.gate_key == key)
                .where(gates.c.status == "waiting")
                .values(**fields)
            ).rowcount
        return bool(changed)

    def record_task(self, **row: Any) -> None:
        with self._tx() as tx:
            tx.execute(insert(task_results).values(at=time.time(), **row))

    def task_results_of(self, run_id: str) -> list[dict[str, Any]]:
        return self._read(
            select(task_results).where(task_results.c.run_id == run_id).order_by(task_results.c.id)
        )

    # --- releases ---------------------------------------------------------------------------

    def record_switch(self, **row: Any) -> None:
        """A release switch on a host: host, root, from_version, to_version, run_id, source."""
        with self._tx() as tx:
            tx.execute(insert(releases).values(at=time.time(), **row))

    def switches(self, host: str, root: str) -> list[dict[str, Any]]:
        """Every recorded switch of `root` on `host`, oldest first."""
        return self._read(
            select(releases)
            .where(releases.c.host == host, releases.c.root == root)
            .order_by(releases.c.id)
        )

    def switches_of_run(self, run_id: str) -> list[dict[str, Any]]:
        """The release switches a run made, in order."""
        return self._read(
            select(releases).where(releases.c.run_id == run_id).order_by(releases.c.id)
        )

    def all_switches(self) -> list[dict[str, Any]]:
        """Every release switch on record, in order."""
        return self._read(select(releases).order_by(releases.c.id))

    def live_releases(self, hosts: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The newest switch of every (host, root), optionally for some hosts only."""
        newest = (
            select(releases.c.host, releases.c.root, func.max(releases.c.id).label("id"))
            .group_by(releases.c.host, releases.c.root)
            .subquery()
        )
        statement = select(releases).join(newest, releases.c.id == newest.c.id)
        if hosts is not None:
            statement = statement.where(releases.c.host.in_(list(hosts)))
        return self._read(statement.order_by(releases.c.host, releases.c.root))
