"""What verifying costs `show`: a run of --hosts real local sshd hosts × --steps steps,
shown from its verified audit events, against `show` as it was before it verified anything
(read from the tables alone), in the same run.

    .venv/bin/python bench/show.py [--hosts 1000] [--steps 10] [--repeat 5] [--before REV]

The run is real (`runbook-exec run` on the lab, each step printing a line on each host).
Then, whole processes, in turns, best of --repeat:

  verified     `runbook-exec show RUN` today: the run's events from its first to the head
               of the chain, each hash recomputed (HMAC-SHA256), folded into records and
               compared with the tables
  tables       `runbook-exec show RUN` of git revision --before (default a9d4b2d, the last
               one that read the tables alone), from a git worktree of it, on a copy of the
               same store with its schema set back to that revision's (one index fewer)

and the same two for `show --json`. Prints each with the ratio verified / tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from older import revision
from runbook_exec.testing.lab import SshLab

BIN = Path(sys.executable).parent
BEFORE = "a9d4b2d"


def wall(command: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def real_run(hosts: int, steps: int, work: Path, env: dict[str, str]) -> tuple[str, int]:
    """A run on `hosts` lab hosts; its id and how many events the store holds."""
    with SshLab() as lab:
        started = time.perf_counter()
        lab.start(hosts)
        print(f"  {hosts} sshd hosts started in {time.perf_counter() - started:.1f} s")
        runbook = work / "rb.yml"
        runbook.write_text(
            "name: bench-show\ntargets: lab\nsteps:\n"
            + "".join(
                f"  - name: Step {n}\n"
                f"    shell: echo step {n} done on {{{{ inventory_hostname }}}}\n"
                for n in range(1, steps + 1)
            )
        )
        started = time.perf_counter()
        subprocess.run(
            [
                str(BIN / "runbook-exec"),
                "run",
                str(runbook),
                *lab.cli_args(),
                "--forks",
                str(min(hosts, 500)),
                "--db",
                f"sqlite:///{work}/now.db",
                "--json",
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        print(f"  the run took {time.perf_counter() - started:.1f} s")
    with sqlite3.connect(work / "now.db") as db:
        run_id = db.execute("SELECT id FROM runs").fetchone()[0]
        events = db.execute("SELECT count(*) FROM audit_events").fetchone()[0]
    return str(run_id), int(events)


def set_back(work: Path) -> None:
    """A copy of the store as the older revision's schema has it."""
    shutil.copy(work / "now.db", work / "before.db")
    with sqlite3.connect(work / "before.db") as db:
        db.execute("DROP INDEX IF EXISTS ix_audit_type")
        db.execute("UPDATE alembic_version SET version_num = '0005'")


def compare(
    run_id: str,
    work: Path,
    env: dict[str, str],
    old_cli: list[str],
    old_env: dict[str, str],
    repeat: int,
) -> dict[str, float]:
    """Each contender's best time: `show` and `show --json`, verified and from the tables."""
    old_db = f"sqlite:///{work}/before.db"
    contenders = {}
    for flags in ([], ["--json"]):
        name = " ".join(["show", *flags])
        now_db = f"sqlite:///{work}/now.db"
        contenders[f"{name}, verified"] = (
            [str(BIN / "runbook-exec"), "show", run_id, *flags, "--db", now_db],
            env,
        )
        contenders[f"{name}, tables"] = (
            [*old_cli, "show", run_id, *flags, "--db", old_db],
            old_env,
        )
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for command, command_env in contenders.values():
        wall(command, command_env)  # warm the page cache
    for _ in range(repeat):
        for name, (command, command_env) in contenders.items():
            times[name].append(wall(command, command_env))
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--before", default=BEFORE, help="the git revision to compare with")
    parser.add_argument("--keep", action="store_true", help="keep the stores, for profiling")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rbx-bench-show-"))
    env = {
        **os.environ,
        "RUNBOOK_EXEC_NO_WARM": "1",
        "RUNBOOK_EXEC_AUDIT_KEY": "bench-audit-key-0123456789",
        "COLUMNS": "160",
    }
    try:
        with revision(args.before, work / "before") as (old_cli, old_env):
            run_id, events = real_run(args.hosts, args.steps, work, env)
            set_back(work)
            old_env.update(RUNBOOK_EXEC_NO_WARM="1", COLUMNS="160")
            best = compare(run_id, work, env, old_cli, old_env, args.repeat)
        print(
            f"show of a {args.hosts}-host × {args.steps}-step run ({events:,} events in the "
            f"store), whole process, best of {args.repeat}:"
        )
        for flags in ("show", "show --json"):
            verified, tables = best[f"{flags}, verified"], best[f"{flags}, tables"]
            print(
                f"  {flags:12} verified {verified:6.2f} s   tables ({args.before}) "
                f"{tables:6.2f} s   {verified / tables:.2f}×"
            )
        out = Path(__file__).parent / "results"
        out.mkdir(exist_ok=True)
        (out / "show.json").write_text(
            json.dumps({"hosts": args.hosts, "steps": args.steps, "events": events, **best})
        )
    finally:
        if args.keep:
            print(f"  the stores are in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
