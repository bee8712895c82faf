"""The record proves itself: every view and decision reads the verified audit chain. Each
table and column a view or a decision reads is edited by hand, as someone with write access
to the database (and no key) would; each edit is refused (a decision, exit 4, nothing run)
or shown flagged (a view), never trusted."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import BACKENDS
from helpers import query
from runbook_exec.testing.lab import SshLab

Run = Callable[..., subprocess.CompletedProcess[str]]
Write = Callable[[str, str], Path]

pytestmark = pytest.mark.parametrize("db_url", BACKENDS, indirect=True)

GATED = """\
name: gated
targets: app
strategy:
  batches: [1, "100%"]
  between_batches:
    - approve: "Canary healthy?"
steps:
  - name: Hello
    shell: echo hello from {{ inventory_hostname }}
  - name: Mark
    shell: touch {{ lab_root | quote }}/marked
"""


def run_ids(runbook_exec: Run) -> list[str]:
    return [r["run_id"] for r in json.loads(runbook_exec("runs", "--json").stdout)["runs"]]


@pytest.fixture
def paused(runbook_exec: Run, write: Write, hosts: SshLab) -> str:
    """A run whose canary (host1) is done, waiting at its approval gate."""
    done = runbook_exec("run", write("rb.yml", GATED), "--no-input")
    assert done.returncode == 3, done.stdout + done.stderr
    assert (hosts.host("host1").root / "marked").exists()
    return run_ids(runbook_exec)[0]


def marked(hosts: SshLab) -> list[str]:
    return [
        h for h in ("host1", "host2", "host3", "host4") if (hosts.host(h).root / "marked").exists()
    ]


def event_count(db: str) -> int:
    return int(query(db, "SELECT count(*) AS n FROM audit_events")[0]["n"])


def test_a_runbook_text_changed_in_the_table_makes_resume_run_nothing(
    runbook_exec: Run, paused: str, hosts: SshLab
) -> None:
    db = str(runbook_exec.db)  # type: ignore[attr-defined]
    injected = "touch {{ lab_root | quote }}/injected; echo hello"
    query(
        db,
        "UPDATE runs SET runbook_text = replace(runbook_text, 'echo hello', :cmd)",
        cmd=injected,
    )
    approved = runbook_exec("approve", paused, "--operator", "cab-chair")
    assert approved.returncode == 4, approved.stdout + approved.stderr
    assert "runbook text does not have the SHA-256 event" in approved.stderr
    resumed = runbook_exec("resume", paused)
    assert resumed.returncode == 4 and "resume refused" in resumed.stderr
    assert marked(hosts) == ["host1"]
    assert not any((hosts.host(h).root / "injected").exists() for h in ("host1", "host2"))
    shown = runbook_exec("show", paused)
    assert "record altered" in shown.stdout and "runbook text" in shown.stdout


def test_a_gate_approved_in_the_table_alone_is_refused(
    runbook_exec: Run, paused: str, hosts: SshLab
) -> None:
    db = str(runbook_exec.db)  # type: ignore[attr-defined]
    query(db, "UPDATE gates SET status = 'approved', decided_by = 'cab-chair'")
    query(db, "UPDATE runs SET status = 'running'")
    before = event_count(db)
    resumed = runbook_exec("resume", paused)
    assert resumed.returncode == 4, resumed.stdout + resumed.stderr
    assert "record altered" in resumed.stderr and "status" in resumed.stderr
    assert marked(hosts) == ["host1"]  # batch 2 never started
    assert event_count(db) == before  # and nothing was recorded as done
    shown = json.loads(runbook_exec("show", paused, "--json").stdout)
    (gate,) = shown["gates"]
    assert (gate["status"], gate["decided_by"]) == ("waiting", None)  # as the events say
    assert shown["status"] == "awaiting_approval" and not shown["verified"]


def test_a_gate_approved_through_the_tool_is_honoured(
    runbook_exec: Run, paused: str, hosts: SshLab
) -> None:
    assert runbook_exec("approve", paused, "--operator", "cab-chair", "-m", "ok").returncode == 0
    done = runbook_exec("resume", paused)
    assert done.returncode == 0, done.stdout + done.stderr
    assert marked(hosts) == ["host1", "host2", "host3", "host4"]
    shown = json.loads(runbook_exec("show", paused, "--json").stdout)
    assert shown["verified"] and shown["flags"] == []
    (gate,) = shown["gates"]
    assert (gate["status"], gate["decided_by"], gate["comment"]) == ("approved", "cab-chair", "ok")


@pytest.fixture
def finished(runbook_exec: Run, write: Write) -> str:
    text = GATED.replace('[1, "100%"]', '["100%"]')
    done = runbook_exec("run", write("done.yml", text), "--change-id", "CHG-1", "--operator", "ann")
    assert done.returncode == 0, done.stdout + done.stderr
    return run_ids(runbook_exec)[0]


@pytest.mark.parametrize(
    ("edit", "truth", "flagged"),
    [
        ("UPDATE runs SET operator = 'mallory'", "by ann", "operator='ann'"),
        ("UPDATE runs SET change_id = 'CHG-666'", "change CHG-1", "change_id='CHG-1'"),
        ("UPDATE runs SET status = 'failed'", "succeeded", "status='succeeded'"),
        ("UPDATE run_hosts SET status = 'failed' WHERE host = 'host2'", "host2", "host2 status"),
        (
            "UPDATE host_steps SET stdout = 'all is well' WHERE host = 'host3'",
            "hello from host3",
            "host3 step 1 stdout",
        ),
        ("UPDATE host_steps SET status = 'failed' WHERE host = 'host4'", "host4", "host4 step"),
        ("DELETE FROM host_steps WHERE host = 'host1'", "hello from host1", "the table has no row"),
        (
            "UPDATE audit_events SET payload = NULL WHERE host = 'host2' AND payload IS NOT NULL",
            "output missing",
            "no prune event covers it",
        ),
    ],
    ids=[
        "operator",
        "change id",
        "run status",
        "host status",
        "output",
        "step status",
        "deleted host-steps",
        "output removed",
    ],
)
def test_a_view_shows_what_the_events_say_and_flags_the_table(
    runbook_exec: Run, finished: str, edit: str, truth: str, flagged: str
) -> None:
    db = str(runbook_exec.db)  # type: ignore[attr-defined]
    query(db, edit)
    shown = runbook_exec("show", finished)
    assert shown.returncode == 0, shown.stderr
    assert truth in shown.stdout  # what the events say, not the table
    assert "record altered" in shown.stdout and flagged in shown.stdout
    listing = json.loads(runbook_exec("runs", "--json").stdout)["runs"][0]
    assert listing["operator"] == "ann" and listing["change_id"] == "CHG-1"
    assert listing["status"] == "succeeded"


def test_a_run_row_deleted_from_the_table_is_still_listed_flagged(
    runbook_exec: Run, finished: str, write: Write
) -> None:
    assert (
        runbook_exec("run", write("again.yml", GATED.replace('[1, "100%"]', '["100%"]'))).returncode
        == 0
    )
    db = str(runbook_exec.db)  # type: ignore[attr-defined]
    for table in ("host_steps", "run_hosts", "gates"):
        query(db, f"DELETE FROM {table} WHERE run_id = :id", id=finished)
    query(db, "DELETE FROM runs WHERE id = :id", id=finished)
    listing = json.loads(runbook_exec("runs", "--json").stdout)["runs"]
    hidden = next(r for r in listing if r["run_id"] == finished)
    assert not hidden["verified"] and "no row in the table" in " ".join(hidden["flags"])


def test_an_edited_event_is_shown_as_a_break_in_the_chain(runbook_exec: Run, finished: str) -> None:
    db = str(runbook_exec.db)  # type: ignore[attr-defined]
    row = query(db, "SELECT seq, body FROM audit_events WHERE type = 'host_step.finished'")[0]
    body = str(row["body"]).replace('"rc":0', '"rc":7')
    query(db, "UPDATE audit_events SET body = :b WHERE seq = :s", b=body, s=row["seq"])
    shown = runbook_exec("show", finished)
    assert f"the audit chain does not hold at event {row['seq']}" in shown.stdout


def test_a_lock_row_edited_by_hand_is_not_trusted(
    runbook_exec: Run, paused: str, write: Write, hosts: SshLab
) -> None:
    db = str(runbook_exec.db)  # type: ignore[attr-defined]
    query(db, "UPDATE locks SET operator = 'nobody', pid = 999999")
    again = runbook_exec("run", write("rb2.yml", GATED), "--no-input")
    assert again.returncode == 4, again.stdout + again.stderr
    assert "taking the run's locks refused" in again.stderr and "record altered" in again.stderr
    assert marked(hosts) == ["host1"]
