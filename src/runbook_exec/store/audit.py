"""The audit chain: every event hashed together with the hash of the one before it.

An event's hash is HMAC-SHA256(key, prev_hash + "\\n" + body) when an audit key is set, and
SHA-256(prev_hash + "\\n" + body) otherwise, where `body` is the event's canonical JSON:
UTF-8, keys sorted, no spaces (`json.dumps(event, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`), and the first event's prev_hash is 64 zeros. The event holds its own
`seq`, so reordering shows too. `seq` is the table's primary key: two writers can never both
append the same number, so the chain cannot fork; the loser retries on the new head.

Bulky parts of an event (a command's output, an Ansible result) are its *payload*: kept
beside the body as their own canonical JSON, with the body holding the payload's SHA-256
(`payload_sha256`). The chain covers the digest, so the payload can be pruned after a
retention period while every event still verifies; a payload that is present must match.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

from .export import cell, readable
from .keys import KeyRing, key_id

GENESIS = "0" * 64
DETACHED = ("output", "result", "plan")  # an event's fields that go to its payload


def detach(event: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Split an event into the body to hash (holding the payload's SHA-256) and the payload."""
    bulky = {name: event[name] for name in DETACHED if event.get(name) is not None}
    if not bulky:
        return dict(event), None
    payload = canonical(bulky)
    body = {k: v for k, v in event.items() if k not in bulky}
    return {**body, "payload_sha256": sha256_hex(payload)}, payload


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical(event: Mapping[str, Any]) -> str:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, body: str, key: bytes | None) -> str:
    message = (prev_hash + "\n" + body).encode("utf-8")
    if key:
        return hmac.new(key, message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()


def _hasher(key: bytes | None) -> Callable[[str, str], str]:
    """`chain_hash` with its key set up once, for walking many events."""
    if not key:
        return lambda prev, body: chain_hash(prev, body, None)
    keyed = hmac.new(key, digestmod=hashlib.sha256)

    def hash_with_key(prev_hash: str, body: str) -> str:
        mac = keyed.copy()
        mac.update((prev_hash + "\n" + body).encode("utf-8"))
        return mac.hexdigest()

    return hash_with_key


def _getter(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A row's values for these names, as a tuple (itemgetter, at C speed)."""
    if len(names) > 1:
        return itemgetter(*names)
    return lambda row: tuple(row[name] for name in names)


def operator_name(given: str | None) -> str:
    """Who is acting: --operator, else RUNBOOK_EXEC_OPERATOR, else the OS user."""
    return given or os.environ.get("RUNBOOK_EXEC_OPERATOR") or getpass.getuser()


def actor(operator: str) -> dict[str, Any]:
    """An event's `actor`: the OS user, the operator they act as, this machine and process."""
    return {
        "os_user": getpass.getuser(),
        "operator": operator,
        "machine": socket.gethostname(),
        "pid": os.getpid(),
    }


def utc_now() -> str:
    """UTC, with milliseconds: 2026-11-23T08:40:03.123Z."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


@dataclass(frozen=True)
class Finding:
    """The first place where the chain does not hold, and why. With `missing_key`, it is not
    known to be broken: the events from there on are hashed with a key not at hand."""

    seq: int | None
    reason: str
    missing_key: str | None = None

    def __str__(self) -> str:
        return f"event {self.seq}: {self.reason}" if self.seq is not None else self.reason


@dataclass
class Verified:
    """What `verify` found: how many events held, how many of them had their payload pruned
    (by a prune event that covers them), the first event that does not hold, if any, and
    the keys the chain is hashed with (ids, oldest first; empty for a SHA-256 chain)."""

    count: int = 0
    pruned: int = 0
    finding: Finding | None = None
    key_ids: list[str] = field(default_factory=list)
    unkeyed: bool = False
    last_seq: int = 0  # the last event that held, and its hash
    last_hash: str = ""


@dataclass(frozen=True)
class Start:
    """Where a walk over part of the chain starts: the first seq, the hash before it, and
    the key in force there."""

    seq: int = 1
    prev_hash: str = GENESIS
    key: bytes | None = None
    key_id: str | None = None


KEYED = "audit.keyed"  # a chain's first event: which key hashes it
ROTATED = "audit.key_rotated"  # the events after this one are hashed with the key it names
PRUNED = "audit.pruned"


Visit = Callable[[int, Mapping[str, Any]], None]


def verify(
    rows: Iterable[Mapping[str, Any]],
    keys: KeyRing | None,
    start: Start | None = None,
    visit: Visit | None = None,
) -> Verified:
    """Walk events in `seq` order, up to the first that does not hold: the whole chain, or
    from `start` on (see `Store.chain_start`). `visit` gets each event that held, decoded."""
    verified = Verified()
    ring = keys or KeyRing(Path("/nonexistent"))
    verified.finding = _walk(rows, ring, start, verified, visit)
    return verified


# Body fields copied into columns of their own (to filter on); verify checks the copies.
COLUMNS = ("run_id", "type", "host", "operator", "change_id", "at")
_decode = json.JSONDecoder().raw_decode  # json.loads without its wrapper: verify's hot path


def _walk(
    rows: Iterable[Mapping[str, Any]],
    keys: KeyRing,
    start: Start | None,
    verified: Verified,
    visit: Visit | None = None,
) -> Finding | None:
    expected_prev = start.prev_hash if start else GENESIS
    expected_seq = start.seq if start else 1
    key = start.key if start else None
    if start and start.key_id:
        verified.key_ids.append(start.key_id)
    columns: tuple[str, ...] | None = None  # the columns these rows have (an export has none)
    in_columns: Callable[[Mapping[str, Any]], tuple[Any, ...]] = _getter(())
    hasher: Callable[[str, str], str] | None = None
    hashed_with: bytes | None = None
    missing: list[tuple[int, str]] = []  # events whose payload is gone: (seq, at)
    prunes: list[tuple[int, str]] = []  # prune events: (seq, cut-off)
    finding: Finding | None = None
    for row in rows:
        seq = int(row["seq"])
        if seq != expected_seq:
            why = (
                f"missing: expected event {expected_seq}, found {seq} (events deleted)"
                if seq > expected_seq
                else f"out of order after event {expected_seq - 1}"
            )
            finding = Finding(seq, why)
            break
        if row["prev_hash"] != expected_prev:
            finding = Finding(
                seq, "does not follow the event before it (inserted, removed or reordered events)"
            )
            break
        try:
            body, _ = _decode(row["body"])
        except (ValueError, TypeError):
            finding = Finding(seq, "its body is not JSON (changed)")
            break
        if not isinstance(body, dict) or body.get("seq") != seq:
            moved = body.get("seq") if isinstance(body, dict) else None
            finding = Finding(seq, f"its body says seq {moved} (moved)")
            break
        if seq == 1:
            key, finding = _first_key(body, row, keys, verified)
            if finding:
                break
        if hasher is None or hashed_with is not key:
            hasher, hashed_with = _hasher(key), key
        if hasher(expected_prev, row["body"]) != row["hash"]:
            finding = Finding(
                seq,
                "its hash does not match its content (changed"
                + (", or a different audit key)" if key else ")"),
            )
            break
        if columns is None:
            columns = tuple(c for c in COLUMNS if c in row)
            in_columns = _getter(columns)
        if in_columns(row) != tuple(map(body.get, columns)):
            column = next(c for c in columns if row[c] != body.get(c))
            finding = Finding(seq, f"its {column} column differs from its hashed body (changed)")
            break
        if "readable" in row:
            said = readable(body)
            wrong = [k for k, v in row["readable"].items() if cell(said.get(k)) != v]
            if wrong:
                finding = Finding(seq, f"its {wrong[0]} column does not match its hashed body")
                break
        payload = row.get("payload")
        if payload is not None and sha256_hex(payload) != body.get("payload_sha256"):
            finding = Finding(seq, "its output does not match the digest its event holds (changed)")
            break
        if payload is None and "payload_sha256" in body and "payload" in row:
            missing.append((seq, str(body.get("at"))))
        if body.get("type") == PRUNED:
            prunes.append((seq, str(body.get("before"))))
        expected_prev = row["hash"]
        expected_seq += 1
        verified.count += 1
        verified.last_seq, verified.last_hash = seq, expected_prev
        if visit is not None:
            visit(seq, body)
        if body.get("type") == ROTATED:
            wanted = str(body.get("key_id"))
            key = keys.get(wanted)
            verified.key_ids.append(wanted)
            if key is None:
                finding = Finding(
                    seq + 1,
                    f"the events from here on are hashed with audit key {wanted} (rotated at "
                    f"event {seq}), which is not in {keys.where()}",
                    missing_key=wanted,
                )
                break
    for seq, at in missing:
        if pruned_by(seq, at, prunes):
            verified.pruned += 1
        elif finding is None or seq < (finding.seq or 0):
            return Finding(seq, "its output is missing, and no prune event covers it (removed)")
    return finding


def pruned_by(seq: int, at: str, prunes: Iterable[tuple[int, str]]) -> bool:
    """Whether the payload of event `seq` (made at `at`) was pruned, provably: a later prune
    event (seq, cut-off) covers it. A payload missing otherwise was removed."""
    return any(p_seq > seq and at < before for p_seq, before in prunes)


def _first_key(
    body: Mapping[str, Any], row: Mapping[str, Any], keys: KeyRing, verified: Verified
) -> tuple[bytes | None, Finding | None]:
    """The key that hashes a chain from its first event: the one it names, or, for a chain
    made before keys had ids, the given key if it fits, else none (SHA-256)."""
    if body.get("type") == KEYED:
        wanted = str(body.get("key_id"))
        verified.key_ids.append(wanted)
        key = keys.get(wanted)
        if key is None:
            return None, Finding(
                1,
                f"the trail is hashed with audit key {wanted}, which is not in {keys.where()}",
                missing_key=wanted,
            )
        return key, None
    if keys.given and chain_hash(GENESIS, row["body"], keys.given) == row["hash"]:
        verified.key_ids.append(key_id(keys.given))
        return keys.given, None
    verified.unkeyed = True
    return None, None
