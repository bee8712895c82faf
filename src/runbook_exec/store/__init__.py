"""The state store: runs, their hosts and host-steps, gates and locks, in SQLite or PostgreSQL.

The only code that touches the database. SQLAlchemy errors are turned into `StoreError` here;
the schema is created and upgraded by the Alembic migrations beside this file.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..errors import LockHeld, StoreError
from ..events import RUN_ENDED
from ..processes import alive
from .audit import (
    COLUMNS,
    GENESIS,
    KEYED,
    ROTATED,
    Start,
    actor,
    canonical,
    chain_hash,
    detach,
    utc_now,
)
from .keys import AuditKeyError, KeyRing, key_id
from .schema import audit_events, gates, host_steps, locks, releases, run_hosts, runs, task_results

# A host-step named by the parameters k_run, k_section, k_index and k_host, for statements
# executed once with many of them.
_HOST_STEP_KEY = (
    host_steps.c.run_id == bindparam("k_run"),
    host_steps.c.section == bindparam("k_section"),
    host_steps.c.step_index == bindparam("k_index"),
    host_steps.c.host == bindparam("k_host"),
)

MIGRATIONS = Path(__file__).parent / "migrations"


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


class Store:
    """One database: open it with `Store.open(url)`, which applies pending migrations."""

    def __init__(self, engine: Engine, keys: KeyRing | None = None) -> None:
        self.engine = engine
        self.keys = keys if keys is not None else KeyRing.load()
        self._local = threading.local()

    @classmethod
    def open(cls, url: str, keys: KeyRing | None = None) -> Store:
        url = engine_url(url)
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            path = Path(url.removeprefix("sqlite:///"))
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {path.parent}: {exc.strerror}") from None
        try:
            engine = create_engine(url, future=True, pool_pre_ping=url.startswith("postgresql"))
        except ImportError:
            raise StoreError(
                f"cannot open the state store {_safe_url(url)}: PostgreSQL needs the psycopg "
                "driver (pip install 'runbook-exec[postgres]')"
            ) from None
        except (SQLAlchemyError, ValueError) as exc:
            raise StoreError(f"cannot open the state store {_safe_url(url)}: {exc}") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
            # Take the write lock when a transaction begins: in WAL mode a transaction that
            # read first and then writes fails at once if another writer got in between.
            event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        store = cls(engine, keys)
        store.migrate()
        return store

    def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic is loaded only if needed)."""
        if self._schema_is_current():
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                # Two processes opening a new PostgreSQL database at once: one migrates, the
                # other waits here and then finds the schema current (SQLite's BEGIN
                # IMMEDIATE already serializes them).
                _serialize(connection, MIGRATION_LOCK)
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot prepare the state store: {first_line(exc)}") from None

    def _schema_is_current(self) -> bool:
        heads = {p.stem.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*.py")}
        newest = max(heads) if heads else None
        try:
            connection = self.engine.connect()
        except SQLAlchemyError as exc:
            where = _safe_url(self.engine.url.render_as_string(hide_password=False))
            raise StoreError(f"cannot reach the state store {where}: {first_line(exc)}") from None
        with connection:
            try:
                version = connection.exec_driver_sql(
                    "SELECT version_num FROM alembic_version"
                ).scalar()
            except SQLAlchemyError:
                return False  # a new database: no schema yet
        return version is not None and version == newest

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write in this block (in this thread) commits together, or not at all."""
        with self._tx() as connection:
            self._local.connection = connection
            try:
                yield
            finally:
                self._local.connection = None

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        shared = getattr(self._local, "connection", None)
        if shared is not None:
            yield shared
            return
        try:
            with self.engine.begin() as connection:
                yield connection
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"the state store could not be written: {first_line(exc)}") from None

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

    def record_task(self, **row: Any) -> None:
        with self._tx() as tx:
            tx.execute(insert(task_results).values(at=time.time(), **row))

    def task_results_of(self, run_id: str) -> list[dict[str, Any]]:
        return self._read(
            select(task_results).where(task_results.c.run_id == run_id).order_by(task_results.c.id)
        )

    # --- the audit chain ----------------------------------------------------------------------

    def append_audit(self, event: Mapping[str, Any]) -> int:
        """Append one event to the chain (in the current batch, if any); returns its seq."""
        return self.append_audits([event])[-1]

    def append_audits(self, events: Sequence[Mapping[str, Any]]) -> list[int]:
        """Append events to the chain in order, reading its head once and inserting them in
        one statement (in the current batch, if any); returns their seqs. Hashed with the
        key the chain names; a new chain first records which key that is."""
        for _ in range(100):
            try:
                with self._tx() as tx:
                    _serialize(tx, CHAIN_LOCK)
                    head = tx.execute(
                        select(audit_events.c.seq, audit_events.c.hash)
                        .order_by(audit_events.c.seq.desc())
                        .limit(1)
                    ).first()
                    seq = head.seq if head else 0
                    prev = head.hash if head else GENESIS
                    key, _ = self._append_key(tx)
                    if head is None and events:
                        events = [self._keyed_event(events[0], key), *events]
                    rows: list[dict[str, Any]] = []
                    for event in events:
                        seq += 1
                        body, payload = detach({**event, "seq": seq})
                        text = canonical(body)
                        digest = chain_hash(prev, text, key)
                        rows.append(
                            {
                                "seq": seq,
                                **{column: body.get(column) for column in COLUMNS},
                                "body": text,
                                "payload": payload,
                                "prev_hash": prev,
                                "hash": digest,
                            }
                        )
                        prev = digest
                        if event.get("type") == ROTATED:
                            key = self._key_named(str(event["key_id"]))
                    if rows:
                        tx.execute(insert(audit_events), rows)
                return [int(row["seq"]) for row in rows]
            except IntegrityError:
                if getattr(self._local, "connection", None) is not None:
                    raise  # inside a batch: the whole batch fails, and says so
                time.sleep(0.005)  # another writer took this seq: go again on the new head
        raise StoreError("could not append to the audit trail: it kept moving under us")

    def require_key(self) -> str | None:
        """Make sure this process can append to the chain with the key it needs; returns
        that key's id (None for an old SHA-256 chain). Raises `AuditKeyError` (exit 4)."""
        with self._tx() as tx:
            return self._append_key(tx)[1]

    def _append_key(self, tx: Connection) -> tuple[bytes | None, str | None]:
        cached = getattr(self._local, "append_key", None)
        newest = self._newest_key_event(tx)
        if cached is not None and cached[0] == newest:
            return cached[1], cached[2]
        if newest is None:
            first = self._first_event(tx)
            key = self._new_chain_key() if first is None else self._old_chain_key(first)
        else:
            key = self._key_named(str(json.loads(newest[1])["key_id"]))
        found = (key, key_id(key) if key else None)
        self._local.append_key = (newest, *found)
        return found

    def _newest_key_event(
        self, tx: Connection, before: int | None = None
    ) -> tuple[int, str] | None:
        """The newest event that names the key of the events after it (before seq
        `before`, if given): its seq and body."""
        statement = select(audit_events.c.seq, audit_events.c.body).where(
            audit_events.c.type.in_([KEYED, ROTATED])
        )
        if before is not None:
            statement = statement.where(audit_events.c.seq < before)
        row = tx.execute(statement.order_by(audit_events.c.seq.desc()).limit(1)).first()
        return (int(row.seq), str(row.body)) if row else None

    def _first_event(self, tx: Connection) -> Any:
        """The chain's first event (its body and hash), or None for an empty chain."""
        return tx.execute(
            select(audit_events.c.body, audit_events.c.hash).where(audit_events.c.seq == 1)
        ).first()

    def _key_named(self, wanted: str) -> bytes:
        key = self.keys.get(wanted)
        if key is None:
            raise AuditKeyError(
                f"this store's audit trail is hashed with audit key {wanted}, which is not in "
                f"{self.keys.where()}; nothing was done"
            )
        return key

    def _new_chain_key(self) -> bytes:
        if self.keys.given:
            return self.keys.given
        if self.engine.dialect.name != "sqlite":
            raise AuditKeyError(
                "a new shared (PostgreSQL) store needs an audit key that every machine of the "
                "team uses: set RUNBOOK_EXEC_AUDIT_KEY_FILE (or RUNBOOK_EXEC_AUDIT_KEY); "
                "nothing was done"
            )
        return self.keys.newest_in_folder() or self.keys.make_key()

    def _old_chain_key(self, first: Any) -> bytes | None:
        """A chain begun before keys had ids: the given key if it hashed the first event,
        no key if none did (it goes on unkeyed), else refuse."""
        if self.keys.given and chain_hash(GENESIS, first.body, self.keys.given) == first.hash:
            return self.keys.given
        if chain_hash(GENESIS, first.body, None) == first.hash:
            return None
        raise AuditKeyError(
            "this store's audit trail is hashed with an audit key, and "
            + ("not the one given" if self.keys.given else "none is given")
            + " (RUNBOOK_EXEC_AUDIT_KEY or RUNBOOK_EXEC_AUDIT_KEY_FILE); nothing was done"
        )

    def _keyed_event(self, first: Mapping[str, Any], key: bytes | None) -> dict[str, Any]:
        operator = str(first.get("operator") or "")
        return {
            "at": utc_now(),
            "type": KEYED,
            "run_id": None,
            "host": None,
            "operator": operator,
            "change_id": None,
            "actor": actor(operator),
            "key_id": key_id(key) if key else None,
        }

    def chain_start(self, seq: int) -> tuple[Start, dict[str, Any] | None]:
        """Where a walk from event `seq` starts (the hash before it, the key in force), and
        the event before it, whose own hash the caller checks."""
        with self._tx() as tx:
            before = tx.execute(select(audit_events).where(audit_events.c.seq == seq - 1)).first()
            keyed = self._newest_key_event(tx, before=seq)
            first = self._first_event(tx)
        wanted = str(json.loads(keyed[1]).get("key_id")) if keyed else None
        if wanted:
            key = self.keys.get(wanted)
        elif first is not None and seq > 1:
            try:
                key = self._old_chain_key(first)
            except AuditKeyError:
                key = self.keys.given
        else:
            key = None
        prev = str(before.hash) if before is not None else GENESIS
        start = Start(seq, prev, key, wanted or (key_id(key) if key else None))
        return start, dict(before._mapping) if before is not None else None

    def audit_range(
        self, first_seq: int, *, payloads: bool = False, until: int | None = None
    ) -> list[dict[str, Any]]:
        """Events from `first_seq` on (to `until`, inclusive), in order; with `payloads`,
        their payload column too."""
        columns = [c for c in audit_events.c if payloads or c.name != "payload"]
        statement = select(*columns).where(audit_events.c.seq >= first_seq)
        if until is not None:
            statement = statement.where(audit_events.c.seq <= until)
        return self._read(statement.order_by(audit_events.c.seq))

    def payloads_of(self, run_id: str) -> dict[int, str | None]:
        """The payload column of a run's events, by seq (None: pruned, or removed)."""
        rows = self._read(
            select(audit_events.c.seq, audit_events.c.payload).where(
                audit_events.c.run_id == run_id
            )
        )
        return {int(r["seq"]): r["payload"] for r in rows}

    def first_event_of(self, run_ids: Sequence[str]) -> int | None:
        """The seq of the oldest event of any of these runs."""
        rows = self._read(
            select(func.min(audit_events.c.seq).label("seq")).where(
                audit_events.c.run_id.in_(list(run_ids))
            )
        )
        return int(rows[0]["seq"]) if rows and rows[0]["seq"] is not None else None

    def audit_events(self) -> list[dict[str, Any]]:
        """The whole chain in order. Built from rows as tuples (at 100,000 events SQLAlchemy's
        row mappings would cost as much as verifying them), with the cyclic garbage
        collector paused: the rows hold only strings and numbers, so it could find nothing,
        yet its passes over 100,000 new dicts made the read 1.5 to 3 times slower."""
        return self._read(select(audit_events).order_by(audit_events.c.seq))

    def _read(self, statement: Any) -> list[dict[str, Any]]:
        """The rows of a SELECT as dicts; inside a batch, on the batch's own connection
        (which sees its writes)."""
        shared = getattr(self._local, "connection", None)
        if shared is not None:
            result = shared.execute(statement)
            names = list(result.keys())
            return [dict(zip(names, row, strict=True)) for row in result]
        try:
            with gc_paused(), self.engine.connect() as connection:
                result = connection.execute(statement)
                names = list(result.keys())
                return [dict(zip(names, row, strict=True)) for row in result]
        except SQLAlchemyError as exc:
            raise StoreError(f"the state store could not be read: {first_line(exc)}") from None

    def prune_output(
        self, before_iso: str, before_epoch: float, *, dry_run: bool
    ) -> dict[str, int]:
        """Remove output bodies older than the cut-off: audit payloads (their digests stay in
        the hashed bodies), host-steps' stdout/stderr (their size and SHA-256 stay) and
        Ansible task results. Returns how many of each (would have) changed."""
        targets = {
            "events": (
                audit_events,
                (audit_events.c.at < before_iso) & audit_events.c.payload.is_not(None),
                {"payload": None},
            ),
            "host_steps": (
                host_steps,
                (host_steps.c.finished_at < before_epoch)
                & (host_steps.c.stdout.is_not(None) | host_steps.c.stderr.is_not(None)),
                {"stdout": None, "stderr": None},
            ),
            "task_results": (
                task_results,
                (task_results.c.at < before_epoch) & task_results.c.result.is_not(None),
                {"result": None},
            ),
        }
        counts: dict[str, int] = {}
        with self._tx() as tx:
            for name, (table, where, cleared) in targets.items():
                if dry_run:
                    counts[name] = int(
                        tx.execute(
                            select(func.count()).select_from(table).where(where)
                        ).scalar_one()
                    )
                else:
                    counts[name] = tx.execute(update(table).where(where).values(cleared)).rowcount
        return counts

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


# PostgreSQL advisory lock keys (any two fixed 64-bit numbers of our own).
CHAIN_LOCK = 0x7262_7861_7564_6974  # "rbxaudit": one appender at a time, so one chain
MIGRATION_LOCK = 0x7262_786D_6967_7261  # "rbxmigra"


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a block that makes many acyclic objects (rows,
    decoded events): its passes over them find nothing and cost as much as the work."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _serialize(connection: Connection, key: int) -> None:
    """On PostgreSQL, hold `key` until this transaction ends: writers take turns, as SQLite's
    BEGIN IMMEDIATE makes them. Without it two runs could read the same chain head, and
    one of them would lose a whole group commit to the primary key."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({key})")


def engine_url(url: str) -> str:
    """SQLAlchemy's URL for ours: `postgresql://` and `postgres://` use psycopg (3)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


_JSON_FIELDS = ("params", "secret_names", "inventory", "plan", "options")


def _encode(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: json.dumps(value, sort_keys=True) if key in _JSON_FIELDS else value
        for key, value in record.items()
    }


def _decode(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: json.loads(value) if key in _JSON_FIELDS and value is not None else value
        for key, value in row.items()
    }


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    connection.isolation_level = None  # transactions begin with BEGIN IMMEDIATE (see open)
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def first_line(exc: BaseException) -> str:
    """The database's own message, without the SQL and parameters SQLAlchemy adds."""
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url
