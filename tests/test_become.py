"""Becoming root through sudo with a password, as a site whose sudo asks for one: the
password from -K on a terminal, from RUNBOOK_EXEC_BECOME_PASSWORD, or from a host's own
`ansible_become_password`; for SSH steps and Ansible steps alike; never recorded, never
seen by the command, and enough to end a command that timed out. Hosts log in a user of
their own (`rbx-sudo`) whose sudo rule asks for its password."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import on_a_terminal, wait_until
from runbook_exec.testing.lab import SshLab

Run = Callable[..., subprocess.CompletedProcess[str]]
Write = Callable[[str, str], Path]

PASSWORD = "s3cret pass-phrase"
RUNBOOK = """\
name: become
targets: lab
steps:
  - name: Who
    shell: cat; id -u
    register: who
  - name: Module
    module:
      name: ansible.builtin.command
      args: {cmd: id -u}
  - name: Mark
    shell: echo {{ who.stdout }} > /tmp/rbx-sudo-{{ inventory_hostname }}
"""

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("sudo") is None,
    reason="needs root (to make a user whose sudo asks for a password) and sudo installed",
)


@pytest.fixture(scope="module")
def sudo_lab() -> Iterator[SshLab]:
    """Two hosts logging in `rbx-sudo`, who may run anything through sudo with PASSWORD."""
    with SshLab(user="rbx-sudo") as lab:
        lab.start(2, prefix="sudo", host_vars={"ansible_become": "true"})
        lab.allow_sudo(PASSWORD)
        yield lab


@pytest.fixture
def become(cli: Run, sudo_lab: SshLab, tmp_path: Path) -> Run:
    """`runbook-exec` against the sudo lab, with a store of the test's own."""
    db = f"sqlite:///{tmp_path / 'state.db'}"

    def _run(
        *args: str | Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        command, *rest = args
        where: list[str | Path] = []
        if command in ("run", "check") and "-i" not in rest:
            where += ["-i", sudo_lab.inventory]
        if command == "run":
            where += ["--known-hosts", sudo_lab.known_hosts]
        return cli(command, *rest, *where, "--db", db, env=env)

    for name in ("sudo1", "sudo2"):
        Path(f"/tmp/rbx-sudo-{name}").unlink(missing_ok=True)
    return _run


def marks() -> list[str]:
    return [Path(f"/tmp/rbx-sudo-{name}").read_text() for name in ("sudo1", "sudo2")]


def outputs(become: Run, run_id: str) -> dict[str, list[dict[str, object]]]:
    """Each host's host-steps, as `show --json` gives them."""
    shown = json.loads(become("show", run_id, "--json").stdout)
    steps: dict[str, list[dict[str, object]]] = {}
    for step in shown["host_steps"]:
        steps.setdefault(step["host"], []).append(step)
    return steps


def test_without_the_password_sudo_says_it_needs_one(become: Run, write: Write) -> None:
    done = become("run", write("rb.yml", RUNBOOK), "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "a password is required" in done.stdout + done.stderr
    assert not Path("/tmp/rbx-sudo-sudo1").exists()


def test_the_password_from_the_environment_serves_ssh_and_ansible_steps(
    become: Run, write: Write, tmp_path: Path
) -> None:
    done = become(
        "run", write("rb.yml", RUNBOOK), "--json", env={"RUNBOOK_EXEC_BECOME_PASSWORD": PASSWORD}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert marks() == ["0\n", "0\n"]  # root, and `cat` read nothing: not the password
    run_id = json.loads(done.stdout)["run_id"]
    steps = outputs(become, run_id)
    assert [s["status"] for s in steps["sudo1"]] == ["ok", "ok", "ok"]
    assert PASSWORD not in json.dumps(steps)
    assert PASSWORD.encode() not in (tmp_path / "state.db").read_bytes()


def test_a_wrong_password_fails_by_name_and_a_hosts_own_password_wins(
    become: Run, write: Write, sudo_lab: SshLab, tmp_path: Path
) -> None:
    wrong = {"RUNBOOK_EXEC_BECOME_PASSWORD": "not it"}
    done = become("run", write("rb.yml", RUNBOOK), env=wrong)
    assert done.returncode == 1
    assert "incorrect password" in done.stdout + done.stderr
    # The inventory's ansible_become_password beats the one given to the run, for SSH and
    # Ansible steps alike, as it does for ansible-playbook.
    inventory = tmp_path / "own.ini"
    inventory.write_text(
        sudo_lab.inventory.read_text().replace(
            "ansible_become=true", f"ansible_become=true ansible_become_password='{PASSWORD}'"
        )
    )
    runbook = write("rb.yml", RUNBOOK)
    done = become("run", runbook, "--json", "-i", str(inventory), env=wrong)
    assert done.returncode == 0, done.stdout + done.stderr
    assert marks() == ["0\n", "0\n"]
    assert PASSWORD not in json.dumps(outputs(become, json.loads(done.stdout)["run_id"]))


def test_a_timed_out_command_as_root_is_ended_with_the_password(become: Run, write: Write) -> None:
    runbook = write(
        "slow.yml",
        "name: slow\ntargets: sudo1\nsteps:\n"
        "  - shell: echo $$ > /tmp/rbx-sudo-sudo1; exec sleep 300\n    timeout: 2s\n",
    )
    done = become("run", runbook, env={"RUNBOOK_EXEC_BECOME_PASSWORD": PASSWORD})
    assert done.returncode == 1, done.stdout + done.stderr
    pid = int(Path("/tmp/rbx-sudo-sudo1").read_text())
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 15)


def test_ask_become_pass_asks_on_the_terminal_and_refuses_without_one(
    become: Run, write: Write, sudo_lab: SshLab, tmp_path: Path
) -> None:
    runbook = write("rb.yml", RUNBOOK)
    db = f"sqlite:///{tmp_path / 'state.db'}"
    command = [
        str(Path(sys.executable).with_name("runbook-exec")),
        "run",
        str(runbook),
        *sudo_lab.cli_args(),
        "--db",
        db,
        "-K",
        "--no-input",
    ]
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / ".state")}
    code, seen, answered = on_a_terminal(
        command, tmp_path, env, PASSWORD.encode() + b"\n", prompt=b"BECOME password:"
    )
    assert answered and code == 0, seen.decode(errors="replace")
    assert PASSWORD.encode() not in seen  # not echoed
    assert marks() == ["0\n", "0\n"]
    # Not on a terminal: refused before anything is done.
    Path("/tmp/rbx-sudo-sudo1").unlink()
    done = become("run", runbook, "-K")
    assert done.returncode == 2
    assert "-K asks on a terminal" in done.stderr
    assert not Path("/tmp/rbx-sudo-sudo1").exists()


def test_a_become_method_other_than_sudo_is_refused_for_command_steps(
    become: Run, write: Write, sudo_lab: SshLab, tmp_path: Path
) -> None:
    inventory = tmp_path / "su.ini"
    inventory.write_text(
        sudo_lab.inventory.read_text().replace(
            "ansible_become=true", "ansible_become=true ansible_become_method=su"
        )
    )
    done = become("run", write("rb.yml", RUNBOOK), "-i", str(inventory))
    assert done.returncode == 2
    assert "host sudo1: become method 'su' (from its inventory) is not supported" in done.stderr
    assert not Path("/tmp/rbx-sudo-sudo1").exists()
    # A runbook of Ansible steps only leaves the method to Ansible.
    only_ansible = write(
        "module.yml",
        "name: m\ntargets: lab\nsteps:\n  - module:\n      name: ansible.builtin.ping\n",
    )
    checked = become("check", only_ansible, "-i", str(inventory))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_uploads_and_templates_land_where_only_the_become_user_may_write(
    become: Run, write: Write
) -> None:
    """As with Ansible's copy: staged privately as the login user, put in place as root."""
    import tempfile

    dest = Path(tempfile.mkdtemp(prefix="rbx-sudo-dest-"))  # root's, 0755 below
    dest.chmod(0o755)
    try:
        write("payload.txt", "payload\n")
        write("conf.j2", "host={{ inventory_hostname }}\n")
        runbook = write(
            "files.yml",
            "name: files\ntargets: sudo1\nsteps:\n"
            f"  - upload: {{src: payload.txt, dest: {dest}/payload.txt, mode: '0640'}}\n"
            f"  - template: {{src: conf.j2, dest: {dest}/conf}}\n",
        )
        done = become("run", runbook, env={"RUNBOOK_EXEC_BECOME_PASSWORD": PASSWORD})
        assert done.returncode == 0, done.stdout + done.stderr
        payload = dest / "payload.txt"
        assert payload.read_text() == "payload\n"
        assert (payload.stat().st_uid, payload.stat().st_mode & 0o777) == (0, 0o640)
        assert (dest / "conf").read_text() == "host=sudo1\n"
        assert not list(Path("/tmp").glob("rbx-upload-*"))  # nothing staged is left
    finally:
        shutil.rmtree(dest)
