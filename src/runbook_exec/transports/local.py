"""Commands on the controller itself (`local:` steps), with the same timeout rules as SSH."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from ..masking import Secrets
from .base import CommandResult
from .ssh import OutputCapture, captured

KILL_GRACE = 2.0


async def run_local(
    command: str | list[str],
    timeout: float,
    output_limit: int,
    cwd: str | None = None,
    secrets: Secrets | None = None,
) -> CommandResult:
    """Run on this machine in its own process group; on timeout the whole group is killed."""
    started = time.monotonic()
    if isinstance(command, str):
        process = await asyncio.create_subprocess_shell(
            command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
        )
    else:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
        )
    stdout, stderr = OutputCapture(output_limit, secrets), OutputCapture(output_limit, secrets)

    async def pump(stream: asyncio.StreamReader | None, capture: OutputCapture) -> None:
        assert stream is not None
        while chunk := await stream.read(65536):
            capture.feed(chunk)

    timed_out = False
    try:
        await asyncio.wait_for(
            asyncio.gather(
                pump(process.stdout, stdout), pump(process.stderr, stderr), process.wait()
            ),
            timeout,
        )
    except TimeoutError:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    rc = None if timed_out else process.returncode
    if rc is not None and rc < 0:
        rc = 128 - rc
    return captured(rc, stdout, stderr, started, timed_out)
