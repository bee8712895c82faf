"""In-memory hosts for tests of the executor's policy: a transport whose sessions answer
each command with what the test says, and keep every command they were sent, in order.
No network, no sshd: a run over a dozen hosts takes milliseconds. The product never
imports this module; the real-host tests use `lab.py`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ..inventory import Host
from ..transports.base import CommandResult, Session, Unreachable
from ..transports.guard import Mark
from ..transports.ssh import SshOptions

Answer = Callable[[str, str], CommandResult | str | int]
"""(host, command) -> a result, or just its stdout (exit 0), or just its exit code."""


class FakeHosts:
    """Hosts that exist only here. `answer` decides each command's outcome (default: exit 0,
    no output); hosts in `down` cannot be connected to."""

    def __init__(self, answer: Answer | None = None, down: Iterable[str] = ()) -> None:
        self.answer = answer or (lambda host, command: 0)
        self.down = set(down)
        self.sent: list[tuple[str, str]] = []
        self.uploads: list[tuple[str, str]] = []
        self.closed: list[str] = []

    async def connect(self, host: Host, options: SshOptions) -> Session:
        if host.name in self.down:
            raise Unreachable(f"{host.name}: connection refused")
        return _FakeSession(self, host.name)

    def commands(self, host: str) -> list[str]:
        return [command for name, command in self.sent if name == host]


class _FakeSession:
    def __init__(self, hosts: FakeHosts, name: str) -> None:
        self.hosts = hosts
        self.name = name

    async def run(self, command: str, timeout: float, mark: Mark | None = None) -> CommandResult:
        self.hosts.sent.append((self.name, command))
        answer = self.hosts.answer(self.name, command)
        if isinstance(answer, CommandResult):
            return answer
        if isinstance(answer, str):
            return CommandResult(0, answer, "", 0.0)
        return CommandResult(answer, "", f"exit {answer}" if answer else "", 0.0)

    async def upload(self, local: Path, remote: str, mode: str | None) -> None:
        self.hosts.uploads.append((self.name, remote))

    async def close(self) -> None:
        self.hosts.closed.append(self.name)
