"""The state store's own behaviour, on SQLite and on PostgreSQL alike: runs, host-steps,
release switches, locks and pruning, through the same API the executor uses."""

from __future__ import annotations

import os
import socket
import time

import pytest

from conftest import BACKENDS
from runbook_exec.store import Store

pytestmark = pytest.mark.parametrize("db_url", BACKENDS, indirect=True)


def a_run(store: Store, run_id: str, hosts: list[str]) -> None:
    record = {
        "id": run_id,
        "runbook_name": "deploy",
        "runbook_path": "runbooks/deploy.yml",
        "runbook_sha256": "ab" * 32,
        "runbook_text": "name: deploy\n",
        "params": {"version": "1.0"},
        "secret_names": [],
        "inventory": ["inventory/lab.ini"],
        "plan": {"batches": [hosts]},
        "plan_digest": "cd" * 32,
        "options": {"forks": 5},
        "lock_name": "web",
        "operator": "ann",
        "os_user": "ann",
        "machine": socket.gethostname(),
        "pid": os.getpid(),
        "status": "running",
        "created_at": time.time(),
    }
    store.create_run(record, [(host, 1) for host in hosts])


def test_runs_and_host_steps_round_trip(db_url: str) -> None:
    store = Store.open(db_url)
    a_run(store, "run-1", ["web1", "web2"])
    row = {"run_id": "run-1", "batch": 1, "section": "steps", "step_index": 0}
    store.steps_started(
        [{**row, "step_name": "Hello", "host": h, "started_at": 1.0} for h in ("web1", "web2")]
    )
    finished = {"status": "ok", "rc": 0, "stdout": "hi\n", "stderr": "", "finished_at": 2.0}
    keys = {"k_run": "run-1", "k_section": "steps", "k_index": 0}
    store.steps_finished([{**keys, "k_host": h, **finished} for h in ("web1", "web2")])
    steps = store.host_steps_of("run-1")
    assert [(s["host"], s["status"], s["stdout"]) for s in steps] == [
        ("web1", "ok", "hi\n"),
        ("web2", "ok", "hi\n"),
    ]
    assert store.get_run("run-1")["params"] == {"version": "1.0"}  # type: ignore[index]
    assert [r["id"] for r in store.list_runs()] == ["run-1"]

    # Started again (as on resume, for one a crash left running) beside a first start:
    # the old record is reset in place, the new one added.
    store.steps_started(
        [{**row, "step_name": "Hello", "host": h, "started_at": 3.0} for h in ("web2", "web3")]
    )
    steps = {s["host"]: s for s in store.host_steps_of("run-1")}
    assert sorted(steps) == ["web1", "web2", "web3"]
    assert (steps["web1"]["status"], steps["web1"]["finished_at"]) == ("ok", 2.0)
    for host in ("web2", "web3"):
        assert (steps[host]["status"], steps[host]["started_at"]) == ("running", 3.0)
        assert (steps[host]["finished_at"], steps[host]["attempts"]) == (None, 0)


def test_release_switches_know_what_is_live_and_what_was_before(db_url: str) -> None:
    store = Store.open(db_url)
    for host, before, after in [("web1", None, "1"), ("web1", "1", "2"), ("web2", None, "1")]:
        store.record_switch(
            host=host,
            root="/srv/app",
            from_version=before,
            to_version=after,
            run_id="run-1",
            source="activate",
        )
    live = {(r["host"], r["to_version"], r["from_version"]) for r in store.live_releases()}
    assert live == {("web1", "2", "1"), ("web2", "1", None)}
    assert [s["to_version"] for s in store.switches("web1", "/srv/app")] == ["1", "2"]
    assert [r["host"] for r in store.live_releases(["web2"])] == ["web2"]


def test_locks_are_taken_all_or_none_and_held_until_released(db_url: str) -> None:
    store = Store.open(db_url)
    for run_id in ("run-1", "run-2", "run-3"):
        a_run(store, run_id, ["web1"])
    assert store.take_locks(["host:web1", "host:web2"], "run-1", "ann") == []
    # run-2 needs web2 and web3: refused, naming run-1 and only what they share.
    held = store.take_locks(["host:web2", "host:web3"], "run-2", "bob")
    assert [(h.run_id, h.names, h.operator) for h in held] == [("run-1", ("host:web2",), "ann")]
    assert "holds host web2" in held[0].describe() and "ann, running" in held[0].describe()
    assert store.lock_holders(["host:web3"]) == []  # all or none: web3 was not taken
    # run-1 taking its own locks again (a resume) re-points them to this process.
    assert store.take_locks(["host:web1", "host:web2"], "run-1", "ann") == []
    assert store.take_locks(["host:web3", "name:db"], "run-3", "cy") == []
    store.release_locks("run-1")
    assert store.take_locks(["host:web1", "host:web2"], "run-2", "bob") == []
    assert [h.run_id for h in store.lock_holders(run_id="run-3")] == ["run-3"]
    assert store.force_unlock("name:db").run_id == "run-3"  # type: ignore[union-attr]
    assert store.lock_holders(["name:db"]) == []
    assert {h.run_id for h in store.lock_holders()} == {"run-2", "run-3"}


def test_pruning_clears_old_output_and_keeps_its_digest(db_url: str) -> None:
    store = Store.open(db_url)
    a_run(store, "run-1", ["web1"])
    store.steps_started(
        [
            {
                "run_id": "run-1",
                "batch": 1,
                "section": "steps",
                "step_index": 0,
                "step_name": "Hello",
                "host": "web1",
                "started_at": 1.0,
            }
        ]
    )
    store.steps_finished(
        [
            {
                "k_run": "run-1",
                "k_section": "steps",
                "k_index": 0,
                "k_host": "web1",
                "status": "ok",
                "stdout": "old\n",
                "stderr": "",
                "output_sha256": "ef" * 32,
                "finished_at": 100.0,
            }
        ]
    )
    event = {"at": "2020-01-01T00:00:00.000Z", "type": "host_step.finished", "output": "x"}
    store.append_audits([event, {**event, "at": "2999-01-01T00:00:00.000Z"}])
    looked = store.prune_output("2026-01-01T00:00:00", 1_767_225_600.0, dry_run=True)
    assert looked == {"events": 1, "host_steps": 1, "task_results": 0}
    assert store.host_steps_of("run-1")[0]["stdout"] == "old\n"  # a dry run changes nothing
    store.prune_output("2026-01-01T00:00:00", 1_767_225_600.0, dry_run=False)
    (step,) = store.host_steps_of("run-1")
    assert (step["stdout"], step["output_sha256"]) == (None, "ef" * 32)
    assert [e["payload"] is None for e in store.audit_events()] == [True, True, False]  # keyed


def test_a_lock_whose_run_is_not_on_record_can_still_be_forced(db_url: str) -> None:
    from runbook_exec.service import Service

    store = Store.open(db_url)
    a_run(store, "run-1", ["web1"])
    assert store.take_locks(["name:web"], "run-1", "ann") == []
    with store.engine.begin() as db:  # the run's rows go, as a hand edit would do
        db.exec_driver_sql("DELETE FROM run_hosts WHERE run_id = 'run-1'")
        db.exec_driver_sql("DELETE FROM runs WHERE id = 'run-1'")
    holder = Service(store, "bob").unlock("name:web")
    assert holder.run_id == "run-1" and store.lock_holders(["name:web"]) == []
    forced = [e for e in store.audit_events() if e["type"] == "lock.forced"]
    assert len(forced) == 1 and "does not record" in forced[0]["body"]
