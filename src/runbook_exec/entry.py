"""Where the `runbook-exec` command starts: hand the command to a warm controller if one runs
for this installation (`runbook-exec warm start`), else run it in this process.

Only the standard library is imported until that is decided. Importing the tool itself
(Typer, Rich, Pydantic, SQLAlchemy, asyncssh) costs ~0.7 s of CPU; the warm controller has
done it once, and forks a process for each command that starts from there (see `warm`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys

from .wire import FORWARDED, NO_WARM, fingerprint, receive, send, socket_path


def main() -> None:
    cold = os.environ.get(NO_WARM) or sys.argv[1:2] == ["warm"]
    code = None if cold else _warm(sys.argv)
    if code is not None:
        sys.exit(code)
    from .cli import main as cli_main

    cli_main()


def _warm(argv: list[str]) -> int | None:
    """Run the command in the warm controller: its exit code, or None to run it here."""
    path = socket_path()
    try:
        if os.stat(path).st_uid != os.getuid():
            return None  # someone else's socket: never hand it our environment
        cwd = os.getcwd()
    except OSError:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return None  # left behind by a controller that has ended
        umask = os.umask(0o022)
        os.umask(umask)
        streams = (sys.stdin, sys.stdout, sys.stderr)
        request = {
            "op": "run",
            "argv": argv,
            "cwd": cwd,
            "env": dict(os.environ),
            "umask": umask,
            "streams": [
                [getattr(s, "encoding", None), getattr(s, "errors", None)] for s in streams
            ],
            "fingerprint": fingerprint(),
        }
        fds, opened = _std_fds()
        signals = _Signals()
        try:
            try:
                send(sock, request, fds)
            except OSError:
                return None
            finally:
                for fd in opened:
                    os.close(fd)
            with sock.makefile("rb") as replies:
                first = receive(replies)
                if first is None or "pid" not in first:
                    if first and first.get("note"):
                        print(f"runbook-exec: {first['note']}", file=sys.stderr)
                    return None
                pid = int(first["pid"])
                signals.deliver(pid)
                last = receive(replies)
        finally:
            if signals.pid is None:
                signals.restore()
        if last is None or "exit" not in last:
            print(
                "runbook-exec: lost touch with the warm controller; the command may still be "
                f"running as pid {pid} (see `runbook-exec runs`)",
                file=sys.stderr,
            )
            return 1
        return int(last["exit"])


def _std_fds() -> tuple[list[int], list[int]]:
    """File descriptors 0, 1 and 2 to pass on; /dev/null for any that is closed here."""
    fds, opened = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            fds.append(null)
            opened.append(null)
    return fds, opened


class _Signals:
    """Ctrl-C and the like, meant for the command: held until its pid is known, then
    passed on to it. If it never starts, what was held is acted on here."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.held: list[int] = []
        self.before = {sig: signal.signal(sig, self._received) for sig in FORWARDED}

    def _received(self, number: int, frame: object) -> None:
        if self.pid is None:
            self.held.append(number)
        else:
            _forward(self.pid, number)

    def deliver(self, pid: int) -> None:
        self.pid = pid
        for number in self.held:
            _forward(pid, number)
        self.held.clear()

    def restore(self) -> None:
        for sig, handler in self.before.items():
            signal.signal(sig, handler)
        if signal.SIGINT in self.held:
            sys.exit(130)  # Ctrl-C before anything started
        for number in self.held:
            signal.raise_signal(number)


def _forward(pid: int, number: int) -> None:
    with contextlib.suppress(OSError):  # it has ended; its exit code is on its way
        os.kill(pid, number)
