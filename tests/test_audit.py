"""The audit trail: a real run's hash chain, then a table of tamperings, each caught and
named; checkpoints against truncation; keyed chains; fail-closed writes."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import wait_until
from runbook_exec.lab import SshLab
from runbook_exec.store.audit import canonical, chain_hash

Run = Callable[..., subprocess.CompletedProcess[str]]
Write = Callable[[str, str], Path]

RUNBOOK = """\
name: audited
targets: app
params:
  token: {type: str, secret: true, env: RBX_AUDIT_TOKEN}
strategy:
  batches: [2]
steps:
  - name: Hello
    shell: echo hello from {{ inventory_hostname }} with {{ token }}
  - name: Mark
    shell: touch {{ lab_root | quote }}/marked
"""


def database(runbook_exec: Run) -> Path:
    return Path(runbook_exec.db.removeprefix("sqlite:///"))  # type: ignore[attr-defined]


def settled_copy(source: Path, target: Path) -> Path:
    """A copy of the database with its WAL folded in, to tamper with."""
    with sqlite3.connect(source) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(source, target)
    return target


@pytest.fixture
def chain(runbook_exec: Run, write: Write, tmp_path: Path) -> Path:
    """A database holding the audit chain of one real run on the four hosts."""
    done = runbook_exec(
        "run",
        write("rb.yml", RUNBOOK),
        "--change-id",
        "CHG-7",
        "--reason",
        "audit test",
        env={"RBX_AUDIT_TOKEN": "tok-9f3k"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return settled_copy(database(runbook_exec), tmp_path / "chain.db")


def verify(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    db: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return cli("audit", "verify", "--db", f"sqlite:///{db}", *args, env=env)


def events(db: Path) -> list[dict[str, object]]:
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM audit_events ORDER BY seq")]


def test_a_run_leaves_a_complete_verifiable_chain(chain: Path, cli: Callable[..., object]) -> None:
    rows = events(chain)
    kinds = [json.loads(str(r["body"]))["type"] for r in rows]
    assert kinds[:3] == ["run.requested", "lock.taken", "run.started"]
    assert kinds[-1] == "run.finished"
    assert kinds.count("host_step.started") == 8 and kinds.count("host_step.finished") == 8
    finished = [
        json.loads(str(r["body"]))
        for r in rows
        if json.loads(str(r["body"]))["type"] == "host_step.finished"
    ]
    first = finished[0]
    assert first["actor"]["os_user"] and first["change_id"] == "CHG-7"
    assert first["reason"] == "audit test" and len(first["runbook"]["sha256"]) == 64
    assert first["rc"] == 0 and first["output_sha256"] and "duration_ms" in first
    assert "********" in first["output"]["stdout"]  # the secret, masked in the output
    done = verify(cli, chain)  # type: ignore[arg-type]
    assert done.returncode == 0 and f"audit trail OK: {len(rows)} events" in done.stdout


def tamper(db: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(db) as con:
        con.execute(sql, params)


def change_output_byte(db: Path) -> int:
    row = next(r for r in events(db) if b"hello from" in str(r["body"]).encode())
    body = str(row["body"]).replace("hello from", "hellO from", 1)
    tamper(db, "UPDATE audit_events SET body = ? WHERE seq = ?", body, row["seq"])
    return int(str(row["seq"]))


def delete_one(db: Path) -> int:
    tamper(db, "DELETE FROM audit_events WHERE seq = 5")
    return 6


def insert_one(db: Path) -> int:
    rows = events(db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 4")
        con.execute("UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1004")
        forged = {**json.loads(str(rows[2]["body"])), "seq": 4, "type": "run.note"}
        text = canonical(forged)
        con.execute(
            "INSERT INTO audit_events (seq, at, run_id, type, host, operator, change_id, body,"
            " prev_hash, hash) VALUES (4, ?, ?, 'run.note', NULL, ?, ?, ?, ?, ?)",
            (
                forged["at"],
                forged["run_id"],
                forged["operator"],
                forged["change_id"],
                text,
                rows[2]["hash"],
                chain_hash(str(rows[2]["hash"]), text, None),
            ),
        )
    return 5


def swap_two(db: Path) -> int:
    rows = events(db)
    a, b = rows[5], rows[6]
    with sqlite3.connect(db) as con:
        for mine, other in ((a, b), (b, a)):
            con.execute(
                "UPDATE audit_events SET body = ?, hash = ?, prev_hash = ? WHERE seq = ?",
                (other["body"], other["hash"], other["prev_hash"], mine["seq"]),
            )
    return int(str(a["seq"]))


def change_a_column(db: Path) -> int:
    row = next(r for r in events(db) if r["host"] == "host2")
    tamper(db, "UPDATE audit_events SET host = 'host9' WHERE seq = ?", row["seq"])
    return int(str(row["seq"]))


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (change_output_byte, "its hash does not match its content"),
        (delete_one, "missing: expected event 5, found 6"),
        (insert_one, "does not follow the event before it"),
        (swap_two, "does not follow the event before it"),
        (change_a_column, "its host column differs from its hashed body"),
    ],
    ids=["change one byte of output", "delete", "insert", "swap two", "change a column"],
)
def test_each_tampering_is_caught_and_the_event_named(
    chain: Path,
    cli: Callable[..., subprocess.CompletedProcess[str]],
    mutation: Callable[[Path], int],
    expected: str,
) -> None:
    seq = mutation(chain)
    done = verify(cli, chain)
    assert done.returncode == 1, done.stdout
    assert f"event {seq}: {expected}" in done.stdout


def test_cutting_off_the_newest_events_is_caught_with_a_checkpoint(
    chain: Path, cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    point = cli("audit", "checkpoint", "--db", f"sqlite:///{chain}")
    assert point.returncode == 0
    (tmp_path / "head.json").write_text(point.stdout)
    count = json.loads(point.stdout)["count"]
    tamper(chain, "DELETE FROM audit_events WHERE seq > ?", count - 3)
    alone = verify(cli, chain)
    assert alone.returncode == 0  # a chain cannot tell its end was cut off...
    caught = verify(cli, chain, "--checkpoint", str(tmp_path / "head.json"))
    assert caught.returncode == 1  # ...a checkpoint kept elsewhere can
    assert "events were cut off the end" in caught.stdout


def test_with_a_key_a_chain_recomputed_without_it_is_caught(
    runbook_exec: Run,
    write: Write,
    cli: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    keyed = {"RBX_AUDIT_TOKEN": "t", "RUNBOOK_EXEC_AUDIT_KEY": "k3y-only-the-auditors-have"}
    done = runbook_exec("run", write("rb.yml", RUNBOOK), env=keyed)
    assert done.returncode == 0, done.stdout + done.stderr
    db = settled_copy(database(runbook_exec), tmp_path / "keyed.db")
    assert verify(cli, db, env=keyed).returncode == 0
    assert verify(cli, db).returncode == 1  # without the key the hashes do not match
    # Someone with write access but not the key edits an event and re-hashes the chain.
    rows = events(db)
    with sqlite3.connect(db) as con:
        prev = str(rows[2]["prev_hash"])
        for row in rows[2:]:
            body = json.loads(str(row["body"]))
            if row["seq"] == 3:
                body["type"] = "run.note"
            text = canonical(body)
            new = chain_hash(prev, text, b"a-guessed-key")
            con.execute(
                "UPDATE audit_events SET body = ?, prev_hash = ?, hash = ?, type = ? WHERE seq = ?",
                (text, prev, new, body["type"], row["seq"]),
            )
            prev = new
    forged = verify(cli, db, env=keyed)
    assert forged.returncode == 1 and "event 3: its hash does not match" in forged.stdout


def test_an_export_verifies_and_an_edited_export_does_not(
    chain: Path, cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    export = cli("audit", "export", "--db", f"sqlite:///{chain}")
    assert export.returncode == 0
    path = tmp_path / "trail.jsonl"
    path.write_text(export.stdout)
    assert cli("audit", "verify", "--file", str(path)).returncode == 0
    path.write_text(export.stdout.replace("host3", "host7", 1))
    edited = cli("audit", "verify", "--file", str(path))
    assert edited.returncode == 1 and "does not match" in edited.stdout
    filtered = cli("audit", "export", "--db", f"sqlite:///{chain}", "--host", "host2")
    assert {
        json.loads(json.loads(line)["body"])["host"] for line in filtered.stdout.splitlines()
    } == {"host2"}


def test_reading_the_trail_is_itself_recorded(
    chain: Path, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    before = len(events(chain))
    cli("audit", "export", "--db", f"sqlite:///{chain}", "--operator", "auditor-ann")
    verify(cli, chain, "--operator", "auditor-ann")
    added = [json.loads(str(r["body"])) for r in events(chain)[before:]]
    assert [(e["type"], e["operator"]) for e in added] == [
        ("audit.exported", "auditor-ann"),
        ("audit.verified", "auditor-ann"),
    ]


def test_the_readme_snippet_verifies_an_export_without_this_tool(
    chain: Path, cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    snippet = readme.split("<!-- verify-snippet -->")[1].split("```python")[1].split("```")[0]
    (tmp_path / "verify.py").write_text(snippet)
    export = cli("audit", "export", "--db", f"sqlite:///{chain}")
    (tmp_path / "trail.jsonl").write_text(export.stdout)
    ok = subprocess.run(
        ["python3", str(tmp_path / "verify.py"), str(tmp_path / "trail.jsonl")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "OK" in ok.stdout
    (tmp_path / "trail.jsonl").write_text(export.stdout.replace("host1", "hostX", 1))
    bad = subprocess.run(
        ["python3", str(tmp_path / "verify.py"), str(tmp_path / "trail.jsonl")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1


def test_when_the_trail_cannot_be_written_the_run_stops_before_its_next_remote_step(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    text = RUNBOOK.replace("echo hello", "sleep 2; echo hello").replace("[2]", '["100%"]')
    process = runbook_exec.spawn("run", write("rb.yml", text))  # type: ignore[attr-defined]
    db = database(runbook_exec)

    def started() -> bool:
        try:
            return any(e["type"] == "host_step.started" for e in events(db))
        except sqlite3.OperationalError:
            return False  # the store is still being created

    wait_until(started)
    blocker = sqlite3.connect(db, timeout=30, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the store is now unwritable for this run
    try:
        out, err = process.communicate(timeout=120)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert process.returncode == 4, out + err
    assert "could not be written" in err
    assert not any((hosts.host(h).root / "marked").exists() for h in ("host1", "host4"))
