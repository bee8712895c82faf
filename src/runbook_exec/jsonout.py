"""What every `--json` output shares: a schema version, and one time format (RFC 3339, UTC,
milliseconds, `Z`: 2026-11-23T08:40:03.123Z), the one the audit trail writes. A script
checks `schema` and fails loudly on one it does not know, rather than misread a field.

    {"schema": 1, "runs": [...]}              runs --json
    {"schema": 1, "releases": [...]}          releases --json
    {"schema": 1, "run_id": ..., ...}         show --json; run/resume/rollback/cancel --json
    {"schema": 1, "batches": ..., ...}        plan --json
"""

from __future__ import annotations

import json
import time
from typing import Any

SCHEMA = 1


def rfc3339(timestamp: float | None) -> str | None:
    """An epoch time as RFC 3339 UTC with milliseconds; None stays None."""
    if timestamp is None:
        return None
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    return f"{whole}.{round(timestamp * 1000) % 1000:03d}Z"


def document(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with the schema version first."""
    return {"schema": SCHEMA, **body}


def dumps(body: dict[str, Any]) -> str:
    return json.dumps(document(body), indent=2, default=str)
