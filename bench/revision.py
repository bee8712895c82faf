"""This tree against an earlier revision of runbook-exec: the same whole-process run on the
same local sshd hosts, in turns, so that a change to the core is measured, not guessed.

    .venv/bin/python bench/revision.py [--before 6fa6d0c] [--hosts 50] [--steps 10] [--repeat 8]

The runbook is what a real one does between its commands: a parameter, a secret, an
inventory variable that is a template, a result registered by one step and read by the
next, `when:` on some hosts, and `--steps` shell steps in all. Each revision runs it cold
(RUNBOOK_EXEC_NO_WARM=1) into its own SQLite store; the two alternate, --repeat times each,
and the best and median of each are printed with the ratio this/before.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from audit import wall
from older import revision
from runbook_exec.testing.lab import SshLab

BIN = Path(sys.executable).parent

STEPS = """\
name: bench
targets: lab
params:
  version: {required: true}
  token: {secret: true, env: RBX_BENCH_TOKEN}
steps:
  - shell: "echo {{ version }} {{ inventory_hostname }}"
    register: seen
  - shell: "test -n {{ seen.stdout | quote }}"
  - shell: "printf %s {{ token | quote }} > /dev/null"
  - shell: "echo {{ bench_root }}"
    when: inventory_hostname != 'nowhere'
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="6fa6d0c", help="the revision to compare with")
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10, help="shell steps in all (>= 4)")
    parser.add_argument("--repeat", type=int, default=8)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rbx-bench-rev-"))
    runbook = work / "rb.yml"
    runbook.write_text(STEPS + '  - shell: "true"\n' * max(args.steps - 4, 0))
    inventory = work / "inventory.ini"
    env = {**os.environ, "RUNBOOK_EXEC_NO_WARM": "1", "RBX_BENCH_TOKEN": "s3cr3t-bench"}
    with SshLab() as lab, revision(args.before, work / "before") as (before_cli, before_env):
        lab.start(args.hosts)
        lines = [line for line in lab.inventory.read_text().splitlines() if line.strip()]
        inventory.write_text(
            "\n".join(lines) + "\n[lab:vars]\nbench_root='/srv/{{ inventory_hostname }}'\n"
        )
        common = [
            "run",
            str(runbook),
            "-i",
            str(inventory),
            "--known-hosts",
            str(lab.known_hosts),
            "--forks",
            str(args.hosts),
            "-e",
            "version=1.0",
        ]
        contenders = {
            "this": ([str(BIN / "runbook-exec"), *common, "--db", f"sqlite:///{work}/a.db"], env),
            args.before: (
                [*before_cli, *common, "--db", f"sqlite:///{work}/b.db"],
                {**before_env, **{k: env[k] for k in ("RUNBOOK_EXEC_NO_WARM", "RBX_BENCH_TOKEN")}},
            ),
        }
        for command, command_env in contenders.values():
            wall(command, command_env)  # creates the store and warms the page cache
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.repeat):
            for name, (command, command_env) in contenders.items():
                times[name].append(wall(command, command_env))
    print(f"{args.hosts} hosts x {args.steps} steps, whole process, cold, {args.repeat} turns")
    base = times[args.before]
    for name, seconds in times.items():
        best, median = min(seconds), statistics.median(seconds)
        print(
            f"  {name:>10}: best {best:.2f}s  median {median:.2f}s"
            f"  ({best / min(base):.3f}x / {median / statistics.median(base):.3f}x of before)"
        )


if __name__ == "__main__":
    main()
