"""HTTP checks from the controller (`http:` steps), with the standard library's client."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from .base import CommandResult

BODY_LIMIT = 64 * 1024


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def without_redirects() -> urllib.request.OpenerDirector:
    """An opener that takes a redirect as the answer (an HTTPError of 3xx): what is sent,
    a token in a header or a signed message, goes to the server named and nowhere else."""
    return urllib.request.build_opener(_NoRedirects())


def _fetch(spec: Mapping[str, Any], timeout: float) -> tuple[int | None, bytes, str]:
    data = spec["body"].encode() if spec.get("body") is not None else None
    request = urllib.request.Request(
        spec["url"],
        data=data,
        method=spec.get("method", "GET"),
        headers=dict(spec.get("headers") or {}),
    )
    context = None
    if not spec.get("validate_certs", True):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read(BODY_LIMIT), ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(BODY_LIMIT), ""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, b"", f"{spec['url']}: {reason}"
    except http.client.HTTPException as exc:  # something answered, but not in HTTP
        said = str(exc).strip()[:100]
        return None, b"", f"{spec['url']}: not an HTTP answer ({type(exc).__name__}: {said})"


async def check_http(spec: Mapping[str, Any], timeout: float) -> CommandResult:
    """rc 0 when the status is one of those expected, the body contains `contains` and is
    `equals` (white space around it aside)."""
    started = time.monotonic()
    status, body, error = await asyncio.to_thread(_fetch, spec, timeout)
    expected = spec.get("status", 200)
    expected = [int(s) for s in expected] if isinstance(expected, list) else [int(expected)]
    text = body.decode("utf-8", errors="replace")
    if status is None:
        message = error
    elif status not in expected:
        message = f"HTTP {status}, expected {' or '.join(map(str, expected))}"
    elif spec.get("contains") and spec["contains"] not in text:
        message = f"HTTP {status}, but the body does not contain {spec['contains']!r}"
    elif spec.get("equals") is not None and text.strip() != spec["equals"].strip():
        message = f"HTTP {status}, but the body is {text.strip()[:80]!r}, not {spec['equals']!r}"
    else:
        message = ""
    return CommandResult(
        rc=0 if not message else 1,
        stdout=text,
        stderr=message,
        duration=time.monotonic() - started,
        output_bytes=len(body),
        output_sha256=hashlib.sha256(body).hexdigest(),
    )
