"""The audit trail as files: JSONL (every event as stored, verifiable anywhere) and CSV
(readable columns beside the same fields), and reading either back for `verify --file`."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

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


READABLE = tuple(c for c in CSV_COLUMNS if c not in EXPORTED)


def readable(body: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of a CSV export that people read, as the hashed body says them."""
    actor = body.get("actor") or {}
    step = body.get("step") or {}
    return {
        **{k: body.get(k) for k in ("at", "type", "run_id", "change_id", "host")},
        **{k: body.get(k) for k in ("operator", "status", "rc", "duration_ms", "message")},
        "os_user": actor.get("os_user"),
        "machine": actor.get("machine"),
        "step": step.get("name") or (f"#{step['index'] + 1}" if "index" in step else None),
    }


def cell(value: Any) -> str:
    """A value as the csv module writes it."""
    return "" if value is None else str(value)


def export_csv(rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """The trail as CSV for a spreadsheet: the columns people read first, then the hashed
    body and the payload, so a CSV export verifies just as a JSONL one does (and so do the
    readable columns: each must say what the body says)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        said = readable(json.loads(row["body"]))
        writer.writerow(
            [row.get(name) if name in EXPORTED else said.get(name) for name in CSV_COLUMNS]
        )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


class BadExportLine(ValueError):
    """A line of a file given as an export that is not one."""

    def __init__(self, line: int) -> None:
        super().__init__(f"line {line}: not an audit export line")
        self.line = line


def _csv_rows(reader: Any) -> Iterator[dict[str, Any]]:
    try:
        yield from reader
    except csv.Error:
        raise BadExportLine(reader.line_num) from None


def read_export(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Events back from a JSONL or CSV export, for `verify --file`."""
    iterator = iter(lines)
    first = next(iterator, "")
    if first.startswith("seq,"):
        csv.field_size_limit(2**31 - 1)  # an event's payload (its output) may be megabytes
        reader = csv.DictReader(itertools.chain([first], iterator))
        for row in _csv_rows(reader):
            try:
                yield {
                    "seq": int(row["seq"]),
                    **{name: str(row[name]) for name in EXPORTED[1:4]},
                    "payload": row["payload"] or None,
                    "readable": {name: row[name] for name in READABLE},
                }
            except (KeyError, TypeError, ValueError):
                raise BadExportLine(reader.line_num) from None
        return
    for number, line in enumerate(itertools.chain([first], iterator), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            if not isinstance(event.get("seq"), int) or isinstance(event["seq"], bool):
                raise ValueError("seq is not a number")
            yield {name: event[name] for name in EXPORTED[:4]} | {"payload": event.get("payload")}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BadExportLine(number) from None
