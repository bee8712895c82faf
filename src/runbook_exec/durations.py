"""Durations as people write them in runbooks and on the command line: `30s`, `1m30s`, `500ms`."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str | int | float) -> float:
    """Seconds in `text`; a bare number is seconds. Raises ValueError with a readable message."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, int | float):
        if not math.isfinite(text):
            raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 5m, 1h30m or 500ms")
        if text < 0:
            raise ValueError(f"duration {text!r} is negative")
        return float(text)
    spec = text.strip().replace(" ", "")
    try:
        return parse_duration(float(spec))
    except ValueError:
        pass
    parts = _PART.findall(spec)
    if not parts or "".join(number + unit for number, unit in parts) != spec:
        raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 5m, 1h30m or 500ms")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


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
