"""SSH to hosts with asyncssh: one connection per host, opened once and reused by every step.

Every command has a timeout and runs under `guard.py`'s script: in the login shell's process
group (sshd makes that shell a session leader when no terminal is allocated), under the
host's command lock, with a watchdog that ends the whole group when the channel closes. So
on a timeout the controller closes the channel and the command is ended on the host, not
merely abandoned; and so is every command of a controller that dies. Keepalives notice a
host that stops answering mid-command.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import secrets
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from ..ansiblecfg import AnsibleDefaults
from ..errors import HostKeyError
from ..inventory import Host
from ..masking import Secrets
from .base import CommandResult, Unreachable
from .guard import Become, Mark, guarded

# AES-GCM first: asyncssh hands it to OpenSSL whole, where chacha20-poly1305 costs a Python
# call per packet (measured: about 30% less client CPU on the 50-host benchmark). Every
# default cipher stays on offer, so any server that worked before still works.
ENCRYPTION_ALGS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
]
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT_MAX = 3
UPLOAD_PLACE_TIMEOUT = 600.0  # copying an upload into place as the become user


@dataclass(frozen=True)
class SshOptions:
    known_hosts: Path
    accept_new_host_keys: bool = False
    connect_timeout: float = 10.0
    output_limit: int = 64 * 1024
    secrets: Secrets = field(default_factory=Secrets)
    ansible: AnsibleDefaults = field(default_factory=AnsibleDefaults)  # ansible.cfg, ANSIBLE_*
    # -K or RUNBOOK_EXEC_BECOME_PASSWORD; a host's ansible_become_password wins
    become_password: str | None = field(default=None, repr=False)


class OutputCapture:
    """Keeps the head and tail of a stream within a limit, with the full size and SHA-256.
    Secrets are masked as the stream arrives, before anything is kept, counted or hashed,
    so a secret cut by the head/tail split or by a chunk boundary leaves no fragment."""

    def __init__(self, limit: int, secrets: Secrets | None = None) -> None:
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.size = 0
        self.digest = hashlib.sha256()
        self.mask = secrets.stream() if secrets is not None else None

    def feed(self, chunk: bytes) -> None:
        if self.mask is not None:
            chunk = self.mask.feed(chunk)
        self._keep(chunk)

    def finish(self) -> None:
        """The stream has ended: let go of what the mask held back."""
        if self.mask is not None:
            self._keep(self.mask.finish())
            self.mask = None

    def _keep(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.digest.update(chunk)
        room = self.limit // 2 - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            del self.tail[: max(0, len(self.tail) - self.limit // 2)]

    def text(self) -> str:
        omitted = self.size - len(self.head) - len(self.tail)
        body = bytes(self.head)
        if omitted > 0:
            body += f"\n… [{omitted} bytes omitted] …\n".encode()
        return (body + bytes(self.tail)).decode("utf-8", errors="replace")


class _CapturingSession(asyncssh.SSHClientSession[bytes]):
    """Feeds a command's output straight into captures as it arrives (no reader tasks), and
    takes the wrapper's first stdout line as the pid of the command's process group (and,
    on a connection's first command, what the login shell is)."""

    def __init__(self, stdout: OutputCapture, stderr: OutputCapture) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.pid: str | None = None
        self.shell: list[str] = []  # the probe's words after the pid, if it was asked
        self._pending = b""
        self.exit_status: int | None = None
        self.channel: asyncssh.SSHClientChannel[bytes] | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.channel = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr.feed(data)
            return
        if self.pid is None:
            self._pending += data
            if b"\n" not in self._pending:
                return
            line, data = self._pending.split(b"\n", 1)
            self.pid, *self.shell = line.decode(errors="replace").split(" ")
        self.stdout.feed(data)

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_status = 128 + _signal_number(signal)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)


class SshSession:
    """A live connection to one host."""

    def __init__(self, host: Host, connection: asyncssh.SSHClientConnection, options: SshOptions):
        self.host = host
        self.connection = connection
        self.options = options
        # Whether the login shell is /bin/sh itself: learnt from the first command.
        self.login_shell_is_sh: bool | None = None

    def _wrapped(self, command: str, mark: Mark | None, become: Become | None) -> str:
        """What the login shell is asked to run: print its pid (the process group's), then
        the guard script around `command`. When the login shell is /bin/sh itself, it runs
        the script as it is, without another exec; other shells exec sh. The first command
        also asks what the login shell is."""
        script = guarded(command, f"{self.host.name}-{self.host.port or 22}", mark, become)
        if self.login_shell_is_sh:
            return f"echo $$\n{script}"
        probe = (
            ' "$0" "$(readlink -f /proc/$$/exe 2>/dev/null)" "$(readlink -f /bin/sh 2>/dev/null)"'
        )
        asks = probe if self.login_shell_is_sh is None else ""
        return f"echo $${asks}; exec sh -c {shlex.quote(script)}"

    def _become(self) -> Become | None:
        """Whom commands run as through sudo, if anyone, and with which password: the
        inventory's ansible_become (ansible_become_user, ansible_become_password) if it
        says, else Ansible's configuration; the password given to the run (-K) between."""
        config = self.options.ansible
        if not config.becomes(self.host):
            return None
        user = str(self.host.vars.get("ansible_become_user") or config.become_user or "root")
        password = self.host.become_password or self.options.become_password
        return Become(user, password)

    def _learn_login_shell(self, answer: list[str]) -> None:
        """From the probe's answer ($0, the shell's binary, /bin/sh's binary): the login
        shell is /bin/sh when it runs as `sh` (bash changes behaviour by that name) and is
        the same binary. Anything unclear keeps the exec."""
        if self.login_shell_is_sh is None and answer:
            name, binary, sh = ([*answer, "", "", ""])[:3]
            self.login_shell_is_sh = name.lstrip("-") == "sh" and binary == sh != ""

    async def run(self, command: str, timeout: float, mark: Mark | None = None) -> CommandResult:
        """Run `command` with `sh -c` semantics (via the login shell), within `timeout`.
        `mark` says which run, step and attempt it is, for the host's command lock."""
        become = self._become()
        wrapped = self._wrapped(command, mark, become)
        started = time.monotonic()
        limit = self.options.output_limit
        secrets = self.options.secrets
        session = _CapturingSession(OutputCapture(limit, secrets), OutputCapture(limit, secrets))
        timed_out = False
        try:
            async with asyncio.timeout(timeout):
                channel, _ = await self.connection.create_session(
                    lambda: session, wrapped, encoding=None
                )
                if become is not None and become.password is not None:
                    channel.write(become.first_line)  # never EOF: see guard.py
                await session.done
        except TimeoutError:
            timed_out = True
            # Closing the channel is what ends the command: the watchdog on the host sees
            # its stdin close and ends the process group. A host that stopped answering
            # does not hold the step past its timeout either way.
            if session.channel is not None:
                session.channel.close()
        except (asyncssh.Error, OSError) as exc:
            raise Unreachable(f"connection lost: {_reason(exc)}") from None
        self._learn_login_shell(session.shell)
        rc = None if timed_out else session.exit_status
        return captured(rc, session.stdout, session.stderr, started, timed_out)

    async def upload(self, local: Path, remote: str, mode: str | None) -> None:
        """Copy `local` to `remote` over SFTP. With become, as Ansible does: to a private
        temporary file of the login user's, then copied into place as the become user."""
        become = self._become()
        try:
            async with self.connection.start_sftp_client() as sftp:
                if become is None:
                    await sftp.put(str(local), remote)
                    if mode:
                        await sftp.chmod(remote, int(mode, 8))
                    return
                # A folder only the login user may enter: what is staged there is private
                # from the start, and sftp.put keeps its parallel writes.
                folder = f"/tmp/rbx-upload-{secrets.token_hex(8)}"
                staged = f"{folder}/file"
                await sftp.mkdir(folder, asyncssh.SFTPAttrs(permissions=0o700))
                try:
                    await sftp.put(str(local), staged)
                    await self._put_in_place(staged, remote, mode)
                finally:
                    with contextlib.suppress(asyncssh.Error, OSError):
                        await sftp.remove(staged)
                    with contextlib.suppress(asyncssh.Error, OSError):
                        await sftp.rmdir(folder)
        except (asyncssh.Error, OSError) as exc:
            raise OSError(f"upload to {remote} failed: {_reason(exc)}") from None

    async def _put_in_place(self, staged: str, remote: str, mode: str | None) -> None:
        place = f"cp -- {shlex.quote(staged)} {shlex.quote(remote)}"
        if mode:
            place += f" && chmod {int(mode, 8):o} {shlex.quote(remote)}"
        done = await self.run(place, UPLOAD_PLACE_TIMEOUT)
        if not done.ok:
            raise OSError(done.stderr.strip()[:300] or f"exit {done.rc}")

    async def close(self) -> None:
        self.connection.close()
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(self.connection.wait_closed(), 2)


async def connect(host: Host, options: SshOptions) -> SshSession:
    """Open a connection to `host`, verifying its host key against known_hosts."""
    kwargs: dict[str, Any] = {
        "connect_timeout": options.connect_timeout,
        "keepalive_interval": KEEPALIVE_INTERVAL,
        "keepalive_count_max": KEEPALIVE_COUNT_MAX,
        "encryption_algs": ENCRYPTION_ALGS,
    }
    # What the inventory says wins, then Ansible's configuration (ansible.cfg, ANSIBLE_*);
    # what both leave out comes from ~/.ssh/config (Port, User, HostName, IdentityFile,
    # ProxyJump), as with OpenSSH and Ansible, then defaults.
    config = options.ansible
    port = host.port or config.remote_port
    user = host.user or config.remote_user
    key_file = host.key_file or config.private_key_file
    if port:
        kwargs["port"] = port
    if user:
        kwargs["username"] = user
    if key_file:
        kwargs["client_keys"] = [key_file]
    known = _known_hosts(options.known_hosts)
    try:
        connection = await asyncssh.connect(host.address, known_hosts=known, **kwargs)
    except asyncssh.HostKeyNotVerifiable as exc:
        if not options.accept_new_host_keys or _has_entry(options.known_hosts, host):
            raise HostKeyError(_host_key_message(host, options, exc)) from None
        connection = await _trust_on_first_use(host, options, kwargs)
    except (asyncssh.Error, OSError, TimeoutError) as exc:
        raise Unreachable(_reason(exc)) from None
    return SshSession(host, connection, options)


async def _trust_on_first_use(host: Host, options: SshOptions, kwargs: dict[str, Any]) -> Any:
    try:
        connection = await asyncssh.connect(host.address, known_hosts=None, **kwargs)
    except (asyncssh.Error, OSError, TimeoutError) as exc:
        raise Unreachable(_reason(exc)) from None
    key = connection.get_server_host_key()
    if key is not None:
        port = host.port or int((connection.get_extra_info("peername") or ("", 22))[1])
        name = host.address if port == 22 else f"[{host.address}]:{port}"
        line = f"{name} {key.export_public_key('openssh').decode().strip()}\n"
        options.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(options.known_hosts, "a") as handle:
            handle.write(line)
    return connection


def _known_hosts(path: Path) -> Any:
    """The trusted keys, parsed once per version of the file rather than per connection
    (asyncssh would read a path given to it again for each host)."""
    try:
        info = path.stat()
    except OSError:
        return ([], [], [])  # nothing trusted: every host is unknown
    return _parsed_known_hosts(str(path), info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=4)
def _parsed_known_hosts(path: str, mtime_ns: int, size: int) -> asyncssh.SSHKnownHosts:
    return asyncssh.read_known_hosts(path)


def _has_entry(path: Path, host: Host) -> bool:
    """Whether known_hosts names this host at all (then a mismatch is a changed key)."""
    try:
        known = _known_hosts(path)  # the copy connect() used, parsed once
    except (asyncssh.Error, OSError, ValueError):
        return False
    if not isinstance(known, asyncssh.SSHKnownHosts):
        return False  # no file: nothing named
    trusted = known.match(host.address, host.address, host.port or 22)
    return any(trusted[:3])


def _host_key_message(host: Host, options: SshOptions, exc: Exception) -> str:
    where = f"{host.name} ({host.address}:{host.port or 22})"
    if _has_entry(options.known_hosts, host):
        return (
            f"{where}: host key does not match {options.known_hosts}; refusing to connect "
            "(the host was reinstalled, or someone is in the middle)"
        )
    return (
        f"{where}: host key is not in {options.known_hosts}; refusing to connect. "
        "Add it (ssh-keyscan), or pass --accept-new-host-keys to trust and record it"
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out connecting"
    if isinstance(exc, asyncssh.PermissionDenied):
        return "permission denied (check ansible_user and ansible_ssh_private_key_file)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(getattr(exc, "reason", "") or exc) or type(exc).__name__
    return text


def _signal_number(name: str) -> int:
    import signal

    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        return 0


def captured(
    rc: int | None, stdout: OutputCapture, stderr: OutputCapture, started: float, timed_out: bool
) -> CommandResult:
    """A command's result from its two captured streams (`started`: time.monotonic())."""
    stdout.finish()
    stderr.finish()
    return CommandResult(
        rc=rc,
        stdout=stdout.text(),
        stderr=stderr.text(),
        duration=time.monotonic() - started,
        timed_out=timed_out,
        output_bytes=stdout.size + stderr.size,
        output_sha256=_combined_digest(stdout, stderr),
    )


def _combined_digest(*captures: OutputCapture) -> str:
    digest = hashlib.sha256()
    for capture in captures:
        digest.update(capture.digest.digest())
    return digest.hexdigest()
