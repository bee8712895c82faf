"""Exactly these hosts, on real sshd hosts: each run locks each of its hosts, all or none;
a run that waits, or whose process died, keeps them until it ends; `cancel` ends it; a
rejected gate goes through `on_failure`."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import BACKENDS
from helpers import query, wait_until
from runbook_exec.testing.lab import SshLab
from test_resume import COUNTED, GATED, latest_run, lines, step_status

Run = Callable[..., subprocess.CompletedProcess[str]]
Write = Callable[[str, str], Path]

QUICK = """\
name: quick
targets: app
steps:
  - name: Mark
    shell: echo x >> {{ lab_root | quote }}/quick
"""

GATED_ROLLBACK = """\
name: gated-rollback
targets: app
strategy:
  batches: [1, "100%"]
  between_batches:
    - approve: "Canary healthy? Promote."
on_failure: rollback
steps:
  - name: Change
    shell: echo x >> {{ lab_root | quote }}/changed
rollback:
  - name: Undo
    shell: echo x >> {{ lab_root | quote }}/undone
"""


def run_status(runbook_exec: Run, run_id: str) -> str:
    return str(json.loads(runbook_exec("show", run_id, "--json").stdout)["status"])


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_runs_that_share_a_host_never_overlap_and_others_go_on(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    # Slow enough that the three commands below (each a new process) all happen inside it.
    slow = write("rb.yml", COUNTED.replace("sleep 2", "sleep 8"))
    first = runbook_exec.spawn("run", slow, "--limit", "host1:host2")  # type: ignore[attr-defined]
    try:
        wait_until(lambda: step_status(runbook_exec, "host1", "Slow") == "running")
        holder = latest_run(runbook_exec)["run_id"]
        quick = write("quick.yml", QUICK)
        overlapping = runbook_exec("run", quick, "--limit", "host2")
        elsewhere = runbook_exec("run", quick, "--limit", "host3:host4")
    finally:
        first.wait(timeout=60)
    assert first.returncode == 0
    assert overlapping.returncode == 3, overlapping.stdout + overlapping.stderr
    message = overlapping.stderr
    assert f"run {holder}" in message and "running" in message
    assert "holds host host2" in message and "host1" not in message  # only what they share
    assert lines(hosts, "host2", "quick") == 0
    assert latest_run(runbook_exec)["status"] != "refused"  # the last run: `elsewhere`
    assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr
    assert [lines(hosts, h, "quick") for h in ("host3", "host4")] == [1, 1]
    refused = json.loads(runbook_exec("runs", "--json").stdout)["runs"][1]
    assert refused["status"] == "refused"  # the refused attempt is on record too


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_a_run_waiting_for_approval_keeps_its_hosts_until_cancelled(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    waiting = runbook_exec("run", write("gated.yml", GATED), "--no-input")
    assert waiting.returncode == 3
    run_id = str(latest_run(runbook_exec)["run_id"])
    # host4 is in the batch the gate holds back: untouched, but the waiting run keeps it.
    quick = write("quick.yml", QUICK)
    refused = runbook_exec("run", quick, "--limit", "host4")
    assert refused.returncode == 3
    assert f"run {run_id}" in refused.stderr and "awaiting_approval" in refused.stderr
    assert f"runbook-exec approve {run_id}" in refused.stderr
    assert "stale" not in refused.stderr

    assert runbook_exec("cancel", run_id).returncode == 2  # a reason is required
    cancelled = runbook_exec("cancel", run_id, "-m", "wrong window")
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert "its hosts are free" in cancelled.stdout
    shown = json.loads(runbook_exec("show", run_id, "--json").stdout)
    assert shown["status"] == "cancelled"
    assert "wrong window" in str(shown["message"])
    assert runbook_exec("cancel", run_id, "-m", "again").returncode == 3  # it has ended
    assert runbook_exec("run", quick, "--limit", "host4").returncode == 0
    assert not (hosts.host("host4").root / "done").exists()


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_a_run_whose_process_died_becomes_interrupted_and_keeps_its_hosts(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    path = write("rb.yml", COUNTED)
    process = runbook_exec.spawn("run", path)  # type: ignore[attr-defined]
    wait_until(lambda: step_status(runbook_exec, "host1", "Slow") == "running")
    process.send_signal(signal.SIGKILL)
    process.wait()
    dead = str(latest_run(runbook_exec)["run_id"])

    second = runbook_exec("run", write("quick.yml", QUICK), "--limit", "host3")
    assert second.returncode == 3
    assert f"run {dead}" in second.stderr and "interrupted" in second.stderr
    assert f"runbook-exec resume {dead}" in second.stderr
    shown = json.loads(runbook_exec("show", dead, "--json").stdout)
    assert shown["status"] == "interrupted" and "is gone" in str(shown["message"])

    resumed = runbook_exec("resume", dead)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [lines(hosts, h, "after") for h in ("host1", "host2", "host3", "host4")] == [1] * 4
    assert runbook_exec("run", write("quick.yml", QUICK), "--limit", "host3").returncode == 0


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_a_refused_resume_leaves_the_run_as_it_was(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    process = runbook_exec.spawn("run", write("rb.yml", COUNTED))  # type: ignore[attr-defined]
    wait_until(lambda: step_status(runbook_exec, "host1", "Slow") == "running")
    process.send_signal(signal.SIGKILL)
    process.wait()
    dead = str(latest_run(runbook_exec)["run_id"])
    # Someone forces host2's lock open and starts a slow run there.
    assert runbook_exec("unlock", "host:host2").returncode == 0
    other = runbook_exec.spawn("run", write("slow.yml", COUNTED), "--limit", "host2")  # type: ignore[attr-defined]
    try:
        wait_until(lambda: lines(hosts, "host2", "before") == 2)
        refused = runbook_exec("resume", dead)
        status = run_status(runbook_exec, dead)
    finally:
        other.wait(timeout=60)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "holds host host2" in refused.stderr
    assert status == "running"  # as the kill left it: not "refused"
    done = runbook_exec("resume", dead)
    assert done.returncode == 0, done.stdout + done.stderr
    assert run_status(runbook_exec, dead) == "succeeded"


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_a_rejected_gate_rolls_back_the_hosts_the_run_changed(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    waiting = runbook_exec("run", write("rb.yml", GATED_ROLLBACK), "--no-input")
    assert waiting.returncode == 3
    run_id = str(latest_run(runbook_exec)["run_id"])
    rejected = runbook_exec("reject", run_id, "-m", "canary errors")
    assert "rolling back the hosts it changed" in rejected.stdout, rejected.stdout
    assert rejected.returncode == 1  # the run ends rolled back, as a failed batch would
    assert [lines(hosts, h, "changed") for h in ("host1", "host2", "host3", "host4")] == [
        1,
        0,
        0,
        0,
    ]
    assert [lines(hosts, h, "undone") for h in ("host1", "host2", "host3", "host4")] == [
        1,
        0,
        0,
        0,
    ]
    shown = json.loads(runbook_exec("show", run_id, "--json").stdout)
    assert shown["status"] == "rolled_back"
    assert {g["status"] for g in shown["gates"]} == {"rejected"}


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_cancel_with_rollback_undoes_only_the_hosts_the_run_changed(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    waiting = runbook_exec("run", write("rb.yml", GATED_ROLLBACK), "--no-input")
    assert waiting.returncode == 3
    run_id = str(latest_run(runbook_exec)["run_id"])
    cancelled = runbook_exec("cancel", run_id, "--rollback", "-m", "change window closed")
    assert "rolling back" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    assert [lines(hosts, h, "undone") for h in ("host1", "host2", "host3", "host4")] == [
        1,
        0,
        0,
        0,
    ]
    shown = json.loads(runbook_exec("show", run_id, "--json").stdout)
    assert shown["status"] == "rolled_back" and "change window closed" in str(shown["message"])
    assert runbook_exec("resume", run_id).returncode == 3  # it has ended
    # Without rollback steps in its runbook, --rollback is refused and nothing changes.
    runbook_exec("run", write("gated.yml", GATED), "--no-input")
    plain = str(latest_run(runbook_exec)["run_id"])
    refused = runbook_exec("cancel", plain, "--rollback", "-m", "x")
    assert refused.returncode == 2 and "no rollback steps" in refused.stderr
    assert run_status(runbook_exec, plain) == "awaiting_approval"


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_two_resumes_of_one_run_at_once_carry_it_out_once(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    process = runbook_exec.spawn("run", write("rb.yml", COUNTED))  # type: ignore[attr-defined]
    wait_until(lambda: step_status(runbook_exec, "host1", "Slow") == "running")
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_id = str(latest_run(runbook_exec)["run_id"])
    both = [runbook_exec.spawn("resume", run_id) for _ in range(2)]  # type: ignore[attr-defined]
    outcomes = sorted((p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in both)
    assert [rc for rc, _ in outcomes] == [0, 3], outcomes
    assert "another process" in outcomes[1][1] or "still running" in outcomes[1][1], outcomes
    assert [lines(hosts, h, "after") for h in ("host1", "host2", "host3", "host4")] == [1] * 4


def test_cancel_with_rollback_after_a_kill_mid_step_undoes_that_host(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    book = GATED_ROLLBACK.replace(
        "shell: echo x >> {{ lab_root | quote }}/changed",
        "shell: echo x >> {{ lab_root | quote }}/changed; sleep 30",
    )
    process = runbook_exec.spawn("run", write("rb.yml", book))  # type: ignore[attr-defined]
    wait_until(lambda: lines(hosts, "host1", "changed") == 1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_id = str(latest_run(runbook_exec)["run_id"])
    cancelled = runbook_exec("cancel", run_id, "--rollback", "-m", "abort, undo")
    assert "rolling back" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    assert lines(hosts, "host1", "undone") == 1  # its step started: perhaps it changed host1
    assert [lines(hosts, h, "undone") for h in ("host2", "host3", "host4")] == [0, 0, 0]


def test_cancelling_a_run_interrupted_after_a_switch_warns_what_may_be_half_done(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    """The steps after a release switch (a restart, a proxy reload) may not have run on a
    host where the run stopped: a cancel, which does not run them, says where."""
    root = "{{ lab_root }}/app"
    book = (
        "name: switched\ntargets: app\nsteps:\n"
        f"  - shell: mkdir -p {root}/releases/1.0 {root}/releases/2.0\n"
        f"  - release: {{root: '{root}', activate: '2.0'}}\n"
        "  - shell: sleep 30  # the restart that never came\n"
    )
    process = runbook_exec.spawn("run", write("rb.yml", book), "-l", "host1")  # type: ignore[attr-defined]
    link = hosts.host("host1").root / "app" / "current"
    wait_until(lambda: link.is_symlink())
    time.sleep(1)  # the switch is recorded before the next step starts
    process.send_signal(signal.SIGINT)  # no new work
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)  # and stop now: the sleep is abandoned
    process.wait()
    run_id = str(latest_run(runbook_exec)["run_id"])
    cancelled = runbook_exec("cancel", run_id, "-m", "not now")
    assert cancelled.returncode == 0, cancelled.stderr
    assert (
        "the steps after a switch (a restart, a proxy reload) may not have run" in cancelled.stderr
    )
    assert "host1: " in cancelled.stderr and "(none) → 2.0" in cancelled.stderr


def test_runs_lists_as_many_as_asked_and_flags_none(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    path = write("quick.yml", QUICK)
    for _ in range(3):
        assert runbook_exec("run", path).returncode == 0
    listed = json.loads(runbook_exec("runs", "-n", "2", "--json").stdout)["runs"]
    assert len(listed) == 2
    assert all(run["verified"] and not run["flags"] for run in listed), listed


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_lock_rows_deleted_by_hand_let_no_run_in(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    waiting = runbook_exec("run", write("gated.yml", GATED), "--no-input")
    assert waiting.returncode == 3
    run_id = str(latest_run(runbook_exec)["run_id"])
    query(runbook_exec.db, "DELETE FROM locks")  # type: ignore[attr-defined]
    intruder = runbook_exec("run", write("quick.yml", QUICK), "--limit", "host4")
    assert intruder.returncode == 4, intruder.stdout + intruder.stderr
    assert f"run {run_id} holds host:host4 by its events" in intruder.stderr
    assert not (hosts.host("host4").root / "quick").exists()
    assert latest_run(runbook_exec)["status"] == "refused"
    # With its rows gone there is nothing for `unlock` to force; ending the run frees it.
    assert runbook_exec("unlock", "host:host4").returncode != 0  # no row left to force
    assert runbook_exec("cancel", run_id, "-m", "done by hand").returncode == 0
    assert runbook_exec("run", write("quick.yml", QUICK), "--limit", "host4").returncode == 0
