"""The warm controller's wire protocol, shared by the client (`entry`) and the server
(`warm`): where its socket is, what code it runs, and how a request and its replies travel.

Only the standard library: the client imports this before it knows whether it will run the
command itself.

A request is a 4-byte big-endian length, sent with the caller's file descriptors attached
(SCM_RIGHTS), then that many bytes of JSON. Replies are JSON lines: `{"pid": N}` once the
command runs (or `{"note": ...}` if it cannot), then `{"exit": CODE}`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import sys
from typing import Any, BinaryIO

NO_WARM = "RUNBOOK_EXEC_NO_WARM"
SOCKET_ENV = "RUNBOOK_EXEC_WARM_SOCKET"
PACKAGE = os.path.dirname(os.path.realpath(__file__))
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
HEADER = struct.Struct("!I")


def socket_path() -> str:
    """The warm controller's socket: RUNBOOK_EXEC_WARM_SOCKET, else one per installation
    (interpreter and package) in the user's runtime directory."""
    given = os.environ.get(SOCKET_ENV)
    if given:
        return given
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.sha256(f"{sys.executable}\0{PACKAGE}".encode()).hexdigest()[:12]
    return os.path.join(base, "runbook-exec", "warm", f"{key}.sock")


def fingerprint() -> str:
    """What code would run: the interpreter and each source file's size and mtime. A warm
    controller started before the code changed refuses commands (and stops)."""
    digest = hashlib.sha256(f"{sys.version}\0{sys.executable}".encode())
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            info = os.stat(os.path.join(root, name))
            digest.update(f"{root}/{name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    """One request: its length (with any file descriptors attached), then its JSON."""
    body = json.dumps(message).encode()
    socket.send_fds(sock, [HEADER.pack(len(body))], fds or [])
    sock.sendall(body)


def receive(replies: BinaryIO) -> dict[str, Any] | None:
    """One reply (a JSON line), or None when the other end has gone."""
    line = replies.readline()
    return json.loads(line) if line else None


def send_line(conn: socket.socket, message: dict[str, Any]) -> None:
    """One reply: a JSON line."""
    conn.sendall((json.dumps(message) + "\n").encode())


def read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The request and the file descriptors that came with it ({} if it is not one)."""
    conn.settimeout(10)
    header, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    body = b""
    if len(header) == HEADER.size:
        (length,) = HEADER.unpack(header)
        with contextlib.suppress(OSError):  # too slow, or gone: not a request
            while len(body) < length:
                chunk = conn.recv(min(length - len(body), 1 << 20))
                if not chunk:
                    break
                body += chunk
    conn.settimeout(None)
    try:
        request = json.loads(body)
    except ValueError:
        request = None
    return (request if isinstance(request, dict) else {}), fds


def well_formed(request: dict[str, Any], fds: list[int]) -> bool:
    """A command as `entry` sends it: three streams, words, a directory, an environment."""
    argv, env = request.get("argv"), request.get("env")
    return (
        len(fds) == 3
        and isinstance(argv, list)
        and all(isinstance(word, str) for word in argv)
        and isinstance(request.get("cwd"), str)
        and isinstance(env, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        and isinstance(request.get("umask"), int)
    )
