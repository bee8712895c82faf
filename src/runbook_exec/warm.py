"""The warm controller: one process that has imported everything once, and forks a process
for each `runbook-exec` command, which then starts in milliseconds instead of ~0.7 s.

    runbook-exec warm start      # in the background; `warm status`, `warm stop`

What a command sees is what it would see started by hand. It runs in a process of its own
(the pid its locks record), forked from a controller that never opens a store or a
connection itself, in a session of its own; it gets the caller's working directory,
environment, umask, arguments and standard streams (passed over the socket, so a terminal
stays a terminal: the live view and approval prompts work), and the caller exits with its
exit code. The caller forwards Ctrl-C, SIGTERM, SIGHUP and SIGQUIT to it; if the caller
dies, the command gets SIGTERM, so a run stops as on Ctrl-C: interrupted, resumable.

Per command there are two forks: a supervisor, which tells the caller the command's pid and
then its exit code, and the command itself. Only the user the controller runs as may use it
(the socket's directory is 0700, and the peer's uid is checked where the system says it).
If the code on disk changes, the controller refuses the next command and stops; that
command, and the ones after it, run cold until the controller is started again.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

from .warmchild import become
from .wire import (
    FORWARDED,
    fingerprint,
    read_request,
    receive,
    send,
    send_line,
    socket_path,
    well_formed,
)

EXIT_SIGNALLED = 128
PRELOAD = (
    "concurrent.futures.thread",  # asyncio's default executor
    "email.parser",
    "encodings.idna",
    "pwd",
    "sqlite3",
    "rich._emoji_codes",
    "sqlalchemy.dialects.sqlite",
    "typer._adapters",  # Typer builds a Pydantic adapter for each option it parses
    "typer._click.decorators",
    "runbook_exec.cli",
    "runbook_exec.live",
    "runbook_exec.runner",
    "runbook_exec.store.schema",
    "runbook_exec.views",
)


class WarmError(Exception):
    """The warm controller cannot start or cannot be reached."""


Command = Callable[[list[str]], object]


def _not_serving(argv: list[str]) -> object:
    raise RuntimeError("the warm controller runs commands only once `serve` is called")


_run: Command = _not_serving


def serve(
    path: str,
    idle_timeout: float | None,
    command: Command,
    ready: Callable[[], None] = lambda: None,
    log: TextIO = sys.stderr,
) -> None:
    """Listen on `path` until stopped, idle for `idle_timeout` seconds, or out of date;
    each request runs `command(argv)` (the CLI's main) in a fork of its own."""
    global _run
    _run = command
    code = fingerprint()
    _preload()
    listener = _listen(path)
    socket_inode = os.stat(path).st_ino
    started = time.time()
    served = 0
    stop = False

    def on_term(number: int, frame: object) -> None:
        nonlocal stop
        stop = True
        listener.close()  # ends the accept() below

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    listener.settimeout(idle_timeout or None)
    _log(log, f"ready: pid {os.getpid()}, socket {path}")
    ready()
    gc.freeze()  # imported objects stay in pages the forks share: their GC never writes there
    try:
        while not stop:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                _log(log, f"idle for {idle_timeout:g}s: stopping")
                break
            except OSError:
                break  # closed by SIGTERM
            with conn:
                try:
                    request, fds = read_request(conn)
                except OSError as exc:  # nothing came within the timeout
                    _log(log, f"refused: a request it could not read ({exc})")
                    continue
                try:
                    refusal = _refusal(conn, request, fds, code)
                    if refusal is not None:
                        send_line(conn, {"note": refusal.reason})
                        _log(log, f"refused: {refusal.reason}")
                        stop = refusal.final
                    elif request.get("op") == "status":
                        send_line(
                            conn,
                            {"pid": os.getpid(), "since": started, "served": served, "path": path},
                        )
                    elif request.get("op") == "stop":
                        send_line(conn, {"pid": os.getpid()})
                        stop = True
                    else:
                        served += 1
                        pid = os.fork()
                        if pid == 0:
                            _supervise(listener, conn, request, fds)
                        _log(log, f"{_command_name(request['argv'])}: supervisor pid {pid}")
                finally:
                    for fd in fds:
                        os.close(fd)
    finally:
        listener.close()
        _unlink_if_ours(path, socket_inode)
        _log(log, f"stopped after {served} command(s)")


def serve_in_background(path: str, idle_timeout: float | None, command: Command) -> int:
    """Start `serve` as a daemon logging to PATH.log; its pid once it listens."""
    ready_r, ready_w = os.pipe()
    first = os.fork()
    if first == 0:
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork() == 0:  # not a session leader: it can never get a terminal
                _daemon(path, idle_timeout, command, ready_w)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.waitpid(first, 0)
    with os.fdopen(ready_r, "rb") as ready:
        said = ready.read().decode(errors="replace")
    if not said.startswith("ready "):
        raise WarmError(said.strip() or f"the warm controller did not start; see {path}.log")
    return int(said.split()[1])


def _daemon(path: str, idle_timeout: float | None, command: Command, ready_w: int) -> NoReturn:
    code = 1
    try:
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        _private_folder(path)  # before the log is written there
        try:
            log = os.open(f"{path}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise WarmError(f"cannot write {path}.log: {exc.strerror}") from None
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)

        def ready() -> None:
            os.write(ready_w, f"ready {os.getpid()}".encode())
            os.close(ready_w)

        serve(path, idle_timeout, command, ready)
        code = 0
    except WarmError as exc:
        try:
            os.write(ready_w, str(exc).encode())
        except OSError:
            traceback.print_exc()
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _preload() -> None:
    """Import now what commands import when they run, so the forks find it done. Not
    Ansible: it reads its configuration (ansible.cfg, ANSIBLE_*) once, when imported, and
    that must be the command's, not the controller's."""
    for name in PRELOAD:
        importlib.import_module(name)
    with contextlib.suppress(ImportError):
        importlib.import_module("sqlalchemy.dialects.postgresql.psycopg")  # an extra


def _private_folder(path: str) -> None:
    """Make the socket's folder (0700) if need be; refuse one others could enter."""
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.stat(folder)
    except OSError as exc:
        raise WarmError(f"cannot make {folder}: {exc.strerror}") from None
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise WarmError(
            f"{folder} must belong to you and be private (chmod 700) to hold the socket"
        )


def _listen(path: str) -> socket.socket:
    _private_folder(path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except FileNotFoundError:
        pass
    except OSError:
        os.unlink(path)  # left behind by a controller that has ended
    else:
        raise WarmError(f"a warm controller already listens on {path}")
    finally:
        probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(path)
        listener.listen(64)
    except OSError as exc:
        listener.close()
        raise WarmError(
            f"cannot listen on {path}: {exc.strerror or exc} (RUNBOOK_EXEC_WARM_SOCKET "
            "chooses another path)"
        ) from None
    finally:
        os.umask(old)
    return listener


@dataclass(frozen=True)
class Refusal:
    reason: str
    final: bool = False  # the controller stops after saying it


def _refusal(
    conn: socket.socket, request: dict[str, Any], fds: list[int], code: str
) -> Refusal | None:
    if hasattr(socket, "SO_PEERCRED"):
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            return Refusal(f"refused uid {uid}: the warm controller serves only its own user")
    op = request.get("op")
    if op not in ("run", "status", "stop") or (op == "run" and not well_formed(request, fds)):
        return Refusal("a request it could not read")
    if op == "run" and request.get("fingerprint") != code:
        return Refusal(
            "the code changed since the warm controller started, so it has stopped; this "
            "command runs without it (`runbook-exec warm start` starts it again)",
            final=True,
        )
    return None


def _supervise(
    listener: socket.socket, conn: socket.socket, request: dict[str, Any], fds: list[int]
) -> NoReturn:
    """The first fork: start the command, tell the caller its pid, then its exit code."""
    try:
        listener.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            os.chdir(request["cwd"])
        except OSError as exc:
            send_line(conn, {"note": f"cannot enter {request['cwd']}: {exc.strerror}"})
            os._exit(0)
        ended_r, ended_w = os.pipe()  # closes when the command's process ends
        # Signals the caller sends the moment it knows the pid wait, blocked, until the
        # command can act on them: in the fork's first steps they would be lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        pid = os.fork()
        if pid == 0:
            os.close(ended_r)
            conn.close()
            become(request, fds, _run)
        os.close(ended_w)
        for fd in fds:
            os.close(fd)
        send_line(conn, {"pid": pid})
        caller = conn.fileno()
        watching = [caller, ended_r]
        while ended_r in watching:
            readable, _, _ = select.select(watching, [], [])
            if caller in readable and not conn.recv(1):
                watching.remove(caller)  # the caller has gone: stop as on Ctrl-C
                _kill(pid, signal.SIGTERM)
            if ended_r in readable:
                watching.remove(ended_r)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):  # the caller may have gone
            send_line(conn, {"exit": code if code >= 0 else EXIT_SIGNALLED - code})
    finally:
        os._exit(0)


def _kill(pid: int, number: int) -> None:
    with contextlib.suppress(OSError):  # it has ended already
        os.kill(pid, number)


def _unlink_if_ours(path: str, inode: int) -> None:
    """Remove the socket unless a newer controller has replaced it."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


def _command_name(argv: list[str]) -> str:
    """The command word, never its arguments (they may hold secrets)."""
    word = argv[1] if len(argv) > 1 else ""
    return word if word.isidentifier() or word.replace("-", "").isalnum() else "(options)"


def _log(log: TextIO, text: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} runbook-exec warm: {text}", file=log, flush=True)


def ask(op: str, path: str | None = None) -> dict[str, Any] | None:
    """Ask the controller for its status or to stop: its reply, or None if none listens."""
    path = path or socket_path()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
            send(sock, {"op": op})
            with sock.makefile("rb") as replies:
                return receive(replies)
        except OSError:
            return None
