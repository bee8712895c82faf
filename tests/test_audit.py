"""The audit trail: a real run's hash chain, then a table of tamperings, each caught and
named; checkpoints against truncation; keyed chains; fail-closed writes."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from conftest import BACKENDS
from helpers import assert_nowhere_in_store, query, wait_until
from runbook_exec.store.audit import canonical, chain_hash
from runbook_exec.store.keys import KeyRing
from runbook_exec.testing.lab import SshLab

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


# Every test here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.parametrize("db_url", BACKENDS, indirect=True)


@pytest.fixture
def chain(runbook_exec: Run, write: Write) -> str:
    """A store holding the audit chain of one real run on the four hosts."""
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
    return str(runbook_exec.db)  # type: ignore[attr-defined]


def verify(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    db: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return cli("audit", "verify", "--db", db, *args, env=env)


def events(db: str) -> list[dict[str, Any]]:
    return query(db, "SELECT * FROM audit_events ORDER BY seq")


def test_a_run_leaves_a_complete_verifiable_chain(chain: str, cli: Callable[..., object]) -> None:
    rows = events(chain)
    kinds = [json.loads(str(r["body"]))["type"] for r in rows]
    assert kinds[:4] == ["audit.keyed", "run.requested", "lock.taken", "run.started"]
    assert kinds[-1] == "run.finished"
    assert kinds.count("host_step.started") == 8 and kinds.count("host_step.finished") == 8
    finished = next(r for r in rows if r["type"] == "host_step.finished")
    first = json.loads(str(finished["body"]))
    assert first["actor"]["os_user"] and first["change_id"] == "CHG-7"
    assert first["reason"] == "audit test" and len(first["runbook"]["sha256"]) == 64
    assert first["rc"] == 0 and first["output_sha256"] and "duration_ms" in first
    # The output rides beside the body, which holds its digest (so it can be pruned).
    payload = str(finished["payload"])
    assert first["payload_sha256"] == hashlib.sha256(payload.encode()).hexdigest()
    assert "********" in json.loads(payload)["output"]["stdout"]  # the secret, masked
    done = verify(cli, chain)  # type: ignore[arg-type]
    assert done.returncode == 0 and f"audit trail OK: {len(rows)} events" in done.stdout


def change_output_byte(db: str) -> int:
    row = next(r for r in events(db) if "hello from" in str(r["payload"]))
    payload = str(row["payload"]).replace("hello from", "hellO from", 1)
    query(db, "UPDATE audit_events SET payload = :p WHERE seq = :seq", p=payload, seq=row["seq"])
    return int(row["seq"])


def change_body_byte(db: str) -> int:
    row = next(r for r in events(db) if '"rc":0' in str(r["body"]))
    body = str(row["body"]).replace('"rc":0', '"rc":1', 1)
    query(db, "UPDATE audit_events SET body = :body WHERE seq = :seq", body=body, seq=row["seq"])
    return int(row["seq"])


def remove_an_output(db: str) -> int:
    row = next(r for r in events(db) if r["payload"] is not None)
    query(db, "UPDATE audit_events SET payload = NULL WHERE seq = :seq", seq=row["seq"])
    return int(row["seq"])


def delete_one(db: str) -> int:
    query(db, "DELETE FROM audit_events WHERE seq = 5")
    return 6


def insert_one(db: str) -> int:
    rows = events(db)
    query(db, "UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 4")
    query(db, "UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1004")
    forged = {**json.loads(str(rows[2]["body"])), "seq": 4, "type": "run.note"}
    text = canonical(forged)
    query(
        db,
        "INSERT INTO audit_events (seq, at, run_id, type, host, operator, change_id, body,"
        " prev_hash, hash) VALUES (4, :at, :run, 'run.note', NULL, :op, :change, :body,"
        " :prev, :hash)",
        at=forged["at"],
        run=forged["run_id"],
        op=forged["operator"],
        change=forged["change_id"],
        body=text,
        prev=rows[2]["hash"],
        hash=chain_hash(str(rows[2]["hash"]), text, store_key(db)),  # even with the key
    )
    return 5


def store_key(db: str) -> bytes:
    """The audit key a store's chain is hashed with, as its first event names it."""
    keyed = json.loads(str(events(db)[0]["body"]))
    key = KeyRing.load().get(keyed["key_id"])
    assert key is not None
    return key


def swap_two(db: str) -> int:
    rows = events(db)
    a, b = rows[5], rows[6]
    for mine, other in ((a, b), (b, a)):
        query(
            db,
            "UPDATE audit_events SET body = :body, hash = :hash, prev_hash = :prev"
            " WHERE seq = :seq",
            body=other["body"],
            hash=other["hash"],
            prev=other["prev_hash"],
            seq=mine["seq"],
        )
    return int(a["seq"])


def change_a_column(db: str) -> int:
    row = next(r for r in events(db) if r["host"] == "host2")
    query(db, "UPDATE audit_events SET host = 'host9' WHERE seq = :seq", seq=row["seq"])
    return int(row["seq"])


def rewrite_from_event_3(db: str, key: bytes, **changed: str) -> None:
    """Forge history as someone with write access would: change fields of event 3 onwards
    (in the hashed body and its column copy) and re-hash the rest of the chain with `key`."""
    rows = events(db)
    prev = str(rows[2]["prev_hash"])
    for row in rows[2:]:
        body = {**json.loads(str(row["body"])), **changed}
        text = canonical(body)
        digest = chain_hash(prev, text, key)
        columns = "".join(f", {name} = :{name}" for name in changed)
        query(
            db,
            "UPDATE audit_events SET body = :body, prev_hash = :prev, hash = :hash"
            f"{columns} WHERE seq = :seq",
            body=text,
            prev=prev,
            hash=digest,
            seq=row["seq"],
            **changed,
        )
        prev = digest


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (change_output_byte, "its output does not match the digest its event holds"),
        (change_body_byte, "its hash does not match its content"),
        (remove_an_output, "its output is missing, and no prune event covers it"),
        (delete_one, "missing: expected event 5, found 6"),
        (insert_one, "does not follow the event before it"),
        (swap_two, "does not follow the event before it"),
        (change_a_column, "its host column differs from its hashed body"),
    ],
    ids=[
        "change one byte of output",
        "change one byte of an event",
        "remove an output",
        "delete",
        "insert",
        "swap two",
        "change a column",
    ],
)
def test_each_tampering_is_caught_and_the_event_named(
    chain: str,
    cli: Callable[..., subprocess.CompletedProcess[str]],
    mutation: Callable[[str], int],
    expected: str,
) -> None:
    seq = mutation(chain)
    done = verify(cli, chain)
    assert done.returncode == 1, done.stdout
    assert f"event {seq}: {expected}" in done.stdout


def test_cutting_off_the_newest_events_is_caught_with_a_checkpoint(
    chain: str, cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    point = cli("audit", "checkpoint", "--db", chain)
    assert point.returncode == 0
    (tmp_path / "head.json").write_text(point.stdout)
    count = json.loads(point.stdout)["count"]
    query(chain, "DELETE FROM audit_events WHERE seq > :seq", seq=count - 3)
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
    keyed = {
        "RBX_AUDIT_TOKEN": "tok-long-enough",
        "RUNBOOK_EXEC_AUDIT_KEY": "k3y-only-the-auditors-have",
    }
    done = runbook_exec("run", write("rb.yml", RUNBOOK), env=keyed)
    assert done.returncode == 0, done.stdout + done.stderr
    db = str(runbook_exec.db)  # type: ignore[attr-defined]
    assert verify(cli, db, env=keyed).returncode == 0
    refused = verify(cli, db)  # without the key: refused, naming the key it needs
    assert refused.returncode == 4 and "audit key" in refused.stderr
    # Someone with write access but not the key edits an event and re-hashes the chain.
    rewrite_from_event_3(db, b"a-guessed-key", type="run.note")
    forged = verify(cli, db, env=keyed)
    assert forged.returncode == 1 and "event 3: its hash does not match" in forged.stdout


def test_an_export_verifies_and_an_edited_export_does_not(
    chain: str, cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    export = cli("audit", "export", "--db", chain)
    assert export.returncode == 0
    path = tmp_path / "trail.jsonl"
    path.write_text(export.stdout)
    assert cli("audit", "verify", "--file", str(path)).returncode == 0
    path.write_text(export.stdout.replace("host3", "host7", 1))
    edited = cli("audit", "verify", "--file", str(path))
    assert edited.returncode == 1 and "does not match" in edited.stdout
    filtered = cli("audit", "export", "--db", chain, "--host", "host2")
    assert {
        json.loads(json.loads(line)["body"])["host"] for line in filtered.stdout.splitlines()
    } == {"host2"}


def test_reading_the_trail_is_itself_recorded(
    chain: str, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    before = len(events(chain))
    cli("audit", "export", "--db", chain, "--operator", "auditor-ann")
    verify(cli, chain, "--operator", "auditor-ann")
    added = [json.loads(str(r["body"])) for r in events(chain)[before:]]
    assert [(e["type"], e["operator"]) for e in added] == [
        ("audit.exported", "auditor-ann"),
        ("audit.verified", "auditor-ann"),
    ]


def test_the_readme_snippet_verifies_an_export_without_this_tool(
    chain: str, cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    snippet = readme.split("<!-- verify-snippet -->")[1].split("```python")[1].split("```")[0]
    (tmp_path / "verify.py").write_text(snippet)
    export = cli("audit", "export", "--db", chain)
    (tmp_path / "trail.jsonl").write_text(export.stdout)
    keys = tmp_path / "keys"
    keys.mkdir()
    keyed = json.loads(str(events(chain)[0]["body"]))["key_id"]
    (keys / f"{keyed}.key").write_bytes(store_key(chain))
    ok = subprocess.run(
        ["python3", str(tmp_path / "verify.py"), str(tmp_path / "trail.jsonl"), str(keys)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "OK" in ok.stdout
    for edit in (("host1", "hostX"), ("hello from", "hellO from")):  # an event, an output
        (tmp_path / "trail.jsonl").write_text(export.stdout.replace(*edit, 1))
        bad = subprocess.run(
            ["python3", str(tmp_path / "verify.py"), str(tmp_path / "trail.jsonl"), str(keys)],
            capture_output=True,
            text=True,
        )
        assert bad.returncode == 1, edit


@contextmanager
def unwritable(db: str) -> Iterator[None]:
    """Make the audit trail refuse writes while the block runs: SQLite held locked by another
    process (the writer gives up after its busy timeout), PostgreSQL refusing every new
    event through a constraint."""
    if db.startswith("sqlite:///"):
        blocker = sqlite3.connect(db.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    else:
        query(db, "ALTER TABLE audit_events ADD CONSTRAINT sealed CHECK (seq < 0) NOT VALID")
        yield


def test_when_the_trail_cannot_be_written_the_run_stops_before_its_next_remote_step(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    text = RUNBOOK.replace("echo hello", "sleep 2; echo hello").replace("[2]", '["100%"]')
    process = runbook_exec.spawn("run", write("rb.yml", text))  # type: ignore[attr-defined]
    db = str(runbook_exec.db)  # type: ignore[attr-defined]

    def started() -> bool:
        try:
            return any(e["type"] == "host_step.started" for e in events(db))
        except (OperationalError, ProgrammingError):
            return False  # the store is still being created

    wait_until(started)
    with unwritable(db):
        out, err = process.communicate(timeout=120)
    assert process.returncode == 4, out + err
    assert "could not be written" in err
    assert not any((hosts.host(h).root / "marked").exists() for h in ("host1", "host4"))


def test_eight_concurrent_runs_leave_one_chain_with_no_gaps(
    runbook_exec: Run, write: Write, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # Two runs for each of the four hosts, all started at once: on each host one runs and
    # the other is refused (or runs after it); every event of all of them in one chain.
    processes = [
        runbook_exec.spawn(  # type: ignore[attr-defined]
            "run", write(f"rb{n}.yml", RUNBOOK), "--limit", f"host{n % 4 + 1}"
        )
        for n in range(8)
    ]
    outcomes = [(p.wait(timeout=180), p.stderr.read() if p.stderr else "") for p in processes]
    assert all(rc in (0, 3) for rc, _ in outcomes), [o for o in outcomes if o[0] not in (0, 3)]
    assert all("another run holds" in err for rc, err in outcomes if rc == 3), outcomes
    succeeded = sum(1 for rc, _ in outcomes if rc == 0)
    assert succeeded >= 4, outcomes
    db = str(runbook_exec.db)  # type: ignore[attr-defined]
    rows = events(db)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))  # no gap, no fork
    assert len({r["run_id"] for r in rows if r["type"] == "run.finished"}) == succeeded
    assert len({r["run_id"] for r in rows if r["type"] == "run.requested"}) == 8
    done = verify(cli, db)
    assert done.returncode == 0 and f"{len(rows)} events, chain intact" in done.stdout


def test_a_secret_from_the_environment_is_in_no_file_output_or_export(
    runbook_exec: Run, write: Write, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    secret = "tok-Zq81-only-in-env"
    # With a 64-byte output limit, 32 bytes of head are kept: the secret straddles the cut.
    # The step prints it on stderr too, and prints it in a line long enough to be cut again.
    text = RUNBOOK.replace(
        "echo hello",
        "printf 0123456789012345678901234; echo {{ token }}; echo {{ token }} >&2; seq 1 40;"
        " echo hello",
    ).replace(
        "  - name: Mark\n",
        # ...and in the forms a command most often prints one in.
        "  - name: Encoded\n    shell: >-\n"
        "      printf %s {{ token | quote }} | base64;"
        " printf %s {{ token | quote }} | od -An -tx1 | tr -d ' \\n'; echo;"
        " python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))'"
        " {{ token | quote }}\n"
        "  - name: Mark\n",
    )
    done = runbook_exec(
        "run",
        write("rb.yml", text),
        "--output-limit",
        "64",
        # Typed by mistake where a change id and a reason go: masked there too.
        "--change-id",
        f"CHG-1 {secret}",
        "--reason",
        f"rotating {secret}",
        env={"RBX_AUDIT_TOKEN": secret},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    db = str(runbook_exec.db)  # type: ignore[attr-defined]
    run_id = json.loads(runbook_exec("runs", "--json").stdout)["runs"][0]["run_id"]
    shown = runbook_exec("show", str(run_id))
    export = cli("audit", "export", "--db", db)
    assert "********" in shown.stdout  # the output was there, masked
    encoded = [
        base64.b64encode(secret.encode()).decode(),
        secret.encode().hex(),
        quote(secret),
    ]
    listed = runbook_exec("runs")
    for printed in (done.stdout, done.stderr, shown.stdout, listed.stdout, export.stdout):
        assert secret[:6] not in printed  # not even the piece before the head/tail cut
        assert not [form for form in encoded if form in printed]
    assert "CHG-1 ********" in export.stdout and "rotating ********" in export.stdout
    for form in [secret, *encoded]:
        assert_nowhere_in_store(db, form.encode())


def test_pruning_old_output_keeps_every_event_verifiable(
    chain: str, cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    with_output = [r["seq"] for r in events(chain) if r["payload"] is not None]
    assert with_output
    looked = cli("audit", "prune", "--before", "2999-01-01", "--dry-run", "--db", chain)
    assert (
        looked.returncode == 0
        and f"would remove {len(with_output)} events' output" in looked.stdout
    )
    assert [r["seq"] for r in events(chain) if r["payload"] is not None] == with_output

    done = cli("audit", "prune", "--before", "2999-01-01", "--db", chain, "--operator", "ann")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the chain still verifies" in done.stdout
    rows = events(chain)
    assert all(r["payload"] is None for r in rows)
    assert query(chain, "SELECT stdout FROM host_steps WHERE stdout IS NOT NULL") == []
    assert query(chain, "SELECT count(*) AS n FROM host_steps WHERE output_sha256 IS NULL") == [
        {"n": 0}
    ]  # what the output was stays provable by its digest
    pruned = json.loads(str(rows[-1]["body"]))
    assert (pruned["type"], pruned["operator"]) == ("audit.pruned", "ann")
    ok = verify(cli, chain)
    assert ok.returncode == 0, ok.stdout
    assert f"{len(with_output)} with output pruned" in ok.stdout
    export = cli("audit", "export", "--db", chain)
    (tmp_path / "pruned.jsonl").write_text(export.stdout)
    assert cli("audit", "verify", "--file", tmp_path / "pruned.jsonl").returncode == 0


def test_prune_refuses_a_chain_that_does_not_verify_and_a_bad_date(
    chain: str, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    bad_date = cli("audit", "prune", "--before", "last tuesday", "--db", chain)
    assert bad_date.returncode == 2 and "--before" in bad_date.stderr
    seq = change_output_byte(chain)
    refused = cli("audit", "prune", "--before", "2999-01-01", "--db", chain)
    assert refused.returncode == 1 and f"event {seq}" in refused.stdout
    assert any(r["payload"] is not None for r in events(chain))  # nothing was removed


def test_a_csv_export_reads_as_a_table_and_verifies(
    chain: str, cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    export = cli("audit", "export", "--format", "csv", "--db", chain)
    assert export.returncode == 0
    table = list(csv.DictReader(io.StringIO(export.stdout)))
    assert len(table) == len(events(chain)) - 1  # the export itself is recorded after it
    finished = next(row for row in table if row["type"] == "host_step.finished")
    assert (finished["change_id"], finished["step"], finished["rc"]) == ("CHG-7", "Hello", "0")
    assert finished["os_user"] and finished["machine"] and finished["host"].startswith("host")
    path = tmp_path / "trail.csv"
    path.write_text(export.stdout)
    assert cli("audit", "verify", "--file", path).returncode == 0
    path.write_text(export.stdout.replace("host2", "host8", 1))
    edited = cli("audit", "verify", "--file", path)
    assert edited.returncode == 1 and "does not match" in edited.stdout
    wrong = cli("audit", "export", "--format", "xml", "--db", chain)
    assert wrong.returncode == 2 and "--format" in wrong.stderr


def test_an_ed25519_checkpoint_catches_a_chain_rewritten_with_a_stolen_audit_key(
    runbook_exec: Run,
    write: Write,
    cli: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    keyed = {"RBX_AUDIT_TOKEN": "tok-long-enough", "RUNBOOK_EXEC_AUDIT_KEY": "the-teams-audit-key"}
    assert runbook_exec("run", write("rb.yml", RUNBOOK), env=keyed).returncode == 0
    db = str(runbook_exec.db)  # type: ignore[attr-defined]
    for name in ("auditor", "someone-else"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / name], check=True
        )
    point = cli("audit", "checkpoint", "--sign-key", tmp_path / "auditor", "--db", db, env=keyed)
    assert point.returncode == 0, point.stderr
    assert json.loads(point.stdout)["signed"] == "ed25519"
    head = tmp_path / "head.json"
    head.write_text(point.stdout)
    auditor_pub = tmp_path / "auditor.pub"
    ok = verify(cli, db, "--checkpoint", str(head), "--public-key", str(auditor_pub), env=keyed)
    assert ok.returncode == 0 and "extends the checkpoint" in ok.stdout
    unsigned = verify(cli, db, "--checkpoint", str(head), env=keyed)
    assert unsigned.returncode == 1 and "--public-key" in unsigned.stdout
    other_pub = str(tmp_path / "someone-else.pub")
    other = verify(cli, db, "--checkpoint", str(head), "--public-key", other_pub, env=keyed)
    assert other.returncode == 1 and "does not verify with that public key" in other.stdout

    # Later, someone obtains the audit key and rewrites history from event 3 on, consistently.
    rewrite_from_event_3(db, b"the-teams-audit-key", change_id="CHG-FORGED")
    assert verify(cli, db, env=keyed).returncode == 0  # the chain alone cannot tell...
    caught = verify(cli, db, "--checkpoint", str(head), "--public-key", str(auditor_pub), env=keyed)
    assert caught.returncode == 1  # ...the auditor's checkpoint can
    assert "no longer holds the checkpoint's head (rewritten)" in caught.stdout
