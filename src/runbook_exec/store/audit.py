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

import csv
import getpass
import hashlib
import hmac
import io
import itertools
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, Problem

GENESIS = "0" * 64
DETACHED = ("output", "result")  # an event's fields that go to its payload


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


def audit_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The audit key: RUNBOOK_EXEC_AUDIT_KEY, or the file named by RUNBOOK_EXEC_AUDIT_KEY_FILE."""
    env = environ if environ is not None else os.environ
    if env.get("RUNBOOK_EXEC_AUDIT_KEY"):
        return env["RUNBOOK_EXEC_AUDIT_KEY"].encode("utf-8")
    if env.get("RUNBOOK_EXEC_AUDIT_KEY_FILE"):
        path = Path(env["RUNBOOK_EXEC_AUDIT_KEY_FILE"])
        try:
            key = path.read_bytes().strip()
        except OSError as exc:
            raise InputError(
                Problem(f"cannot read the audit key: {exc.strerror}", str(path))
            ) from None
        if not key:
            raise InputError(Problem("the audit key file is empty", str(path)))
        return key
    return None


def operator_name(given: str | None) -> str:
    """Who is acting: --operator, else RUNBOOK_EXEC_OPERATOR, else the OS user."""
    return given or os.environ.get("RUNBOOK_EXEC_OPERATOR") or getpass.getuser()


def actor(operator: str) -> dict[str, str]:
    """An event's `actor`: the OS user, the operator they act as, and this machine."""
    return {"os_user": getpass.getuser(), "operator": operator, "machine": socket.gethostname()}


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


@dataclass
class Verified:
    """What `verify` found: how many events held, how many of them had their payload pruned,
    and the first event that does not hold, if any."""

    count: int = 0
    pruned: int = 0
    finding: Finding | None = None


def verify(rows: Iterable[Mapping[str, Any]], key: bytes | None) -> Verified:
    """Walk events in `seq` order, up to the first that does not hold."""
    verified = Verified()
    verified.finding = _walk(rows, key, verified)
    return verified


# Body fields copied into columns of their own (to filter on); verify checks the copies.
COLUMNS = ("run_id", "type", "host", "operator", "change_id", "at")
_decode = json.JSONDecoder().raw_decode  # json.loads without its wrapper: verify's hot path


def _walk(
    rows: Iterable[Mapping[str, Any]], key: bytes | None, verified: Verified
) -> Finding | None:
    expected_prev = GENESIS
    expected_seq = 1
    columns: tuple[str, ...] | None = None  # the columns these rows have (an export has none)
    for row in rows:
        seq = int(row["seq"])
        if seq != expected_seq:
            why = (
                f"missing: expected event {expected_seq}, found {seq} (events deleted)"
                if seq > expected_seq
                else f"out of order after event {expected_seq - 1}"
            )
            return Finding(seq, why)
        if row["prev_hash"] != expected_prev:
            return Finding(
                seq, "does not follow the event before it (inserted, removed or reordered events)"
            )
        try:
            body, _ = _decode(row["body"])
        except (ValueError, TypeError):
            return Finding(seq, "its body is not JSON (changed)")
        if not isinstance(body, dict) or body.get("seq") != seq:
            moved = body.get("seq") if isinstance(body, dict) else None
            return Finding(seq, f"its body says seq {moved} (moved)")
        if chain_hash(expected_prev, row["body"], key) != row["hash"]:
            return Finding(
                seq,
                "its hash does not match its content (changed"
                + (", or a different audit key)" if key else ")"),
            )
        if columns is None:
            columns = tuple(c for c in COLUMNS if c in row)
        if tuple(row[c] for c in columns) != tuple(body.get(c) for c in columns):
            column = next(c for c in columns if row[c] != body.get(c))
            return Finding(seq, f"its {column} column differs from its hashed body (changed)")
        payload = row.get("payload")
        if payload is not None and sha256_hex(payload) != body.get("payload_sha256"):
            return Finding(seq, "its output does not match the digest its event holds (changed)")
        if payload is None and "payload_sha256" in body:
            verified.pruned += 1
        expected_prev = row["hash"]
        expected_seq += 1
        verified.count += 1
    return None


EXPORTED = ("seq", "prev_hash", "hash", "body", "payload")


def export_lines(rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """One JSON line per event: seq, prev_hash, hash, the event's body as a string, and its
    payload as a string (null when there is none, or it was pruned)."""
    for row in rows:
        yield json.dumps({name: row.get(name) for name in EXPORTED}, ensure_ascii=False)


CSV_COLUMNS = (
    "seq",
    "at",
    "type",
    "run_id",
    "change_id",
    "operator",
    "os_user",
    "machine",
    "host",
    "step",
    "status",
    "rc",
    "duration_ms",
    "message",
    "prev_hash",
    "hash",
    "body",
    "payload",
)


def export_csv(rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """The trail as CSV for a spreadsheet: the columns people read first, then the hashed
    body and the payload, so a CSV export verifies just as a JSONL one does."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        body = json.loads(row["body"])
        actor = body.get("actor") or {}
        step = body.get("step") or {}
        readable = {
            **{k: body.get(k) for k in ("at", "type", "run_id", "change_id", "host")},
            **{k: body.get(k) for k in ("operator", "status", "rc", "duration_ms", "message")},
            "os_user": actor.get("os_user"),
            "machine": actor.get("machine"),
            "step": step.get("name") or (f"#{step['index'] + 1}" if "index" in step else None),
        }
        writer.writerow(
            [row.get(name) if name in EXPORTED else readable.get(name) for name in CSV_COLUMNS]
        )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


class BadExportLine(ValueError):
    """A line of a file given as an export that is not one."""

    def __init__(self, line: int) -> None:
        super().__init__(f"line {line}: not an audit export line")
        self.line = line


def read_export(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Events back from a JSONL or CSV export, for `verify --file`."""
    iterator = iter(lines)
    first = next(iterator, "")
    if first.startswith("seq,"):
        reader = csv.DictReader(itertools.chain([first], iterator))
        for row in reader:
            try:
                yield {
                    "seq": int(row["seq"]),
                    **{name: str(row[name]) for name in EXPORTED[1:4]},
                    "payload": row["payload"] or None,
                }
            except (KeyError, TypeError, ValueError):
                raise BadExportLine(reader.line_num) from None
        return
    for number, line in enumerate(itertools.chain([first], iterator), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            yield {name: event[name] for name in EXPORTED[:4]} | {"payload": event.get("payload")}
        except (ValueError, KeyError, TypeError):
            raise BadExportLine(number) from None
