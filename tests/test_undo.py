"""`runbook-exec rollback RUN_ID` on real sshd hosts: what was live before a run goes back on
exactly the hosts that run switched, by a recorded run of its rollback steps."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from runbook_exec.testing.lab import SshLab

Run = Callable[..., subprocess.CompletedProcess[str]]
Write = Callable[[str, str], Path]
HOSTS = ("host1", "host2", "host3", "host4")

RELEASED = """\
name: released
targets: app
params:
  version: {required: true}
strategy: {batches: [2]}
steps:
  - command: [mkdir, -p, "{{ lab_root }}/app/releases/{{ version }}"]
  - name: Activate
    release: {root: "{{ lab_root }}/app", activate: "{{ version }}"}
    register: activated
rollback:
  - name: Back
    release: {root: "{{ lab_root }}/app", activate: previous}
    when: activated is defined and activated.status == 'ok'
  - name: Note it
    shell: echo undone >> {{ lab_root | quote }}/undone
    when: activated is defined
"""


def live(hosts: SshLab, name: str) -> str:
    link = hosts.host(name).root / "app" / "current"
    return str(link.readlink()).removeprefix("releases/") if link.is_symlink() else ""


def last_run(runbook_exec: Run) -> str:
    return str(json.loads(runbook_exec("runs", "--json").stdout)["runs"][0]["run_id"])


def test_rollback_of_a_run_puts_back_exactly_the_hosts_it_switched(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    path = write("rb.yml", RELEASED)
    for version, where in (("1", ()), ("2", ()), ("3", ("--limit", "host1"))):
        done = runbook_exec("run", path, "-e", f"version={version}", *where)
        assert done.returncode == 0, done.stdout + done.stderr
    third = last_run(runbook_exec)
    root = hosts.host("host1").root / "app"
    # `plan` says what `activate: previous` means on each host, from the record.
    planned = runbook_exec("plan", path, "-i", hosts.inventory, "-e", "version=4")
    assert f"host1: {root} 3 → 2" in planned.stdout, planned.stdout
    assert f"host2: {hosts.host('host2').root / 'app'} 2 → 1" in planned.stdout

    dry = runbook_exec("rollback", "--dry-run")  # the newest run that switched a release
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"rollback of run {third}" in dry.stdout
    assert f"host1: {root} 3 → 2" in dry.stdout and "host2:" not in dry.stdout
    assert last_run(runbook_exec) == third  # a dry run records nothing

    done = runbook_exec("rollback", "-m", "3 misbehaves")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [live(hosts, h) for h in HOSTS] == ["2", "2", "2", "2"]  # h2-h4 untouched
    # Its rollback steps saw what the undone run registered on host1.
    assert (hosts.host("host1").root / "undone").read_text() == "undone\n"
    assert not any((hosts.host(h).root / "undone").exists() for h in HOSTS[1:])
    undoing = last_run(runbook_exec)
    shown = json.loads(runbook_exec("show", undoing, "--json").stdout)
    assert shown["status"] == "succeeded" and {s["host"] for s in shown["host_steps"]} == {"host1"}
    record = {
        r["host"]: r for r in json.loads(runbook_exec("releases", "--json").stdout)["releases"]
    }
    assert (record["host1"]["live"], record["host1"]["previous"]) == ("2", "1")

    # Undoing it again finds host1 on 2 already: nothing to do, nothing run.
    again = runbook_exec("rollback", third)
    assert again.returncode == 3 and "already back" in again.stderr


def test_a_host_changed_since_is_refused_by_name_unless_forced(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    path = write("rb.yml", RELEASED)
    for version in ("1", "2"):
        assert runbook_exec("run", path, "-e", f"version={version}").returncode == 0
    second = last_run(runbook_exec)
    assert runbook_exec("run", path, "-e", "version=3", "--limit", "host2").returncode == 0
    third = last_run(runbook_exec)

    refused = runbook_exec("rollback", second)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert f"host2: {hosts.host('host2').root / 'app'} was switched to 3 by run {third}" in (
        refused.stderr
    )
    assert [live(hosts, h) for h in HOSTS] == ["2", "3", "2", "2"]  # nothing was done
    assert last_run(runbook_exec) == third

    forced = runbook_exec("rollback", second, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert [live(hosts, h) for h in HOSTS] == ["1", "1", "1", "1"]


def test_a_run_that_has_not_ended_is_undone_by_cancel_not_rollback(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    gated = RELEASED.replace(
        "strategy: {batches: [2]}",
        'strategy:\n  batches: [2]\n  between_batches: [{approve: "go on?"}]',
    )
    path = write("rb.yml", gated)
    assert runbook_exec("run", path, "-e", "version=1").returncode == 3
    waiting = last_run(runbook_exec)
    refused = runbook_exec("rollback", waiting)
    assert refused.returncode == 3 and f"cancel {waiting} --rollback" in refused.stderr
    assert runbook_exec("rollback", "no-such-run").returncode == 2


def test_a_host_switched_away_and_back_since_is_not_in_the_way(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    path = write("rb.yml", RELEASED)
    for version in ("1", "2"):
        assert runbook_exec("run", path, "-e", f"version={version}").returncode == 0
    second = last_run(runbook_exec)
    for version in ("3", "2"):  # another run moves host2 away, and back to what R2 left
        assert (
            runbook_exec("run", path, "-e", f"version={version}", "--limit", "host2").returncode
            == 0
        )
    done = runbook_exec("rollback", second)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [live(hosts, h) for h in HOSTS] == ["1", "1", "1", "1"]
