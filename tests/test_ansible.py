"""`playbook:` and `module:` steps through ansible-runner, on real sshd hosts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import wait_until
from runbook_exec.processes import alive
from runbook_exec.testing.lab import SshLab

Run = Callable[..., subprocess.CompletedProcess[str]]
Write = Callable[[str, str], Path]
BIN = Path(sys.executable).parent

MARK = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: Leave a mark
      ansible.builtin.copy:
        content: "{{ greeting }} from {{ inventory_hostname }}\\n"
        dest: "{{ lab_root }}/mark"
    - name: Break on one host
      ansible.builtin.fail: {msg: "broken on purpose"}
      when: inventory_hostname == bad_host
"""


def runbook(steps: str, *, batches: str = "[2]", extra: str = "") -> str:
    return (
        "name: ansible\ntargets: app\nparams:\n  greeting: {default: hello}\n"
        "  bad: {default: none}\n"
        f"strategy:\n  batches: {batches}\n{extra}steps:\n{steps}"
    )


PLAYBOOK_STEP = """\
  - name: Mark
    playbook: playbooks/mark.yml
    vars: {greeting: "{{ greeting }}", bad_host: "{{ bad }}"}
  - name: After
    shell: touch {{ lab_root | quote }}/after
"""


def mark(hosts: SshLab, name: str) -> str:
    path = hosts.host(name).root / "mark"
    return path.read_text() if path.exists() else ""


def tasks_of(runbook_exec: Run, run_id: str) -> list[dict[str, object]]:
    shown = json.loads(runbook_exec("show", run_id, "--json").stdout)
    return shown["task_results"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("launch", ["cold", "warm"], indirect=True)
def test_a_playbook_step_runs_on_each_batch_and_records_every_task(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    write("playbooks/mark.yml", MARK)
    path = write("runbooks/rb.yml", runbook(PLAYBOOK_STEP))
    done = runbook_exec("run", path, "-e", "greeting=hi there", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("host1", "host2", "host3", "host4"):
        assert mark(hosts, name) == f"hi there from {name}\n"
        assert (hosts.host(name).root / "after").exists()
    tasks = tasks_of(runbook_exec, json.loads(done.stdout)["run_id"])
    marks = sorted((t["host"], t["status"]) for t in tasks if t["task"] == "Leave a mark")
    assert marks == [(f"host{i}", "changed") for i in range(1, 5)]  # once per host, no more
    skipped = {t["host"] for t in tasks if t["task"] == "Break on one host"}
    assert skipped == {"host1", "host2", "host3", "host4"}
    shown = runbook_exec("show", json.loads(done.stdout)["run_id"]).stdout
    assert "task Leave a mark changed" in shown


def test_a_failing_task_fails_that_host_only_and_the_batch_policy_applies(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    write("playbooks/mark.yml", MARK)
    stop = runbook_exec(
        "run", write("runbooks/stop.yml", runbook(PLAYBOOK_STEP)), "-e", "bad=host2", "--json"
    )
    assert stop.returncode == 1
    assert json.loads(stop.stdout)["hosts"] == {
        "host1": "stopped",
        "host2": "failed",
        "host3": "not_reached",
        "host4": "not_reached",
    }
    assert "FAILED host2 · Break on one host: broken on purpose" in stop.stderr
    assert "Mark: Mark:" not in stop.stderr
    assert mark(hosts, "host3") == "" and mark(hosts, "host4") == ""

    tolerant = runbook(PLAYBOOK_STEP, extra="  max_fail_percentage: 50\n")
    going = runbook_exec("run", write("runbooks/go.yml", tolerant), "-e", "bad=host2", "--json")
    assert going.returncode == 1  # honest: a host failed
    assert json.loads(going.stdout)["hosts"] == {
        "host1": "ok",
        "host2": "failed",
        "host3": "ok",
        "host4": "ok",
    }
    assert not (hosts.host("host2").root / "after").exists()
    assert (hosts.host("host4").root / "after").exists()


def test_a_failing_module_says_why_in_the_live_view_and_in_show(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    step = (
        "  - name: List\n    module:\n      name: ansible.builtin.command\n"
        "      args: {cmd: ls /nonexistent-rbx-path}\n"
    )
    done = runbook_exec("run", write("ls.yml", runbook(step)), "--json")
    assert done.returncode == 1
    why = "non-zero return code, rc 2: ls: cannot access '/nonexistent-rbx-path'"
    assert f"FAILED host1 · List: {why}" in done.stderr, done.stderr
    assert "List: List:" not in done.stderr
    shown = json.loads(runbook_exec("show", json.loads(done.stdout)["run_id"], "--json").stdout)
    failed = next(s for s in shown["host_steps"] if s["host"] == "host1")
    assert failed["message"].startswith(why), failed["message"]


def test_a_failed_playbook_rolls_back_the_changed_hosts(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    write("playbooks/mark.yml", MARK)
    text = (
        runbook(PLAYBOOK_STEP, batches="[1, 1, 2]").replace(
            "steps:", "on_failure: rollback\nsteps:"
        )
        + "rollback:\n  - module:\n      name: ansible.builtin.file\n"
        # lab_root differs per host: left for Ansible to template on each (one set of args
        # per ansible-playbook run; `check` refuses it otherwise)
        "      args: {path: '{% raw %}{{ lab_root }}{% endraw %}/mark', state: absent}\n"
    )
    done = runbook_exec("run", write("runbooks/rb.yml", text), "-e", "bad=host2", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["status"] == "rolled_back"
    assert mark(hosts, "host1") == "" and mark(hosts, "host2") == ""
    assert mark(hosts, "host3") == "" and not (hosts.host("host3").root / "after").exists()


def test_an_unreachable_host_is_reported_as_unreachable(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    write("playbooks/mark.yml", MARK)
    hosts.host("host3").stop()
    text = runbook(PLAYBOOK_STEP, batches='["100%"]', extra="  max_fail_percentage: 50\n")
    done = runbook_exec("run", write("runbooks/rb.yml", text), "--json")
    assert done.returncode == 1
    record = json.loads(runbook_exec("show", json.loads(done.stdout)["run_id"], "--json").stdout)
    mark_step = {s["host"]: s for s in record["host_steps"] if s["step_name"] == "Mark"}
    assert mark_step["host3"]["status"] == "unreachable"
    assert mark_step["host1"]["status"] == "ok"


def test_vault_encrypted_vars_are_decrypted_with_the_password_file(
    runbook_exec: Run, write: Write, hosts: SshLab, tmp_path: Path
) -> None:
    password = write("vault-pass", "correct horse\n")
    secret = write("playbooks/secret.yml", "api_key: s3cr3t-from-vault\n")
    subprocess.run(
        [
            str(BIN / "ansible-vault"),
            "encrypt",
            str(secret),
            "--vault-password-file",
            str(password),
        ],
        check=True,
        capture_output=True,
    )
    assert "s3cr3t-from-vault" not in secret.read_text()
    write(
        "playbooks/vaulted.yml",
        """\
- hosts: all
  gather_facts: false
  vars_files: [secret.yml]
  tasks:
    - ansible.builtin.copy: {content: "{{ api_key }}", dest: "{{ lab_root }}/key"}
""",
    )
    text = runbook("  - playbook: playbooks/vaulted.yml\n    vault_password_file: vault-pass\n")
    done = runbook_exec("run", write("rb.yml", text))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (hosts.host("host4").root / "key").read_text() == "s3cr3t-from-vault"


def test_a_module_step_restarts_a_process(runbook_exec: Run, write: Write, hosts: SshLab) -> None:
    start = (
        "  - shell: cd {{ lab_root | quote }} && (setsid sleep 300 > /dev/null 2>&1 < /dev/null &"
        " echo $! > pid)\n"
    )
    restart = (
        "  - module:\n      name: ansible.builtin.shell\n      args:\n"
        "        cmd: >-\n          kill $(cat pid);\n"
        "          setsid sleep 300 > /dev/null 2>&1 < /dev/null & echo $! > pid\n"
        # raw: left for Ansible to template on each host
        "        chdir: '{% raw %}{{ lab_root }}{% endraw %}'\n"
    )
    assert runbook_exec("run", write("start.yml", runbook(start))).returncode == 0
    before = (hosts.host("host1").root / "pid").read_text().strip()
    done = runbook_exec("run", write("restart.yml", runbook(restart)))
    assert done.returncode == 0, done.stdout + done.stderr
    after = (hosts.host("host1").root / "pid").read_text().strip()
    assert after != before
    wait_until(lambda: not alive(int(before)))  # kill is asynchronous
    assert Path(f"/proc/{after}").exists()
    for name in ("host1", "host2", "host3", "host4"):
        subprocess.run(["kill", (hosts.host(name).root / "pid").read_text().strip()], check=False)


def test_plan_check_mode_shows_what_a_playbook_would_change_and_changes_nothing(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    write("playbooks/mark.yml", MARK)
    path = write("runbooks/rb.yml", runbook(PLAYBOOK_STEP))
    done = runbook_exec(
        "plan", path, "-i", hosts.inventory, "--check-mode", "--known-hosts", hosts.known_hosts
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "would change" in done.stdout and "Leave a mark" in done.stdout
    assert all(mark(hosts, f"host{i}") == "" for i in range(1, 5))


def test_a_control_master_left_by_another_ansible_run_is_never_reused(
    runbook_exec: Run, write: Write, hosts: SshLab, tmp_path: Path
) -> None:
    """Someone's `ansible` run left a ControlPersist master to host1 (trusting the host by
    its own known_hosts); a playbook step of ours, with a known_hosts that does not know
    host1, must check the key itself and refuse, not ride that connection."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**runbook_exec.env, "HOME": str(home)}  # type: ignore[attr-defined]
    ssh_args = (
        "-o ControlMaster=auto -o ControlPersist=60s "
        f"-o UserKnownHostsFile={hosts.known_hosts} -o StrictHostKeyChecking=yes"
    )
    theirs = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible")),
            "host1",
            "-i",
            str(hosts.inventory),
            "-m",
            "ping",
        ],
        env={**env, "ANSIBLE_SSH_ARGS": ssh_args},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    assert list((home / ".ansible" / "cp").iterdir()), "no control master was left"
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    write("playbooks/mark.yml", MARK)
    book = write(
        "runbooks/one.yml", runbook(PLAYBOOK_STEP).replace("targets: app", "targets: host1")
    )
    ours = subprocess.run(
        [
            str(Path(sys.executable).with_name("runbook-exec")),
            "run",
            str(book),
            "-i",
            str(hosts.inventory),
            "--known-hosts",
            str(empty),
            "--db",
            runbook_exec.db,
        ],  # type: ignore[attr-defined]
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert ours.returncode != 0, ours.stdout + ours.stderr
    assert "host key is known" in ours.stdout + ours.stderr, ours.stdout
    assert mark(hosts, "host1") == ""


def test_module_args_that_differ_per_host_are_refused_before_anything_runs(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    step = (
        "  - name: Note\n    module:\n      name: ansible.builtin.copy\n"
        "      args: {content: x, dest: '{{ lab_root }}/noted'}\n"  # lab_root differs per host
    )
    path = write("per-host.yml", runbook(step))
    checked = runbook_exec("check", path, "-i", hosts.inventory)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "per-host.yml:9: steps[0] (Note): renders differently on different hosts" in (
        checked.stderr
    )
    done = runbook_exec("run", path)
    assert done.returncode == 2 and "renders differently" in done.stderr
    assert not (hosts.host("host1").root / "noted").exists()
    assert json.loads(runbook_exec("runs", "--json").stdout)["runs"] == []
    # Left for Ansible to template on each host, it is one set of args, and runs.
    raw = step.replace("'{{ lab_root }}/noted'", "'{% raw %}{{ lab_root }}{% endraw %}/noted'")
    assert runbook_exec("run", write("raw.yml", runbook(raw))).returncode == 0
    assert (hosts.host("host4").root / "noted").exists()
