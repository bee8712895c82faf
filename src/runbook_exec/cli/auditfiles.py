"""What `audit` commands read from the command line and from files: UTC times, checkpoints
and exports, each refused (exit 2, naming the file and line) when it is not what it should
be."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InputError, Problem


def utc_option(text: str, option: str) -> datetime:
    """A UTC date or time given on the command line."""
    try:
        parsed = datetime.fromisoformat(text.removesuffix("Z"))
    except ValueError:
        raise InputError(
            Problem(
                f"{text!r} is not a date or time (2026-11-01 or 2026-11-01T08:00)", field=option
            )
        ) from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def event_at(row: dict[str, Any]) -> str:
    """An event's time in the form `utc_option(...).isoformat()` gives, to compare with it."""
    return str(row["at"]).removesuffix("Z")


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        if not path.is_file() or path.stat().st_size > 1024 * 1024:
            raise InputError(Problem("not a checkpoint (a small regular file expected)", str(path)))
        point = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(Problem(f"cannot read it: {exc.strerror}", str(path))) from None
    except ValueError:
        raise InputError(Problem("not a checkpoint (JSON expected)", str(path))) from None
    if not isinstance(point, dict):
        raise InputError(Problem("not a checkpoint (a JSON object expected)", str(path)))
    return point


def export_rows(file: Path) -> list[dict[str, Any]]:
    from ..store.export import BadExportLine, read_export

    if file.exists() and not file.is_file():
        raise InputError(Problem("not a regular file", str(file)))
    try:
        with file.open(encoding="utf-8", newline="") as lines:
            return list(read_export(lines))
    except OSError as exc:
        raise InputError(Problem(f"cannot read it: {exc.strerror}", str(file))) from None
    except UnicodeDecodeError as exc:
        raise InputError(
            Problem(f"not an audit export: not UTF-8 text (byte {exc.start})", str(file))
        ) from None
    except BadExportLine as exc:
        raise InputError(
            Problem(
                "not an audit export line (JSONL or CSV from `audit export`)", str(file), exc.line
            )
        ) from None
