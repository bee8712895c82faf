"""What the audit trail costs: its share of a run, and how fast a long trail verifies.

    .venv/bin/python bench/audit.py [--hosts 50] [--steps 10] [--repeat 5] [--events 100000]
                                    [--before REV]

1. Run cost. The fleet benchmark's run (--hosts real local sshd hosts, --steps
   `shell: "true"` steps, whole process, keyed store) today, against the same run by git
   revision --before (default a9d4b2d: it wrote the chain but read nothing back from it, no
   key checks, no verified lock or run records), from a git worktree of it, each on a store
   of its own. The difference is what making the record the authority costs a run. (The
   chain cannot be turned off today: a run reads its own start back from it.) The two
   alternate, --repeat times each; medians are compared.
2. Verify speed. A SQLite store holding --events real-shaped events (host-steps started and
   finished, with output payloads) in one chain; timed: `verify` in-process (read and
   recompute), `runbook-exec audit verify` as a whole process, and the README's standalone
   snippet on a JSONL export of the same trail.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from older import revision
from runbook_exec.store import Store
from runbook_exec.store.audit import verify
from runbook_exec.store.export import export_lines
from runbook_exec.store.keys import key_folder
from runbook_exec.testing.lab import SshLab

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


def wall(command: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return elapsed


def write_cost(hosts: int, steps: int, repeat: int, work: Path, before: str) -> dict[str, float]:
    with SshLab() as lab, revision(before, work / "before") as (old_cli, old_env):
        lab.start(hosts)
        runbook = work / "rb.yml"
        runbook.write_text("name: bench\ntargets: lab\nsteps:\n" + '  - shell: "true"\n' * steps)
        args = [
            "run",
            str(runbook),
            *lab.cli_args(),
            "--forks",
            str(hosts),
        ]
        with_audit = [str(BIN / "runbook-exec"), *args, "--db", f"sqlite:///{work}/a.db"]
        older = [*old_cli, *args, "--db", f"sqlite:///{work}/b.db"]
        wall(with_audit)  # first runs create the stores
        wall(older, old_env)
        timings: dict[str, list[float]] = {"with": [], "without": []}
        for _ in range(repeat):
            timings["with"].append(wall(with_audit))
            timings["without"].append(wall(older, old_env))
        events = len(Store.open(f"sqlite:///{work}/a.db").audit_events())
    return {
        "with_s": statistics.median(timings["with"]),
        "without_s": statistics.median(timings["without"]),
        "events_per_run": events / (repeat + 1),
    }


def fill(url: str, count: int) -> None:
    """`count` events shaped like a real run's, appended as a run appends them."""
    store = Store.open(url)
    common = {
        "at": "2026-11-24T01:02:03.456Z",
        "run_id": "20261124-010203-abcdef",
        "operator": "ann",
        "actor": {"os_user": "ann", "operator": "ann", "machine": "ops-1"},
        "change_id": "CHG-1042",
        "reason": "Q4 release",
        "runbook": {"name": "deploy", "path": "runbooks/deploy.yml", "sha256": "ab" * 32},
    }
    events = []
    for n in range(1, count + 1):
        host = f"web{n % 200}"
        step = {"section": "steps", "index": n % 10, "name": f"Step {n % 10}"}
        event = {**common, "host": host, "batch": 1, "step": step}
        if n % 2:
            events.append({**event, "type": "host_step.started"})
        else:
            events.append(
                {
                    **event,
                    "type": "host_step.finished",
                    "status": "ok",
                    "rc": 0,
                    "duration_ms": 12,
                    "message": "",
                    "output": {"stdout": f"deployed 1.4.2 on {host}\n" * 3, "stderr": ""},
                    "output_bytes": 78,
                    "output_sha256": "cd" * 32,
                    "attempts": 1,
                }
            )
    for start in range(0, count, 10_000):
        store.append_audits(events[start : start + 10_000])


def verify_speed(count: int, work: Path, before: str) -> dict[str, float]:
    url = f"sqlite:///{work}/trail.db"
    fill(url, count)
    store = Store.open(url)
    start = time.perf_counter()
    result = verify(store.audit_events(), store.keys)
    in_process = time.perf_counter() - start
    assert result.finding is None and result.count == count + 1  # and audit.keyed, first
    whole = wall([str(BIN / "runbook-exec"), "audit", "verify", "--db", url])
    # The older revision, on a copy with its schema (one index fewer) and the key in its
    # environment, as it took keys then.
    with sqlite3.connect(work / "trail.db") as now, sqlite3.connect(work / "old.db") as db:
        now.backup(db)  # consistent, WAL included
        db.execute("DROP INDEX IF EXISTS ix_audit_type")
        db.execute("UPDATE alembic_version SET version_num = '0005'")
    (key_file,) = key_folder().glob("*.key")
    with revision(before, work / "before-verify") as (old_cli, old_env):
        old_env["RUNBOOK_EXEC_AUDIT_KEY"] = key_file.read_text().strip()
        old = [*old_cli, "audit", "verify", "--db", f"sqlite:///{work}/old.db"]
        older = min(wall(old, old_env) for _ in range(3))
    whole = min(
        [
            whole,
            *(wall([str(BIN / "runbook-exec"), "audit", "verify", "--db", url]) for _ in range(2)),
        ]
    )
    export = work / "trail.jsonl"
    export.write_text("".join(f"{line}\n" for line in export_lines(store.audit_events())))
    readme = (REPO / "README.md").read_text()
    snippet = readme.split("<!-- verify-snippet -->")[1].split("```python")[1].split("```")[0]
    (work / "verify.py").write_text(snippet)
    standalone = wall([sys.executable, str(work / "verify.py"), str(export), str(key_folder())])
    return {
        "in_process_s": in_process,
        "whole_process_s": whole,
        "before_whole_process_s": older,
        "snippet_s": standalone,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--before", default="a9d4b2d", help="the git revision to compare with")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rbx-bench-audit-"))
    # The stores made here get their audit keys in a folder of the benchmark's own.
    os.environ["XDG_CONFIG_HOME"] = str(work / "config")
    os.environ["RUNBOOK_EXEC_NO_WARM"] = "1"

    cost = write_cost(args.hosts, args.steps, args.repeat, work, args.before)
    share = (cost["with_s"] - cost["without_s"]) / cost["with_s"]
    print(
        f"write cost, {args.hosts} hosts × {args.steps} steps "
        f"({cost['events_per_run']:.0f} events a run), median of {args.repeat}:"
    )
    print(f"  {'today (verified record)':32} {cost['with_s']:6.2f} s")
    print(f"  {args.before + ' (write-only)':32} {cost['without_s']:6.2f} s")
    print(f"  what the verified record costs the run: {share * 100:.1f}%")

    speed = verify_speed(args.events, work, args.before)
    print(f"verify {args.events:,} events:")
    print(f"  in-process (read + verify)       {speed['in_process_s']:6.2f} s")
    print(f"  `runbook-exec audit verify`      {speed['whole_process_s']:6.2f} s (best of 3)")
    print(
        f"  the same, {args.before}           {speed['before_whole_process_s']:6.2f} s (best of 3)"
    )
    print(f"  README snippet on a JSONL export {speed['snippet_s']:6.2f} s")

    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "audit.json").write_text(
        json.dumps({"hosts": args.hosts, "steps": args.steps, **cost, "share": share, **speed})
    )


if __name__ == "__main__":
    main()
