"""The lab's hosts are real SSH servers that a stock OpenSSH client can log in to."""

from __future__ import annotations

import os
import subprocess

from runbook_exec.testing.lab import LAB_USER, SshLab


def test_each_lab_host_answers_a_real_ssh_login(lab: SshLab) -> None:
    for host in lab.hosts:
        done = subprocess.run(
            lab.ssh_command(host, "echo $RBX_LAB_HOST; id -un"),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        name, user = done.stdout.split()
        assert name == host.name
        assert user == (LAB_USER if os.geteuid() == 0 else lab.user)


def test_login_shell_has_no_start_up_files(lab: SshLab) -> None:
    done = subprocess.run(
        lab.ssh_command(lab.hosts[0], 'echo "$0"; ls -A "$HOME"'),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    if os.geteuid() == 0:
        assert lines[0] in ("sh", "/bin/sh")
        startup = {
            ".profile",
            ".shrc",
            ".bashrc",
            ".bash_profile",
            ".bash_login",
            ".kshrc",
            ".zshrc",
            ".zshenv",
            ".login",
            ".cshrc",
        }
        assert startup.isdisjoint(lines[1:]), lines[1:]


def test_known_hosts_pins_each_host_key(lab: SshLab) -> None:
    other = SshLab()
    try:
        other.start(1)
        # Present the first lab's known_hosts to a host whose key is not in it.
        command = other.ssh_command(other.hosts[0], "true")
        command[command.index(f"UserKnownHostsFile={other.known_hosts}")] = (
            f"UserKnownHostsFile={lab.known_hosts}"
        )
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert done.returncode != 0
        assert "host key" in done.stderr.lower()
    finally:
        other.remove()


def test_hosts_have_their_own_writable_root(lab: SshLab) -> None:
    host = lab.hosts[1]
    done = subprocess.run(
        lab.ssh_command(host, f"echo hello > {host.root}/probe && cat {host.root}/probe"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout == "hello\n", done.stderr
    assert (host.root / "probe").read_text() == "hello\n"
    assert not (lab.hosts[0].root / "probe").exists()
