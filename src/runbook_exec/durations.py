"""Durations as people write them in runbooks and on the command line: `30s`, `1m30s`, `500ms`."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str | int | float) -> float:
    """Seconds in `text`: 30s, 5m, 1h30m, 500ms. A number needs its unit (`wait: 5` could
    mean seconds or minutes), except 0. Raises ValueError with a readable message."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, int | float):
        return _bare(float(text), f"{text:g}")
    spec = text.strip().replace(" ", "")
    try:
        number = float(spec)
    except ValueError:
        pass
    else:
        return _bare(number, spec)
    parts = _PART.findall(spec)
    if not parts or "".join(number + unit for number, unit in parts) != spec:
        raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 5m, 1h30m or 500ms")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def as_seconds(value: str | int | float) -> float:
    """A duration that was rendered or recorded, not written: a bare number is seconds
    (what a duration parameter renders as, and how the record keeps one)."""
    return parse_duration(f"{value}s" if is_number(value) else value)


def is_number(value: object) -> bool:
    """A number, or text that is one ("0.1"); never a bool."""
    if isinstance(value, bool):
        return False
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _bare(number: float, shown: str) -> float:
    """A number without a unit: only 0 means the same in every unit."""
    if not math.isfinite(number):
        raise ValueError(f"{shown!r} is not a duration; write e.g. 30s, 5m, 1h30m or 500ms")
    if number < 0:
        raise ValueError(f"duration {shown} is negative")
    if number != 0:
        raise ValueError(f"{shown} has no unit; write {shown}s, {shown}m or {shown}ms")
    return 0.0


def format_duration(seconds: float) -> str:
    """The shortest readable spelling of `seconds`: 30s, 1m30s, 250ms."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")
