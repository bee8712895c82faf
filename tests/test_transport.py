"""The SSH transport on a real host: commands mean what `sh -c` means, whichever way the
login shell is asked to run them."""

from __future__ import annotations

import asyncio
import os

from runbook_exec.inventory import select_hosts
from runbook_exec.testing.lab import SshLab
from runbook_exec.transports.ssh import CommandResult, SshOptions, connect

CASES = [
    ("echo a; exit 7", 7, "a\n", ""),
    ("printf '%s|' \"$@\" x; echo", 0, "x|\n", ""),  # no positional parameters leak in
    ("f() { echo in-f; return 3; }; f", 3, "in-f\n", ""),
    ("cd /; pwd", 0, "/\n", ""),
    ("echo out; echo err >&2; false", 1, "out\n", "err\n"),
    ('x=1; [ "$x" = 1 ] && echo set', 0, "set\n", ""),
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
