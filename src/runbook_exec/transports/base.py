"""What every transport gives the executor: a command's result, the one error that means
"the host is gone", and the session a step acts through. The SSH session is the real one;
`runbook_exec.testing.fake` holds an in-memory one for tests of the executor's policy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .guard import Mark


@dataclass(frozen=True)
class CommandResult:
    """What a remote (or local) command did: exit code, captured output, time taken."""

    rc: int | None
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    output_bytes: int = 0
    output_sha256: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out


def default_known_hosts() -> Path:
    """Where host keys are checked when no --known-hosts is given: OpenSSH's own file."""
    return Path("~/.ssh/known_hosts").expanduser()


class Unreachable(Exception):
    """The host could not be connected to, or the connection dropped."""


class Session(Protocol):
    """A live connection to one host."""

    async def run(self, command: str, timeout: float, mark: Mark | None = None) -> CommandResult:
        """Run `command` with `sh -c` semantics, within `timeout` seconds (`mark`: the run,
        step and attempt it belongs to)."""
        ...

    async def upload(self, local: Path, remote: str, mode: str | None) -> None: ...

    async def close(self) -> None: ...
