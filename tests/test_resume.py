"""Durable runs on real hosts: kill -9 and resume, locks, approval gates, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from conftest import BACKENDS, BACKENDS_AND_WARM
from helpers import assert_nowhere_in_store, on_a_terminal, query, wait_until
from runbook_exec.testing.lab import SshLab

Run = Callable[..., subprocess.CompletedProcess[str]]
Write = Callable[[str, str], Path]

COUNTED = """\
name: counted
targets: app
strategy:
  batches: [2]
steps:
  - name: Before
    shell: echo x >> {{ lab_root | quote }}/before
  - name: Slow
    shell: sleep 2
  - name: After
    shell: echo x >> {{ lab_root | quote }}/after
"""

GATED = """\
name: gated
targets: app
strategy:
  batches: [1, "100%"]
  between_batches:
    - approve: "Canary healthy? Promote."
steps:
  - name: Touch
    shell: touch {{ lab_root | quote }}/done
"""


def lines(hosts: SshLab, host: str, name: str) -> int:
    path = hosts.host(host).root / name
    return len(path.read_text().splitlines()) if path.exists() else 0


def step_status(runbook_exec: Run, host: str, step: str) -> str | None:
    """A host-step's status as the store has it, read as a second process would."""
    try:
        rows = query(
            runbook_exec.db,  # type: ignore[attr-defined]
            "SELECT status FROM host_steps WHERE host = :host AND step_name = :step",
            host=host,
            step=step,
        )
    except (OperationalError, ProgrammingError):
        return None  # the store is still being created
    return str(rows[0]["status"]) if rows else None


def latest_run(runbook_exec: Run) -> dict[str, object]:
    done = runbook_exec("runs", "--json")
    return json.loads(done.stdout)["runs"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_kill_9_in_batch_2_then_resume_runs_every_step_once_per_host(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    path = write("rb.yml", COUNTED)
    process = runbook_exec.spawn("run", path)  # type: ignore[attr-defined]
    # Kill in the middle of batch 2: while host3 is inside the Slow step. (Killing the
    # instant a side effect appears could beat its record to the disk; such a step is
    # one "started and never finished", and runs again, as documented.)
    wait_until(lambda: step_status(runbook_exec, "host3", "Slow") == "running")
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = latest_run(runbook_exec)
    assert run["status"] == "running"  # what a crash leaves behind
    assert lines(hosts, "host3", "after") == 0

    done = runbook_exec("resume", str(run["run_id"]), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["run_id"] == run["run_id"]
    for host in ("host1", "host2", "host3", "host4"):
        assert lines(hosts, host, "before") == 1, host
        assert lines(hosts, host, "after") == 1, host
    record = json.loads(runbook_exec("show", str(run["run_id"]), "--json").stdout)
    assert {(s["host"], s["step_name"]) for s in record["host_steps"]} == {
        (h, s) for h in ("host1", "host2", "host3", "host4") for s in ("Before", "Slow", "After")
    }
    assert record["status"] == "succeeded"


SIDE_EFFECT = """\
name: side-effect
targets: host1
steps:
  - name: Effect
    shell: >-
      trap '' PIPE;
      trap 'trap "" TERM; echo stop $(date +%s.%N) >> {{ lab_root }}/log; exit 143' TERM;
      echo start $(date +%s.%N) >> {{ lab_root }}/log;
      sleep 3 & wait $!;
      echo effect $(date +%s.%N) >> {{ lab_root }}/log
"""


def test_kill_9_mid_step_then_immediate_resume_the_side_effect_happens_once(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    """The killed attempt is ended on the host when its controller's connection closes; the
    resumed one starts only after it is gone (times from the host's clock)."""
    log = hosts.host("host1").root / "log"
    process = runbook_exec.spawn("run", write("rb.yml", SIDE_EFFECT))  # type: ignore[attr-defined]
    wait_until(lambda: log.exists() and "start" in log.read_text())
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = runbook_exec("resume", str(latest_run(runbook_exec)["run_id"]))
    assert done.returncode == 0, done.stdout + done.stderr
    time.sleep(1)  # anything still running would have its say by now
    noted = [line.split() for line in log.read_text().splitlines()]
    assert [what for what, _ in noted] == ["start", "stop", "start", "effect"], noted
    assert float(noted[1][1]) <= float(noted[2][1])  # the two attempts never overlapped


def test_resume_refuses_a_run_that_is_still_running(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    process = runbook_exec.spawn("run", write("rb.yml", COUNTED))  # type: ignore[attr-defined]
    try:
        wait_until(lambda: lines(hosts, "host1", "before") == 1)
        done = runbook_exec("resume", str(latest_run(runbook_exec)["run_id"]))
    finally:
        process.wait(timeout=60)
    assert done.returncode == 3 and "is still running" in done.stderr


@pytest.mark.parametrize(("db_url", "launch"), BACKENDS_AND_WARM, indirect=True)
def test_approval_gate_waits_then_approve_and_resume_finish_the_run(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    done = runbook_exec("run", write("rb.yml", GATED), "--no-input")
    assert done.returncode == 3
    run_id = str(latest_run(runbook_exec)["run_id"])
    assert f"runbook-exec approve {run_id}" in done.stdout
    assert (hosts.host("host1").root / "done").exists()
    assert not (hosts.host("host2").root / "done").exists()
    assert latest_run(runbook_exec)["status"] == "awaiting_approval"

    again = runbook_exec("resume", run_id)
    assert again.returncode == 3  # still no decision
    assert not (hosts.host("host2").root / "done").exists()

    approved = runbook_exec(
        "approve", run_id, "--comment", "canary looks good", "--operator", "alice"
    )
    assert approved.returncode == 0 and "approved by alice" in approved.stdout
    finished = runbook_exec("resume", run_id)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert all((hosts.host(h).root / "done").exists() for h in ("host2", "host3", "host4"))
    record = json.loads(runbook_exec("show", run_id, "--json").stdout)
    (gate,) = record["gates"]
    assert (gate["status"], gate["decided_by"], gate["comment"]) == (
        "approved",
        "alice",
        "canary looks good",
    )


def test_rejecting_a_gate_ends_the_run_and_frees_its_lock(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    path = write("rb.yml", GATED)
    assert runbook_exec("run", path, "--no-input").returncode == 3
    run_id = str(latest_run(runbook_exec)["run_id"])
    rejected = runbook_exec("reject", run_id, "-m", "error rate up")
    assert rejected.returncode == 0 and "ends here" in rejected.stdout
    assert latest_run(runbook_exec)["status"] == "rejected"
    assert runbook_exec("resume", run_id).returncode == 3
    assert runbook_exec("approve", run_id).returncode == 3
    assert not (hosts.host("host2").root / "done").exists()
    assert runbook_exec("run", path, "--no-input").returncode == 3  # the lock was freed


@pytest.mark.parametrize("launch", ["cold", "warm"], indirect=True)
def test_ctrl_c_stops_new_work_and_leaves_a_resumable_run(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    process = runbook_exec.spawn("run", write("rb.yml", COUNTED))  # type: ignore[attr-defined]
    wait_until(lambda: lines(hosts, "host1", "before") == 1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    assert "interrupted; carry on with `runbook-exec resume" in out
    run = latest_run(runbook_exec)
    assert run["status"] == "interrupted"
    assert lines(hosts, "host3", "before") == 0  # batch 2 never started
    done = runbook_exec("resume", str(run["run_id"]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(lines(hosts, h, "after") == 1 for h in ("host1", "host2", "host3", "host4"))


def test_a_second_ctrl_c_ends_the_running_commands_on_their_hosts(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    log = hosts.host("host1").root / "log"
    process = runbook_exec.spawn("run", write("rb.yml", SIDE_EFFECT))  # type: ignore[attr-defined]
    wait_until(lambda: log.exists() and "start" in log.read_text())
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)  # the first asks the run to stop starting work; the second, to stop now
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    wait_until(lambda: "stop" in log.read_text())
    time.sleep(3)  # past the moment the step would have had its effect
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["start", "stop"]
    assert latest_run(runbook_exec)["status"] == "interrupted"


def test_runs_and_show_tell_who_did_what_and_why(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    path = write(
        "rb.yml",
        GATED.replace('    - approve: "Canary healthy? Promote."\n', "    - wait: 100ms\n"),
    )
    done = runbook_exec(
        "run", path, "--change-id", "CHG-1042", "--reason", "Q4 release", "--operator", "bob"
    )
    assert done.returncode == 0, done.stderr
    listing = runbook_exec("runs").stdout
    assert "gated" in listing and "bob" in listing and "CHG-1042" in listing
    assert "succeeded" in listing
    shown = runbook_exec("show", str(latest_run(runbook_exec)["run_id"])).stdout
    assert "change CHG-1042: Q4 release" in shown
    assert "host4 (batch 2) ok" in shown and "1. Touch ok rc=0" in shown
    missing = runbook_exec("show", "nope")
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr


@pytest.mark.parametrize("launch", ["cold", "warm"], indirect=True)
def test_on_a_terminal_the_gate_asks_and_records_who_said_yes(
    runbook_exec: Run, write: Write, hosts: SshLab, tmp_path: Path
) -> None:
    import sys

    path = write("rb.yml", GATED)
    command = [
        str(Path(sys.executable).with_name("runbook-exec")),
        "run",
        str(path),
        "-i",
        str(hosts.inventory),
        "--known-hosts",
        str(hosts.known_hosts),
        "--db",
        runbook_exec.db,
        "--operator",
        "carol",  # type: ignore[attr-defined]
    ]
    code, seen, answered = on_a_terminal(
        command,
        tmp_path,
        {**runbook_exec.env, "COLUMNS": "120"},
        answer=b"y\n",  # type: ignore[attr-defined]
    )
    assert answered, seen.decode(errors="replace")
    assert code == 0, seen.decode(errors="replace")
    assert b"[bold]" not in seen and b"[/]" not in seen  # the live view's markup, rendered
    assert all((hosts.host(h).root / "done").exists() for h in ("host2", "host3", "host4"))
    run_id = str(latest_run(runbook_exec)["run_id"])
    (gate,) = json.loads(runbook_exec("show", run_id, "--json").stdout)["gates"]
    assert (gate["status"], gate["decided_by"]) == ("approved", "carol")


@pytest.mark.parametrize(("db_url", "launch"), BACKENDS_AND_WARM, indirect=True)
def test_resume_reads_secrets_again_from_their_environment_variables(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    declared = "params:\n  token: {type: str, secret: true, required: true, env: RBX_TOKEN}\n"
    text = GATED.replace("steps:", declared + "steps:").replace(
        "touch {{ lab_root | quote }}/done",
        "printf %s {{ token | quote }} > {{ lab_root | quote }}/done",
    )
    path = write("rb.yml", text)
    assert runbook_exec("run", path, "--no-input", env={"RBX_TOKEN": "s3cr3t-1"}).returncode == 3
    run_id = str(latest_run(runbook_exec)["run_id"])
    assert runbook_exec("approve", run_id).returncode == 0

    missing = runbook_exec("resume", run_id)  # RBX_TOKEN is not set for this one
    assert missing.returncode == 2
    assert "params.token: required; give it with -e token=VALUE or set $RBX_TOKEN" in missing.stderr
    done = runbook_exec("resume", run_id, env={"RBX_TOKEN": "s3cr3t-1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (hosts.host("host4").root / "done").read_text() == "s3cr3t-1"
    assert_nowhere_in_store(runbook_exec.db, b"s3cr3t-1")  # type: ignore[attr-defined]


def test_resume_refuses_a_plan_that_no_longer_renders_as_recorded(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    text = GATED.replace(
        "touch {{ lab_root | quote }}/done",
        "echo {{ color | default('blue') }} > {{ lab_root | quote }}/done",
    )
    assert runbook_exec("run", write("rb.yml", text), "--no-input").returncode == 3
    run_id = str(latest_run(runbook_exec)["run_id"])
    assert runbook_exec("approve", run_id).returncode == 0
    inventory = hosts.inventory.read_text()
    hosts.inventory.write_text(inventory + "\n[all:vars]\ncolor=green\n")

    changed = runbook_exec("resume", run_id)
    assert changed.returncode == 2, changed.stdout + changed.stderr
    assert f"run {run_id}'s plan no longer renders as event" in changed.stderr
    assert "nothing was run" in changed.stderr
    assert not (hosts.host("host2").root / "done").exists()

    hosts.inventory.write_text(inventory)
    done = runbook_exec("resume", run_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (hosts.host("host4").root / "done").read_text() == "blue\n"


def test_a_secret_missing_on_resume_is_bad_input_never_none(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    book = (
        GATED.replace(
            "steps:",
            "params:\n  token: {secret: true, env: RBX_OPTIONAL_TOKEN}\nsteps:",
        )
        + "  - name: Use\n    shell: echo {{ token | quote }} > {{ lab_root | quote }}/token\n"
    )
    path = write("rb.yml", book)
    with_token = {"RBX_OPTIONAL_TOKEN": "t0ken-value"}
    assert runbook_exec("run", path, "--no-input", env=with_token).returncode == 3
    run_id = str(latest_run(runbook_exec)["run_id"])
    assert runbook_exec("approve", run_id).returncode == 0
    missing = runbook_exec("resume", run_id)
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "'token' had a value" in missing.stderr and "RBX_OPTIONAL_TOKEN" in missing.stderr
    assert not (hosts.host("host2").root / "token").exists()
    done = runbook_exec("resume", run_id, env=with_token)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (hosts.host("host4").root / "token").read_text() == "t0ken-value\n"


def test_resume_reaches_the_hosts_as_planned_or_says_what_changed(
    runbook_exec: Run, write: Write, hosts: SshLab, tmp_path: Path
) -> None:
    assert runbook_exec("run", write("rb.yml", GATED), "--no-input").returncode == 3
    run_id = str(latest_run(runbook_exec)["run_id"])
    assert runbook_exec("approve", run_id).returncode == 0
    # The inventory now gives host3 another key file (the same key, copied elsewhere).
    moved = tmp_path / "moved-key"
    moved.write_bytes(Path(hosts.client_key).read_bytes())
    moved.chmod(0o600)
    text = hosts.inventory.read_text()
    lines_ = [
        line.replace(str(hosts.client_key), str(moved)) if line.startswith("host3 ") else line
        for line in text.splitlines()
    ]
    hosts.inventory.write_text("\n".join(lines_) + "\n")
    refused = runbook_exec("resume", run_id)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"host3: key_file {hosts.client_key} → {moved}" in refused.stderr
    assert "--replan" in refused.stderr
    assert not (hosts.host("host3").root / "done").exists()
    done = runbook_exec("resume", run_id, "--replan")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (hosts.host("host3").root / "done").exists()
    exported = runbook_exec("audit", "export").stdout
    assert "run.replanned" in exported and "host3: key_file" in exported


def test_on_a_terminal_the_live_view_names_running_and_failed_hosts_and_ends_with_what_next(
    runbook_exec: Run, write: Write, hosts: SshLab, tmp_path: Path
) -> None:
    """Captured from a real pseudo-terminal: a row per running host with its step and
    elapsed time, a row per failed host, and after the run the commands that say more."""
    import sys

    runbook = (
        "name: view\ntargets: app\nstrategy: {max_fail_percentage: 50}\nsteps:\n"
        '  - name: Slow\n    shell: "sleep 3; [ {{ inventory_hostname }} != host2 ]"\n'
        "  - name: After\n    shell: sleep 1\n"  # the failed row stays in view meanwhile
    )
    command = [
        str(Path(sys.executable).with_name("runbook-exec")),
        "run",
        str(write("view.yml", runbook)),
        *hosts.cli_args(),
        "--db",
        runbook_exec.db,  # type: ignore[attr-defined]
    ]
    code, seen, _ = on_a_terminal(
        command,
        tmp_path,
        {**runbook_exec.env, "COLUMNS": "120"},  # type: ignore[attr-defined]
    )
    shown = seen.decode(errors="replace")
    assert code == 1, shown
    assert "▶" in shown and "host3" in shown and "Slow" in shown, shown
    assert any(f"{n}s" in shown for n in (1, 2, 3)), shown  # elapsed time on a running row
    assert "✗" in shown and "host2" in shown
    run_id = str(latest_run(runbook_exec)["run_id"])
    assert f"details: `runbook-exec show {run_id}`" in shown
