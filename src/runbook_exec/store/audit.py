"""The audit chain: every event hashed together with the hash of the one before it.

An event's hash is HMAC-SHA256(key, prev_hash + "\\n" + body) when an audit key is set, and
SHA-256(prev_hash + "\\n" + body) otherwise, where `body` is the event's canonical JSON:
UTF-8, keys sorted, no spaces (`json.dumps(event, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`), and the first event's prev_hash is 64 zeros. The event holds its own
`seq`, so reordering shows too. `seq` is the table's primary key: two writers can never both
append the same number, so the chain cannot fork; the loser retries on the new head.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def canonical(event: Mapping[str, Any]) -> str:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, body: str, key: bytes | None) -> str:
    message = (prev_hash + "\n" + body).encode("utf-8")
    if key:
        return hmac.new(key, message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()


def audit_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The audit key: RUNBOOK_EXEC_AUDIT_KEY, or the file named by RUNBOOK_EXEC_AUDIT_KEY_FILE."""
    env = environ if environ is not None else os.environ
    if env.get("RUNBOOK_EXEC_AUDIT_KEY"):
        return env["RUNBOOK_EXEC_AUDIT_KEY"].encode("utf-8")
    if env.get("RUNBOOK_EXEC_AUDIT_KEY_FILE"):
        return Path(env["RUNBOOK_EXEC_AUDIT_KEY_FILE"]).read_bytes().strip()
    return None


def utc_now() -> str:
    """UTC, with milliseconds: 2026-11-23T08:40:03.123Z."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


@dataclass(frozen=True)
class Finding:
    """The first place where the chain does not hold, and why."""

    seq: int | None
    reason: str

    def __str__(self) -> str:
        return f"event {self.seq}: {self.reason}" if self.seq is not None else self.reason


def verify(rows: Iterable[Mapping[str, Any]], key: bytes | None) -> tuple[int, Finding | None]:
    """Walk events in `seq` order; return how many held, and the first that does not."""
    expected_prev = GENESIS
    expected_seq = 1
    count = 0
    for row in rows:
        seq = int(row["seq"])
        if seq != expected_seq:
            why = (
                f"missing: expected event {expected_seq}, found {seq} (events deleted)"
                if seq > expected_seq
                else f"out of order after event {expected_seq - 1}"
            )
            return count, Finding(seq, why)
        if row["prev_hash"] != expected_prev:
            return count, Finding(
                seq, "does not follow the event before it (inserted, removed or reordered events)"
            )
        try:
            body = json.loads(row["body"])
        except ValueError:
            return count, Finding(seq, "its body is not JSON (changed)")
        if body.get("seq") != seq:
            return count, Finding(seq, f"its body says seq {body.get('seq')} (moved)")
        if chain_hash(row["prev_hash"], row["body"], key) != row["hash"]:
            return count, Finding(
                seq,
                "its hash does not match its content (changed"
                + (", or a different audit key)" if key else ")"),
            )
        for column in ("run_id", "type", "host", "operator", "change_id", "at"):
            if column in row and row[column] != body.get(column):
                return count, Finding(
                    seq, f"its {column} column differs from its hashed body (changed)"
                )
        expected_prev = row["hash"]
        expected_seq += 1
        count += 1
    return count, None


def export_lines(rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """One JSON line per event: seq, prev_hash, hash, and the event's body as a string."""
    for row in rows:
        yield json.dumps(
            {
                "seq": row["seq"],
                "prev_hash": row["prev_hash"],
                "hash": row["hash"],
                "body": row["body"],
            },
            ensure_ascii=False,
        )


def checkpoint(count: int, head: str, key: bytes | None) -> dict[str, Any]:
    """A signed statement of the chain's head, to keep outside the database."""
    made = {"count": count, "hash": head, "at": utc_now()}
    payload = canonical(made).encode("utf-8")
    signature = hmac.new(key, payload, hashlib.sha256).hexdigest() if key else None
    return {**made, "signature": signature, "signed": "hmac-sha256" if key else "none"}


def check_checkpoint(
    point: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], key: bytes | None
) -> Finding | None:
    """Whether the chain still holds the checkpoint's head at its place (and it was ours)."""
    made = {k: point[k] for k in ("count", "hash", "at")}
    if key is not None:
        expected = hmac.new(key, canonical(made).encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(str(point.get("signature") or ""), expected):
            return Finding(None, "the checkpoint's signature does not match the audit key")
    count = int(point["count"])
    if len(rows) < count:
        return Finding(
            len(rows) + 1,
            f"the chain has {len(rows)} events but the checkpoint "
            f"saw {count}: events were cut off the end",
        )
    if count and rows[count - 1]["hash"] != point["hash"]:
        return Finding(count, "the chain no longer holds the checkpoint's head (rewritten)")
    return None
