"""`wait_for:` probes a port or a command on the host until it answers or time runs out."""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Mapping
from typing import Any

from pydantic import model_validator

from ..fields import Duration, Strict, Templated, Timeout
from ..transports.base import CommandResult
from .base import HostContext, StepBase

PORT_PROBE = (
    "(command -v nc >/dev/null 2>&1 && nc -z {h} {p}) || "
    "(command -v bash >/dev/null 2>&1 && bash -c 'exec 3<>/dev/tcp/'{h}'/'{p}) || "
    "(command -v python3 >/dev/null 2>&1 && python3 -c "
    "'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)' {h} {p})"
)


class WaitForSpec(Strict):
    port: int | Templated | None = None
    host: str = "127.0.0.1"
    command: str | None = None
    timeout: Timeout = 60.0
    interval: Duration = 1.0

    @model_validator(mode="after")
    def _exactly_one(self) -> WaitForSpec:
        if (self.port is None) == (self.command is None):
            raise ValueError("wait_for takes either `port` or `command`")
        return self


class WaitForStep(StepBase):
    kind = "wait_for"
    wait_for: WaitForSpec

    async def run(self, host: HostContext) -> CommandResult:
        """Probe until it succeeds or `wait_for.timeout` runs out; each probe has its own
        timeout."""
        spec = self.wait_for
        started = time.monotonic()
        if spec.command is not None:
            probe = spec.command
            what = f"`{probe}` to succeed"
        else:
            probe = PORT_PROBE.format(h=shlex.quote(spec.host), p=int(spec.port or 0))
            what = f"port {spec.port} on {spec.host} to answer"
        deadline = started + spec.timeout
        attempts = 0
        while True:
            attempts += 1
            left = max(deadline - time.monotonic(), 1.0)
            last = await host.run(probe, min(host.timeout, left))
            if last.ok:
                return CommandResult(0, last.stdout, last.stderr, time.monotonic() - started)
            if time.monotonic() + spec.interval > deadline:
                break
            await asyncio.sleep(spec.interval)
        message = f"gave up waiting for {what} after {attempts} tries"
        stderr = f"{last.stderr}\n{message}".strip()
        return CommandResult(1, last.stdout, stderr, time.monotonic() - started)

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        spec = action["wait_for"]
        if spec.get("command") is not None:
            what = f"`{spec['command']}` to succeed"
        else:
            what = f"port {spec['port']} on {spec.get('host', '127.0.0.1')}"
        return f"wait for {what} (up to {spec.get('timeout', 60.0):g}s)"
