"""A local lab of real SSH hosts: one OpenSSH `sshd` per host on loopback, each with its own
port, directory, host key and client key. The tests, the benchmarks and the demo use it.

Run as root, the hosts log in a dedicated user (`rbx-test`, created if missing) whose shell is
`/bin/sh` and whose home holds no start-up files, so nothing from anyone's shell set-up leaks
into a test. Run as another user, the hosts log in that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LAB_USER = "rbx-test"
SUDOERS = Path("/etc/sudoers.d")
SSHD = "/usr/sbin/sshd"
READY_TIMEOUT = 20.0


@dataclass
class LabHost:
    """One running sshd and the directory that stands for that host's filesystem."""

    name: str
    port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    app_port: int = 0
    green_port: int = 0  # blue-green: the app's second slot (the first is app_port)
    proxy_port: int = 0  # blue-green: the proxy in front of both

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}/"

    @property
    def root(self) -> Path:
        """A directory on the "host" the login user owns: where runbooks may write."""
        return self.dir / "root"

    def freeze(self) -> None:
        """SIGSTOP this host's sshd and everything under it: new and open connections hang,
        and running commands stop, as on a machine that stopped answering."""
        for pid in self._tree():
            _signal(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in reversed(self._tree()):
            _signal(pid, signal.SIGCONT)

    def _tree(self) -> list[int]:
        """The sshd's pid and its descendants' (from /proc), parents first."""
        assert self.process is not None
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        tree, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop(0)
            tree.append(pid)
            todo.extend(children.get(pid, []))
        return tree

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class SshLab:
    """Start N sshd hosts; write an inventory and a known_hosts file for them; stop them."""

    def __init__(self, base: Path | None = None, user: str | None = None) -> None:
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="rbx-lab-"))
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.user = user or (LAB_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name)
        self.hosts: list[LabHost] = []
        self.client_key = self.base / "client_key"
        self.known_hosts = self.base / "known_hosts"
        self.inventory = self.base / "inventory.ini"
        self.sudoers: Path | None = None  # the rule allow_sudo wrote

    def start(
        self,
        count: int,
        *,
        prefix: str = "host",
        groups: Mapping[str, Sequence[str]] | None = None,
        host_vars: Mapping[str, str] | None = None,
    ) -> SshLab:
        """Start `count` hosts named prefix1..prefixN, all in group `lab` and in `groups`."""
        if not Path(SSHD).exists():
            raise RuntimeError(f"{SSHD} not found: install openssh-server")
        if os.geteuid() == 0:
            ensure_lab_user(self.user)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        if not self.client_key.exists():
            _keygen(self.client_key)
        names = [f"{prefix}{i}" for i in range(len(self.hosts) + 1, len(self.hosts) + count + 1)]
        new = [self._launch(name) for name in names]
        self.hosts.extend(new)
        for host in new:
            _wait_ready(host)
        self._write_known_hosts()
        self._write_inventory(groups or {}, host_vars or {})
        return self

    def _launch(self, name: str) -> LabHost:
        host_dir = self.base / name
        (host_dir / "root").mkdir(parents=True, exist_ok=True)
        os.chmod(host_dir, 0o755)
        _keygen(host_dir / "host_key")
        authorized = host_dir / "authorized_keys"
        shutil.copyfile(self.client_key.with_suffix(".pub"), authorized)
        os.chmod(authorized, 0o644)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            os.chown(host_dir / "root", entry.pw_uid, entry.pw_gid)
        port = _free_port()
        config = host_dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress 127.0.0.1:{port}",
                    f"HostKey {host_dir / 'host_key'}",
                    f"PidFile {host_dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    f"AllowUsers {self.user}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin no",
                    "UsePAM no",
                    "StrictModes no",
                    "UseDNS no",
                    "PrintMotd no",
                    "PrintLastLog no",
                    "MaxStartups 200:30:400",
                    "MaxSessions 100",
                    "LogLevel ERROR",
                    f"SetEnv RBX_LAB_HOST={name}",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        log = open(host_dir / "sshd.log", "wb")  # noqa: SIM115 - handed to the child process
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return LabHost(
            name,
            port,
            host_dir,
            process,
            app_port=_app_port(),
            green_port=_app_port(),
            proxy_port=_app_port(),
        )

    def _write_known_hosts(self) -> None:
        lines = []
        for host in self.hosts:
            public = (host.dir / "host_key.pub").read_text().split()
            lines.append(f"[127.0.0.1]:{host.port} {public[0]} {public[1]}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def _write_inventory(
        self, groups: Mapping[str, Sequence[str]], host_vars: Mapping[str, str]
    ) -> None:
        extra = "".join(f" {key}={value}" for key, value in host_vars.items())
        lines = ["[lab]"]
        for host in self.hosts:
            lines.append(
                f"{host.name} ansible_host=127.0.0.1 ansible_port={host.port} "
                f"ansible_user={self.user} ansible_ssh_private_key_file={self.client_key} "
                f"lab_root={host.root} app_port={host.app_port} "
                f"app_port_green={host.green_port} proxy_port={host.proxy_port}{extra}"
            )
        for group, members in groups.items():
            lines += ["", f"[{group}]", *members]
        self.inventory.write_text("\n".join(lines) + "\n")

    def allow_sudo(self, password: str | None = None) -> None:
        """Let the lab's dedicated login user run anything through sudo (root only): with
        no password, or with `password`, which becomes the user's own. The rule is a file
        of this lab's, so labs of other test processes keep theirs."""
        if os.geteuid() != 0 or not self.user.startswith("rbx-"):
            raise RuntimeError("allow_sudo needs root and a dedicated lab user")
        if shutil.which("sudo") is None:
            raise RuntimeError("sudo is not installed")
        if password is not None:
            subprocess.run(["chpasswd"], input=f"{self.user}:{password}\n".encode(), check=True)
        tag = "" if password is not None else "NOPASSWD: "
        # sudo skips files in sudoers.d whose names hold a dot
        self.sudoers = SUDOERS / f"{self.user}-{os.getpid()}-{self.base.name}"
        self.sudoers.write_text(f"{self.user} ALL=(ALL) {tag}ALL\n")
        os.chmod(self.sudoers, 0o440)

    def host(self, name: str) -> LabHost:
        return next(h for h in self.hosts if h.name == name)

    def cli_args(self) -> list[str]:
        """The `runbook-exec run` options that point it at this lab: its inventory and its
        known_hosts."""
        return ["-i", str(self.inventory), "--known-hosts", str(self.known_hosts)]

    def ssh_command(self, host: LabHost, command: str) -> list[str]:
        """An OpenSSH client command line that runs `command` on `host` (for checks)."""
        return [
            "ssh",
            "-i",
            str(self.client_key),
            "-p",
            str(host.port),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            f"{self.user}@127.0.0.1",
            command,
        ]

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()

    def remove(self) -> None:
        stop_apps(self)
        self.stop()
        if self.sudoers is not None:
            self.sudoers.unlink(missing_ok=True)
            self.sudoers = None
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> SshLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def ensure_lab_user(name: str = LAB_USER) -> None:
    """Create the lab's login user (root only): shell /bin/sh, an empty home, not locked.
    Safe when test processes in parallel do it at once."""
    home = Path("/var/lib") / name
    for _ in range(50):
        try:
            entry = pwd.getpwnam(name)
            break
        except KeyError:
            options = ["--system", "--no-create-home", "--shell", "/bin/sh", "--home-dir"]
            made = subprocess.run(["useradd", *options, str(home), name], capture_output=True)
            if made.returncode != 0:
                time.sleep(0.1)  # another process holds the user database, or made it
    else:
        raise RuntimeError(f"cannot create the lab user {name}")
    home = Path(entry.pw_dir)
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    # An account whose password field starts with "!" is locked, and sshd refuses it.
    for _ in range(50):
        if not _locked(name):
            return
        if subprocess.run(["usermod", "-p", "*", name], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"cannot unlock the lab user {name}")


def _locked(name: str) -> bool:
    """Whether `name`'s password field in /etc/shadow says the account is locked."""
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return len(fields) < 2 or fields[1].startswith("!")
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rbx-lab", "-f", str(path)],
        check=True,
        capture_output=True,
    )


_GIVEN: set[int] = set()


def _app_port() -> int:
    """A port for a host's app, below the range the kernel gives outgoing connections (the
    app binds it only when a deploy starts it; meanwhile an ssh or database client could
    have been given the same number as its own end), free now, never handed out before."""
    import random

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    # Parallel test processes (pytest-xdist) each draw from a range of their own: an app
    # port is only bound when a deploy starts the app, so binding cannot tell them apart.
    start, end = _share(10000, max(low, 10001))
    while True:
        port = random.randrange(start, end)
        if port in _GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port


def _share(start: int, end: int) -> tuple[int, int]:
    """This process's part of [start, end), when pytest-xdist runs several."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.isdigit() or count <= 1:
        return start, end
    size = (end - start) // count
    return start + int(worker) * size, start + (int(worker) + 1) * size


def _free_port() -> int:
    """A port free now and never handed out before in this process: an sshd binds its port
    a moment after it is chosen, and an app port only when a deploy starts the app, so the
    kernel could offer either again to the next host (an app's health check then reached
    an sshd)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def _wait_ready(host: LabHost) -> None:
    """Until the sshd answers with its banner, or fail with its log."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        assert host.process is not None
        if host.process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", host.port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    log = (host.dir / "sshd.log").read_text(errors="replace")
    raise RuntimeError(f"sshd for {host.name} on port {host.port} did not start:\n{log}")


SAMPLE_APP = """\
import http.server, os, sys, threading

here = os.path.dirname(os.path.abspath(__file__))
version = open(os.path.join(here, "VERSION")).read().strip()
healthy = not os.path.exists(os.path.join(here, "BROKEN"))
try:
    error_rate = float(open(os.path.join(here, "ERROR_RATE")).read())
except OSError:
    error_rate = 0.0
served = {"200": 0, "500": 0}
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/metrics":
            with lock:
                lines = [
                    "# TYPE app_requests_total counter",
                    *(
                        f'app_requests_total{{code="{code}",version="{version}"}} {count}'
                        for code, count in served.items()
                    ),
                ]
            return self.answer(200, "\\n".join(lines) + "\\n", "text/plain; version=0.0.4")
        ok = self.path == "/" or (self.path == "/health" and healthy)
        if self.path == "/":
            with lock:  # every n-th request fails, for an error rate of 1/n
                total = served["200"] + served["500"] + 1
                ok = int(total * error_rate) == int((total - 1) * error_rate)
                served["200" if ok else "500"] += 1
        self.answer(200 if ok else 500, ("" if ok else "unhealthy ") + version + "\\n")

    def answer(self, status, text, kind="text/plain"):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def sample_release(
    folder: Path, version: str, *, healthy: bool = True, error_rate: float = 0.0
) -> Path:
    """A release tarball of the lab's sample app: an HTTP server that answers with its
    VERSION, whose /health fails when built unhealthy, whose / fails `error_rate` of its
    requests, and which counts what it answered at /metrics (`app_requests_total` by
    `code`). Returns the .tar.gz path."""
    import tarfile

    source = folder / f"app-{version}"
    source.mkdir(parents=True, exist_ok=True)
    (source / "VERSION").write_text(version + "\n")
    (source / "app.py").write_text(SAMPLE_APP)
    if not healthy:
        (source / "BROKEN").write_text("this release fails its health check\n")
    if error_rate:
        (source / "ERROR_RATE").write_text(f"{error_rate}\n")
    path = folder / f"app-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for item in sorted(source.iterdir()):
            tar.add(item, arcname=item.name)
    return path


def stop_apps(lab: SshLab) -> None:
    """Stop the sample apps the runbooks started on the lab's hosts: each one whose pid
    file names a process that is still that app (its working folder is on this host). An
    app that died long ago left its pid to be reused, perhaps by another lab's app."""
    for host in lab.hosts:
        for pid_file in [host.root / "app" / "app.pid", *(host.root / "app").glob("slot-*.pid")]:
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.read_text().strip())
                if Path(f"/proc/{pid}/cwd").resolve().is_relative_to(host.root.resolve()):
                    os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ValueError, OSError):  # the blue-green proxy, if started
            prefix = host.root / "nginx"
            pid = int((prefix / "nginx.pid").read_text().strip())
            if str(prefix).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGQUIT)


NGINX_CONF = """\
# The lab's proxy in front of a host's two app slots: its upstream is the file the live
# release holds (blue-green.yml writes it), so a switch is the `current` link and a reload.
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_processes 1;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    upstream app {{ include {app_root}/current/upstream.conf; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://app; }}
    }}
}}
"""


def write_proxy(lab: SshLab) -> None:
    """An nginx configuration for each host's proxy (`lab_root`/nginx/nginx.conf), which
    blue-green.yml starts with its first switch and reloads with each one after."""
    for host in lab.hosts:
        prefix = host.root / "nginx"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        (prefix / "nginx.conf").write_text(
            NGINX_CONF.format(prefix=prefix, app_root=host.root / "app", port=host.proxy_port)
        )
        if os.geteuid() == 0:
            entry = pwd.getpwnam(lab.user)
            for path in (prefix, prefix / "tmp", prefix / "nginx.conf"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
