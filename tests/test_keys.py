"""Keyed by default: a new store gets an audit key and records its id; a command with a
missing or different key refuses before doing anything; an old unkeyed store goes on
unkeyed and says so; a rotation is an event that verification follows."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import query
from runbook_exec.store.audit import GENESIS, canonical, chain_hash
from runbook_exec.testing.lab import SshLab

Run = Callable[..., subprocess.CompletedProcess[str]]
Write = Callable[[str, str], Path]

RUNBOOK = """\
name: keyed
targets: app
steps:
  - name: Mark
    shell: echo run >> {{ lab_root | quote }}/marks
"""


def marks(hosts: SshLab) -> int:
    total = 0
    for name in ("host1", "host2", "host3", "host4"):
        path = hosts.host(name).root / "marks"
        total += len(path.read_text().splitlines()) if path.exists() else 0
    return total


def events(db: str) -> list[dict[str, Any]]:
    return query(db, "SELECT * FROM audit_events ORDER BY seq")


@pytest.fixture
def config(tmp_path: Path) -> dict[str, str]:
    """A config folder of this test's own, so the key a new store makes is this test's."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "config")}


def test_a_new_sqlite_store_makes_a_private_key_and_records_only_its_id(
    runbook_exec: Run, write: Write, config: dict[str, str], tmp_path: Path
) -> None:
    done = runbook_exec("run", write("rb.yml", RUNBOOK), env=config)
    assert done.returncode == 0, done.stdout + done.stderr
    folder = tmp_path / "config" / "runbook-exec" / "audit-keys"
    (key_file,) = folder.iterdir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first = json.loads(str(events(runbook_exec.db)[0]["body"]))  # type: ignore[attr-defined]
    assert (first["type"], first["key_id"]) == ("audit.keyed", key_file.stem)
    key = key_file.read_bytes().strip()
    assert key not in Path(runbook_exec.db.removeprefix("sqlite:///")).read_bytes()  # type: ignore[attr-defined]
    verified = runbook_exec("audit", "verify", env=config)
    assert verified.returncode == 0 and key_file.stem in verified.stdout


@pytest.mark.parametrize(
    "given",
    [{}, {"RUNBOOK_EXEC_AUDIT_KEY": "another-key-of-someone-else"}],
    ids=["no key", "another key"],
)
def test_a_command_without_the_stores_key_refuses_and_runs_nothing(
    runbook_exec: Run,
    write: Write,
    hosts: SshLab,
    config: dict[str, str],
    tmp_path: Path,
    given: dict[str, str],
) -> None:
    path = write("rb.yml", RUNBOOK)
    assert runbook_exec("run", path, env=config).returncode == 0
    db = runbook_exec.db  # type: ignore[attr-defined]
    (key_file,) = (tmp_path / "config" / "runbook-exec" / "audit-keys").iterdir()
    before = (marks(hosts), len(events(db)))
    elsewhere = {"XDG_CONFIG_HOME": str(tmp_path / "other-config"), **given}
    for command in (("run", path), ("approve", "x"), ("audit", "verify"), ("audit", "prune")):
        args = (*command, "--before", "2999-01-01") if command[-1] == "prune" else command
        refused = runbook_exec(*args, env=elsewhere)
        assert refused.returncode == 4, (command, refused.stdout + refused.stderr)
        assert f"audit key {key_file.stem}" in refused.stderr, refused.stderr
        assert str(tmp_path / "other-config") in refused.stderr  # where keys are looked for
        assert "nothing was done" in refused.stderr
    assert (marks(hosts), len(events(db))) == before


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_new_shared_store_refuses_to_start_without_a_key_given(
    runbook_exec: Run, write: Write, hosts: SshLab
) -> None:
    env = {k: v for k, v in runbook_exec.env.items() if not k.startswith("RUNBOOK_EXEC_AUDIT")}  # type: ignore[attr-defined]
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "runbook-exec"),
            "run",
            str(write("rb.yml", RUNBOOK)),
            "-i",
            str(hosts.inventory),
            "--known-hosts",
            str(hosts.known_hosts),
            "--db",
            runbook_exec.db,  # type: ignore[attr-defined]
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 4, done.stdout + done.stderr
    assert "RUNBOOK_EXEC_AUDIT_KEY_FILE" in done.stderr and "nothing was done" in done.stderr
    assert marks(hosts) == 0
    assert events(runbook_exec.db) == []  # type: ignore[attr-defined]


def test_rotating_the_key_is_an_event_and_verification_follows_it(
    runbook_exec: Run, write: Write, hosts: SshLab, config: dict[str, str], tmp_path: Path
) -> None:
    path = write("rb.yml", RUNBOOK)
    assert runbook_exec("run", path, env=config).returncode == 0
    folder = tmp_path / "config" / "runbook-exec" / "audit-keys"
    (old,) = (p.stem for p in folder.iterdir())
    rotated = runbook_exec("audit", "rotate-key", env=config)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    (new,) = {p.stem for p in folder.iterdir()} - {old}
    assert f"hashed with key {new}" in rotated.stdout
    assert runbook_exec("run", path, env=config).returncode == 0
    db = runbook_exec.db  # type: ignore[attr-defined]
    turn = next(json.loads(str(r["body"])) for r in events(db) if r["type"] == "audit.key_rotated")
    assert (turn["previous_key_id"], turn["key_id"]) == (old, new)
    verified = runbook_exec("audit", "verify", env=config)
    assert verified.returncode == 0, verified.stdout
    assert f"HMAC-SHA256 with key {old} then {new}" in verified.stdout
    (folder / f"{old}.key").unlink()  # the old key is still needed to verify what it hashed
    lost = runbook_exec("audit", "verify", env=config)
    assert lost.returncode == 4 and f"audit key {old}" in lost.stderr, lost.stdout + lost.stderr
    assert marks(hosts) == 8


def make_unkeyed(db: str) -> None:
    """Turn the chain into one written before keys had ids: no `audit.keyed` event, plain
    SHA-256 hashes (as stores made by earlier versions without a key are)."""
    rows = events(db)[1:]
    query(db, "DELETE FROM audit_events")
    prev = GENESIS
    for seq, row in enumerate(rows, start=1):
        text = canonical({**json.loads(str(row["body"])), "seq": seq})
        digest = chain_hash(prev, text, None)
        query(
            db,
            "INSERT INTO audit_events (seq, at, run_id, type, host, operator, change_id, body,"
            " payload, prev_hash, hash) VALUES (:seq, :at, :run_id, :type, :host, :operator,"
            " :change_id, :body, :payload, :prev, :hash)",
            **{**row, "seq": seq, "body": text, "prev": prev, "hash": digest},
        )
        prev = digest


def test_an_old_unkeyed_store_goes_on_unkeyed_and_verify_says_so(
    runbook_exec: Run, write: Write, hosts: SshLab, config: dict[str, str]
) -> None:
    path = write("rb.yml", RUNBOOK)
    assert runbook_exec("run", path, env=config).returncode == 0
    db = runbook_exec.db  # type: ignore[attr-defined]
    make_unkeyed(db)
    again = runbook_exec("run", path, env=config)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [r for r in events(db) if r["type"] == "audit.keyed"] == []
    verified = runbook_exec("audit", "verify", env=config)
    assert verified.returncode == 0, verified.stdout
    assert "SHA-256, unkeyed" in verified.stdout and "not keyed" in verified.stdout
    assert runbook_exec("audit", "rotate-key", env=config).returncode == 0
    assert runbook_exec("run", path, env=config).returncode == 0
    keyed = runbook_exec("audit", "verify", env=config)
    assert keyed.returncode == 0, keyed.stdout
    assert "SHA-256, then HMAC-SHA256 with key" in keyed.stdout
    assert "events before its first key are not keyed" in keyed.stdout
    assert marks(hosts) == 12
