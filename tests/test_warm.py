"""The warm controller (`runbook-exec warm`): a command started through it is the caller's
own — directory, environment, umask, streams, exit code, signals — on real hosts; a caller
that dies stops its run safely; only its own user and only unchanged code are served.

Scenarios that also run through it, beside their cold runs: every step kind, a playbook
step, bad input, exit codes, gates on and off a terminal, Ctrl-C, secrets on resume.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import query, wait_until
from runbook_exec.processes import alive
from runbook_exec.testing.lab import LAB_USER, SshLab
from runbook_exec.warm import ask
from runbook_exec.wire import send
from warmserver import WarmController

Run = Callable[..., subprocess.CompletedProcess[str]]
Write = Callable[[str, str], Path]
BIN = Path(sys.executable).parent
COMMAND = str(BIN / "runbook-exec")

SLOW = """\
name: slow
targets: app
steps:
  - name: First
    shell: echo x >> {{ lab_root | quote }}/first
  - name: Slow
    shell: sleep 3
  - name: Last
    shell: echo x >> {{ lab_root | quote }}/last
"""


@pytest.fixture
def warm(tmp_path: Path) -> Iterator[Callable[..., WarmController]]:
    """Start warm controllers for the test (each in a folder of its own); stopped after it."""
    started: list[WarmController] = []

    def _start(*args: str) -> WarmController:
        controller = WarmController(tmp_path / f"warm{len(started)}", *args).start()
        started.append(controller)
        return controller

    yield _start
    for controller in started:
        controller.stop()


def inventory_args(hosts: SshLab) -> list[str]:
    return hosts.cli_args()


def test_a_run_through_it_has_the_callers_directory_environment_umask_and_exit_code(
    warm: Callable[..., WarmController], hosts: SshLab, tmp_path: Path
) -> None:
    controller = warm()
    work = tmp_path / "work"
    work.mkdir()
    (work / "rb.yml").write_text(
        "name: warm\ntargets: app\n"
        "params:\n  token: {type: str, secret: true, required: true, env: RBX_TOKEN}\n"
        "steps:\n  - shell: printf %s {{ token | quote }} > {{ lab_root | quote }}/token\n"
    )
    process = subprocess.Popen(
        [COMMAND, "run", "rb.yml", *inventory_args(hosts), "--db", "sqlite:///state.db"],
        cwd=work,  # relative paths are the caller's
        env={
            **os.environ,
            **controller.env,
            "RBX_TOKEN": "w4rm-s3cret",
            "RUNBOOK_EXEC_OPERATOR": "alice",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.umask(0o077),
    )
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, out + err
    assert "succeeded (4 ok)" in out and "w4rm-s3cret" not in out + err
    assert controller.served() == 1
    assert all(
        (hosts.host(h).root / "token").read_text() == "w4rm-s3cret" for h in ("host1", "host4")
    )
    (run,) = query(f"sqlite:///{work / 'state.db'}", "SELECT operator, pid FROM runs")
    assert run["operator"] == "alice"
    assert run["pid"] not in (process.pid, controller.process.pid)  # a process of its own
    assert (work / "state.db").stat().st_mode & 0o777 == 0o600  # the caller's umask


def test_exit_codes_and_output_are_those_of_a_cold_start(
    warm: Callable[..., WarmController], hosts: SshLab, write: Write, tmp_path: Path
) -> None:
    controller = warm()
    failing = write("fail.yml", "name: f\ntargets: app\nsteps:\n  - shell: 'false'\n")
    gated = write(
        "gate.yml",
        "name: g\ntargets: app\nstrategy:\n  batches: [1, 3]\n  between_batches:\n"
        "    - approve: go?\nsteps:\n  - shell: 'true'\n",
    )
    cases = [
        (["--version"], 0),
        (["run", "missing.yml", *inventory_args(hosts)], 2),
        (["run", str(failing), *inventory_args(hosts), "--db", f"sqlite:///{tmp_path}/a.db"], 1),
        (["run", str(gated), *inventory_args(hosts), "--db", f"sqlite:///{tmp_path}/b.db"], 3),
        (["runs", "--json", "--db", f"sqlite:///{tmp_path}/a.db"], 0),
        (["warmup-typo"], 2),
    ]
    for args, code in cases:
        warm_done = subprocess.run(
            [COMMAND, *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, **controller.env, "COLUMNS": "120"},
            timeout=120,
        )
        assert warm_done.returncode == code, (args, warm_done.stdout, warm_done.stderr)
        if args[0] in ("--version", "warmup-typo") or "missing.yml" in args:
            cold = subprocess.run(
                [COMMAND, *args],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                env={**os.environ, "COLUMNS": "120"},
            )
            assert (warm_done.stdout, warm_done.stderr) == (cold.stdout, cold.stderr), args
    assert controller.served() == len(cases)


def test_a_caller_killed_with_sigkill_stops_its_run_safely_and_resume_finishes_it(
    warm: Callable[..., WarmController], hosts: SshLab, write: Write, tmp_path: Path
) -> None:
    controller = warm()
    db = f"sqlite:///{tmp_path}/state.db"
    caller = subprocess.Popen(
        [COMMAND, "run", str(write("rb.yml", SLOW)), *inventory_args(hosts), "--db", db],
        env={**os.environ, **controller.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: (hosts.host("host4").root / "first").exists())
    caller.kill()
    caller.wait()

    def stopped() -> bool:
        rows = query(db, "SELECT status FROM runs")
        return bool(rows) and rows[0]["status"] == "interrupted"

    wait_until(stopped)  # the run was told, as by Ctrl-C: it ended its step and stopped
    assert not any((hosts.host(h).root / "last").exists() for h in ("host1", "host4"))
    (run,) = query(db, "SELECT id, pid FROM runs")
    wait_until(lambda: not alive(int(run["pid"])))
    resumed = subprocess.run(
        [COMMAND, "resume", str(run["id"]), "--db", db],
        capture_output=True,
        text=True,
        env={**os.environ, **controller.env},
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert all((hosts.host(h).root / "last").read_text() == "x\n" for h in ("host1", "host4"))


def test_ctrl_c_before_the_command_has_started_is_held_and_passed_on(
    warm: Callable[..., WarmController], tmp_path: Path
) -> None:
    controller = warm()
    assert controller.process is not None
    os.kill(controller.process.pid, signal.SIGSTOP)  # it will not answer for now
    try:
        caller = subprocess.Popen(
            [COMMAND, "runs", "--db", f"sqlite:///{tmp_path}/state.db"],
            env={**os.environ, **controller.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def connected() -> bool:
            fds = Path(f"/proc/{caller.pid}/fd")
            return any(os.readlink(fd).startswith("socket:") for fd in fds.iterdir())

        wait_until(connected)
        time.sleep(0.5)  # and has sent its request
        caller.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert caller.poll() is None  # held for the command, which has not started
    finally:
        os.kill(controller.process.pid, signal.SIGCONT)
    out, err = caller.communicate(timeout=60)
    assert caller.returncode == 130, out + err
    assert "interrupted" in err and "Traceback" not in err
    assert controller.served() == 1


def test_stopping_the_controller_leaves_a_running_command_to_finish(
    warm: Callable[..., WarmController], hosts: SshLab, write: Write, tmp_path: Path
) -> None:
    controller = warm()
    caller = subprocess.Popen(
        [
            COMMAND,
            "run",
            str(write("rb.yml", SLOW)),
            *inventory_args(hosts),
            "--db",
            f"sqlite:///{tmp_path}/state.db",
        ],
        env={**os.environ, **controller.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: (hosts.host("host1").root / "first").exists())
    stopped = subprocess.run(
        [COMMAND, "warm", "stop"],
        capture_output=True,
        text=True,
        env={**os.environ, **controller.env},
    )
    assert stopped.returncode == 0 and "stopped the warm controller" in stopped.stdout
    assert controller.process is not None and controller.process.wait(timeout=10) == 0
    assert not controller.socket.exists()
    out, err = caller.communicate(timeout=120)
    assert caller.returncode == 0, out + err
    assert (hosts.host("host4").root / "last").exists()
    cold = subprocess.run(  # with none running, commands start cold
        [COMMAND, "warm", "status"],
        capture_output=True,
        text=True,
        env={**os.environ, **controller.env},
    )
    assert cold.returncode == 1 and "no warm controller is running" in cold.stdout


def test_start_status_stop_and_idle_timeout(tmp_path: Path) -> None:
    folder = tmp_path / "w"
    env = {**os.environ, **WarmController(folder).env}

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [COMMAND, "warm", *args], capture_output=True, text=True, env=env, timeout=60
        )

    started = command("start", "--idle-timeout", "3s")
    assert started.returncode == 0 and "warm controller ready (pid" in started.stdout, (
        started.stderr
    )
    pid = int(started.stdout.split("pid ")[1].split(",")[0])
    assert os.stat(folder).st_mode & 0o777 == 0o700
    assert os.stat(folder / "warm.sock").st_mode & 0o777 == 0o600
    again = command("start")
    assert again.returncode == 0 and f"already running (pid {pid}" in again.stdout
    status = command("status")
    assert status.returncode == 0 and f"pid {pid}" in status.stdout
    wait_until(lambda: not alive(pid), 20)  # idle for 3s: it stops
    assert "idle for 3s: stopping" in (folder / "warm.sock.log").read_text()
    assert command("status").returncode == 1
    assert command("stop").stdout.startswith("no warm controller was running")
    bad = command("start", "--idle-timeout", "soon")
    assert bad.returncode == 2 and "--idle-timeout" in bad.stderr


def test_by_default_the_socket_is_in_a_private_folder_of_its_own(tmp_path: Path) -> None:
    cache = tmp_path / ".cache" / "runbook-exec"
    cache.mkdir(parents=True)  # as the inventory cache leaves it: 0755
    env = {**os.environ, "HOME": str(tmp_path), "RUNBOOK_EXEC_NO_WARM": ""}
    for name in ("XDG_RUNTIME_DIR", "RUNBOOK_EXEC_WARM_SOCKET"):
        env.pop(name, None)
    try:
        started = subprocess.run(
            [COMMAND, "warm", "start"], capture_output=True, text=True, env=env, timeout=60
        )
        assert started.returncode == 0, started.stdout + started.stderr
        (sock,) = (cache / "warm").glob("*.sock")
        assert os.stat(cache / "warm").st_mode & 0o777 == 0o700
        assert str(sock) in started.stdout
        done = subprocess.run([COMMAND, "--version"], capture_output=True, text=True, env=env)
        assert (
            done.returncode == 0
            and "1 command(s) started"
            in subprocess.run(
                [COMMAND, "warm", "status"], capture_output=True, text=True, env=env
            ).stdout
        )
    finally:
        subprocess.run([COMMAND, "warm", "stop"], capture_output=True, env=env, timeout=60)


def test_a_folder_others_can_enter_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    env = {**os.environ, **WarmController(folder).env}
    started = subprocess.run(
        [COMMAND, "warm", "start"], capture_output=True, text=True, env=env, timeout=60
    )
    assert started.returncode == 3
    assert f"{folder} must belong to you and be private (chmod 700)" in started.stderr
    assert list(folder.iterdir()) == []  # neither a socket nor a log left there


def test_a_socket_left_behind_is_ignored_and_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir(mode=0o700)
    path = folder / "warm.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening: what a killed controller leaves
    env = {**os.environ, **WarmController(folder).env}
    done = subprocess.run([COMMAND, "--version"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.startswith("runbook-exec ")
    with WarmController(folder) as controller:
        assert controller.status() is not None


def test_changed_code_is_refused_and_the_controller_stops(
    warm: Callable[..., WarmController],
) -> None:
    controller = warm()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(controller.socket))
        send(
            sock,
            {
                "op": "run",
                "argv": ["runbook-exec", "--version"],
                "cwd": "/",
                "env": {},
                "umask": 0o22,
                "fingerprint": "code as it was before an upgrade",
            },
            [0, 1, 2],
        )
        with sock.makefile("rb") as replies:
            reply = json.loads(replies.readline())
    assert "the code changed since the warm controller started" in reply["note"]
    assert controller.process is not None and controller.process.wait(timeout=10) == 0
    assert "warm: refused: the code changed" in controller.log()
    assert not controller.socket.exists()


def test_a_malformed_request_is_refused_and_the_controller_goes_on(
    warm: Callable[..., WarmController],
) -> None:
    controller = warm()
    for garbage in (b"hello", b"\x00\x00\x00\x05{}{}{", b""):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(controller.socket))
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1024)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(controller.socket))
        send(sock, {"op": "run", "argv": "not a list", "cwd": "/", "env": {}, "umask": 18})
        with sock.makefile("rb") as replies:
            assert json.loads(replies.readline()) == {"note": "a request it could not read"}
    assert controller.served() == 0
    assert controller.log().count("warm: refused: a request it could not read") == 4


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_is_refused(lab: SshLab) -> None:
    base = Path(tempfile.mkdtemp(prefix="rbx-warm-"))
    try:
        with WarmController(base / "w") as controller:
            for path in (base, controller.folder):
                os.chmod(path, 0o755)  # even if someone opens the way in
            os.chmod(controller.socket, 0o666)
            reply = as_user(pwd.getpwnam(LAB_USER).pw_uid, str(controller.socket))
            assert "refused uid" in reply and "serves only its own user" in reply, reply
            assert controller.served() == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_user(uid: int, path: str) -> str:
    """Ask the controller for its status from a process that has become `uid`."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            os.write(write_end, json.dumps(ask("status", path)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as replies:
        reply = replies.read().decode()
    os.waitpid(pid, 0)
    return reply
