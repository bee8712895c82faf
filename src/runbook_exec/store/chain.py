"""The audit chain as the store writes it: appending events (hashed, keyed, one writer at a
time), the key each event is checked with, reading ranges of the chain, and pruning output
provably. Verifying it is `store.audit`'s."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from ..errors import StoreError
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
from .base import CHAIN_LOCK, StoreBase, _serialize
from .keys import AuditKeyError, key_id
from .schema import audit_events, host_steps, task_results


class ChainStore(StoreBase):
    """The audit chain's part of the store."""

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

    def payloads_at(self, seqs: Sequence[int]) -> dict[int, str | None]:
        """The payload column of these events, by seq (None: pruned, or removed)."""
        if not seqs:
            return {}
        rows = self._read(
            select(audit_events.c.seq, audit_events.c.payload).where(
                audit_events.c.seq.in_(list(seqs))
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

    def newest_request(self, count: int) -> int | None:
        """The seq of the oldest of the newest `count` runs' requests, as the chain has them
        (a run whose table row was deleted is among them)."""
        newest = (
            select(audit_events.c.seq)
            .where(audit_events.c.type == "run.requested")
            .order_by(audit_events.c.seq.desc())
            .limit(count)
            .subquery()
        )
        rows = self._read(select(func.min(newest.c.seq).label("seq")))
        return int(rows[0]["seq"]) if rows and rows[0]["seq"] is not None else None

    def events_of(self, kinds: Sequence[str]) -> list[dict[str, Any]]:
        """The events of these types (seq and body), oldest first."""
        query = select(audit_events.c.seq, audit_events.c.body).where(
            audit_events.c.type.in_(list(kinds))
        )
        return self._read(query.order_by(audit_events.c.seq))

    def event_holds(self, seq: int) -> bool:
        """Whether event `seq` is what its hash says, linked to the one before it, with the
        key in force there: written by runbook-exec, not by hand."""
        from .audit import verify

        start, _ = self.chain_start(seq)
        rows = self.audit_range(seq, until=seq)
        return bool(rows) and verify(rows, self.keys, start).finding is None

    def head_seq(self) -> int:
        """The seq of the chain's newest event (0: none)."""
        rows = self._read(select(func.max(audit_events.c.seq).label("seq")))
        return int(rows[0]["seq"] or 0) if rows else 0

    def audit_events(self) -> list[dict[str, Any]]:
        """The whole chain in order. Built from rows as tuples (at 100,000 events SQLAlchemy's
        row mappings would cost as much as verifying them), with the cyclic garbage
        collector paused: the rows hold only strings and numbers, so it could find nothing,
        yet its passes over 100,000 new dicts made the read 1.5 to 3 times slower."""
        return self._read(select(audit_events).order_by(audit_events.c.seq))

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
