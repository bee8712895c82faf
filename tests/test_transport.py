"""The SSH transport on a real host: commands mean what `sh -c` means, whichever way the
login shell is asked to run them; a command never outlives the channel it was started on;
two attempts at a step never run on a host at once."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from runbook_exec.inventory import Host, select_hosts
from runbook_exec.testing.lab import SshLab
from runbook_exec.transports.guard import Mark
from runbook_exec.transports.ssh import CommandResult, SshOptions, connect

CASES = [
    ("echo a; exit 7", 7, "a\n", ""),
    ("printf '%s|' \"$@\" x; echo", 0, "x|\n", ""),  # no positional parameters leak in
    ("f() { echo in-f; return 3; }; f", 3, "in-f\n", ""),
    ("cd /; pwd", 0, "/\n", ""),
    ("echo out; echo err >&2; false", 1, "out\n", "err\n"),
    ('x=1; [ "$x" = 1 ] && echo set', 0, "set\n", ""),
    # nothing of the guard around it is left for the command to see
    ("set | grep -c '^rbx_'; command -v rbx_kill || echo none", 0, "0\nnone\n", ""),
    # signals as sh -c leaves them: SIGINT is not ignored (as it is in a background job)
    ("sh -c 'kill -INT $$; exit 0'; echo $?", 0, "130\n", ""),
]


def test_commands_mean_what_sh_c_means_before_and_after_the_login_shell_is_known(
    lab: SshLab,
) -> None:
    (host,) = select_hosts([lab.inventory], "web1", None)

    async def scenario() -> tuple[bool | None, list[CommandResult], CommandResult]:
        session = await connect(host, SshOptions(lab.known_hosts))
        try:
            first = [await session.run(command, 30) for command, *_ in CASES]
            again = [await session.run(command, 30) for command, *_ in CASES]
            broken = await session.run("if then fi (", 30)
            return session.login_shell_is_sh, first + again, broken
        finally:
            await session.close()

    known, results, broken = asyncio.run(scenario())
    if os.geteuid() == 0:
        assert known is True  # the lab's user logs in with /bin/sh
    expected = [(rc, out, err) for _, rc, out, err in CASES] * 2
    assert [(r.rc, r.stdout, r.stderr) for r in results] == expected
    assert broken.rc == 2 and "syntax error" in broken.stderr.lower() and broken.stdout == ""


def test_a_command_that_reads_its_input_reads_nothing_and_does_not_wait(lab: SshLab) -> None:
    (host,) = select_hosts([lab.inventory], "web2", None)

    async def scenario() -> list[CommandResult]:
        session = await connect(host, SshOptions(lab.known_hosts))
        try:  # the first command, then one after the login shell is known
            return [await session.run("cat; echo read-$?", 10) for _ in range(2)]
        finally:
            await session.close()

    results = asyncio.run(scenario())
    assert [(r.rc, r.stdout, r.timed_out) for r in results] == [(0, "read-0\n", False)] * 2


def logged(log: Path, seconds: float, *, ignore_term: bool = False) -> str:
    """A command that notes on the host when it starts, is ended (TERM) and ends, with the
    host's clock. Writes to the closed channel fail quietly (no SIGPIPE), so only TERM or
    KILL can stop it."""
    # The TERM may come twice (the watchdog and whoever ended the command first): the
    # trap ignores the second, or it would cut its own `date` short.
    on_term = (
        "''" if ignore_term else f"'trap \"\" TERM; echo stop $(date +%s.%N) >> {log}; exit 143'"
    )
    return (
        f"trap '' PIPE; trap {on_term} TERM; echo start $(date +%s.%N) >> {log}; "
        f"sleep {seconds} & wait $!; sleep 0 & wait $!; echo end $(date +%s.%N) >> {log}"
    )


def events(log: Path) -> list[tuple[str, float]]:
    """What `logged` noted, in order; a repeated "stop" once (sudo passes on the TERM it
    receives to its command, which then hears it twice, once in each shell)."""
    if not log.exists():
        return []
    noted: list[tuple[str, float]] = []
    for line in log.read_text().splitlines():
        what, when = line.split()
        if not (what == "stop" and noted and noted[-1][0] == "stop"):
            noted.append((what, float(when)))
    return noted


def running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def settle(check: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.1)


def lab_host(lab: SshLab, name: str, *, become: bool = False) -> Host:
    (host,) = select_hosts([lab.inventory], name, None)
    return replace(host, vars={**host.vars, "ansible_become": True}) if become else host


BECOME = [
    pytest.param(False, id="login-user"),
    pytest.param(
        True,
        id="become",
        marks=pytest.mark.skipif(
            os.geteuid() != 0 or shutil.which("sudo") is None,
            reason="needs root (to grant the lab user sudo) and sudo installed",
        ),
    ),
]


@pytest.mark.parametrize("become", BECOME)
def test_a_timed_out_command_is_ended_on_the_host_term_then_kill(
    hosts: SshLab, become: bool
) -> None:
    if become:
        hosts.allow_sudo()
    log = hosts.host("host1").root / "log"
    host = lab_host(hosts, "host1", become=become)

    async def scenario() -> list[CommandResult]:
        session = await connect(host, SshOptions(hosts.known_hosts))
        try:
            # Attempt 2 of the same step waits until attempt 1 is gone.
            polite = await session.run(logged(log, 30), 1, Mark("r1", "steps.0", 1))
            stubborn = await session.run(
                logged(log, 31.5, ignore_term=True), 4, Mark("r1", "steps.0", 2)
            )
            return [polite, stubborn]
        finally:
            await session.close()

    results = asyncio.run(scenario())
    assert [r.timed_out for r in results] == [True, True]
    settle(lambda: not running("sleep 31.5") and len(events(log)) >= 3)
    assert not running("sleep 31.5"), "a command that ignores TERM outlived its timeout"
    assert [w for w, _ in events(log)] == ["start", "stop", "start"]


def test_a_command_whose_controller_vanishes_is_ended_on_the_host(hosts: SshLab) -> None:
    """The connection drops without a word, as when the controller is killed with -9."""
    log = hosts.host("host2").root / "log"
    host = lab_host(hosts, "host2")

    async def scenario() -> None:
        session = await connect(host, SshOptions(hosts.known_hosts))
        started = asyncio.ensure_future(session.run(logged(log, 30), 60))
        while not events(log):
            await asyncio.sleep(0.05)
        session.connection.abort()
        await asyncio.wait([started], timeout=10)

    asyncio.run(scenario())
    settle(lambda: len(events(log)) >= 2)
    time.sleep(0.5)
    assert [w for w, _ in events(log)] == ["start", "stop"]


def test_an_attempt_ends_its_predecessor_still_running_there_before_it_starts(
    hosts: SshLab,
) -> None:
    """Attempt 1's channel stays open (a controller that went away without the connection
    noticing); attempt 2 of the same run and step ends it, then runs: never both at once."""
    log = hosts.host("host3").root / "log"
    host = lab_host(hosts, "host3")

    async def scenario() -> tuple[CommandResult, CommandResult]:
        first, second = [await connect(host, SshOptions(hosts.known_hosts)) for _ in range(2)]
        try:
            earlier = asyncio.ensure_future(
                first.run(logged(log, 30), 60, Mark("r1", "steps.2", 1))
            )
            while not events(log):
                await asyncio.sleep(0.05)
            later = await second.run(logged(log, 0.5), 60, Mark("r1", "steps.2", 2))
            return await earlier, later
        finally:
            await asyncio.gather(first.close(), second.close())

    earlier, later = asyncio.run(scenario())
    assert later.ok, later.stderr
    assert "ending attempt 1 of steps.2, still running here" in later.stderr
    assert earlier.rc == 143
    assert [w for w, _ in events(log)] == ["start", "stop", "start", "end"]
    (_, stopped), (_, started) = events(log)[1:3]
    assert stopped <= started


def test_a_command_of_another_run_waits_for_the_one_running_there(hosts: SshLab) -> None:
    log = hosts.host("host4").root / "log"
    host = lab_host(hosts, "host4")

    async def scenario() -> tuple[CommandResult, CommandResult]:
        first, second = [await connect(host, SshOptions(hosts.known_hosts)) for _ in range(2)]
        try:
            earlier = asyncio.ensure_future(first.run(logged(log, 6), 60, Mark("r1", "steps.0", 1)))
            while not events(log):
                await asyncio.sleep(0.05)
            later = await second.run(logged(log, 0), 60, Mark("r2", "steps.0", 1))
            return await earlier, later
        finally:
            await asyncio.gather(first.close(), second.close())

    earlier, later = asyncio.run(scenario())
    assert earlier.ok and later.ok, (earlier.stderr, later.stderr)
    assert "waiting for run r1 to finish steps.0 here" in later.stderr
    assert [w for w, _ in events(log)] == ["start", "end", "start", "end"]
    assert events(log)[1][1] <= events(log)[2][1]


def test_commands_outside_a_run_take_no_lock(lab: SshLab) -> None:
    """What `releases --check` asks a host does not wait behind a run's command."""
    host = lab_host(lab, "web3")

    async def scenario() -> tuple[CommandResult, CommandResult, bool]:
        first, second = [await connect(host, SshOptions(lab.known_hosts)) for _ in range(2)]
        try:
            earlier = asyncio.ensure_future(first.run("sleep 3", 60, Mark("r1", "steps.0", 1)))
            await asyncio.sleep(0.5)
            unmarked = await second.run("echo free", 60)
            overtook = not earlier.done()  # it answered while the run's command still ran
            return await earlier, unmarked, overtook
        finally:
            await asyncio.gather(first.close(), second.close())

    earlier, unmarked, overtook = asyncio.run(scenario())
    assert earlier.ok and unmarked.stdout == "free\n"
    assert overtook


def test_an_http_check_answered_by_something_else_fails_saying_so() -> None:
    """A port taken by another service (here, one that speaks SSH): a failed check that
    says what answered, not an internal error."""
    import socket
    import threading

    from runbook_exec.transports.http import check_http

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    port = server.getsockname()[1]
    done = asyncio.run(check_http({"url": f"http://127.0.0.1:{port}/health"}, 5))
    server.close()
    assert done.rc == 1 and "not an HTTP answer (BadStatusLine: SSH-2.0" in done.stderr


def test_an_http_check_for_a_version_takes_it_whole() -> None:
    """`contains: "1.0"` is met by "1.0.1"; `equals:` is not (blue-green checks what a
    slot serves with it)."""
    import http.server
    import threading

    from runbook_exec.transports.http import check_http

    class Version(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"1.0.1\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Version)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        assert asyncio.run(check_http({"url": url, "contains": "1.0"}, 5)).ok
        assert asyncio.run(check_http({"url": url, "equals": "1.0.1"}, 5)).ok
        wrong = asyncio.run(check_http({"url": url, "equals": "1.0"}, 5))
    finally:
        server.shutdown()
        server.server_close()
    assert wrong.rc == 1 and "the body is '1.0.1', not '1.0'" in wrong.stderr


def test_a_command_is_its_own_shell_and_what_it_starts_in_the_background_is_its_own(
    hosts: SshLab,
) -> None:
    """`$$` is the shell running the command (so `echo $$ > pidfile; exec daemon` names the
    daemon); a job a command starts in the background and leaves running is not ended when
    the command ends (a daemon started with nohup, say)."""
    host = lab_host(hosts, "host1")

    async def scenario() -> CommandResult:
        session = await connect(host, SshOptions(hosts.known_hosts))
        try:
            mark = Mark("r1", "steps.0", 1)
            await session.run("sleep 107 >/dev/null 2>&1 &", 30, mark)
            return await session.run("echo $$; exec sh -c 'echo $$'", 30, mark)
        finally:
            await session.close()

    same = asyncio.run(scenario())
    first, second = same.stdout.split()
    assert first == second, same.stdout
    time.sleep(0.5)
    assert running("sleep 107"), "a job the command left running was ended with it"
    subprocess.run(["pkill", "-f", "^sleep 107$"], check=False)


def test_a_command_that_waits_its_turn_never_starts_once_its_controller_gave_up(
    hosts: SshLab,
) -> None:
    log = hosts.host("host2").root / "log"
    host = lab_host(hosts, "host2")

    async def scenario() -> CommandResult:
        first, second = [await connect(host, SshOptions(hosts.known_hosts)) for _ in range(2)]
        try:
            earlier = asyncio.ensure_future(first.run(logged(log, 5), 60, Mark("r1", "s.0", 1)))
            while not events(log):
                await asyncio.sleep(0.05)
            late = await second.run(logged(log, 0), 2, Mark("r2", "s.0", 1))  # gives up
            await earlier
            return late
        finally:
            await asyncio.gather(first.close(), second.close())

    late = asyncio.run(scenario())
    assert late.timed_out
    time.sleep(1)
    assert [w for w, _ in events(log)] == ["start", "end"]  # r2's command never ran
