"""A `playbook:` step's overhead against running the same playbook with ansible-playbook.

    .venv/bin/python bench/playbook.py [--hosts 20] [--tasks 5] [--repeat 3]

Both contenders run the same playbook (--tasks `command: true` tasks, facts off) on the
same local sshd hosts with the same settings (forks = hosts, pipelining, ControlPersist,
the lab's known_hosts), each timed as a whole process, best of --repeat:

  ansible-playbook   ansible-playbook -i INVENTORY playbook.yml
  runbook-exec       runbook-exec run on a runbook whose one step is that playbook
                     (start-up, inventory, plan, store writes and every task event recorded)

and prints the ratio runbook-exec / ansible-playbook (target: at most 1.15).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runbook_exec.testing.lab import SshLab
from runbook_exec.transports.ansible import AnsibleSettings, environment

BIN = Path(sys.executable).parent


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rbx-bench-"))
    with SshLab() as lab:
        lab.start(args.hosts)
        playbook = work / "playbooks" / "pb.yml"
        playbook.parent.mkdir()
        playbook.write_text(
            "- hosts: all\n  gather_facts: false\n  tasks:\n"
            + '    - ansible.builtin.command: "true"\n' * args.tasks
        )
        runbook = work / "rb.yml"
        runbook.write_text("name: bench\ntargets: lab\nsteps:\n  - playbook: playbooks/pb.yml\n")
        settings = AnsibleSettings(lab.known_hosts, False, args.hosts, 600)
        ours = [
            str(BIN / "runbook-exec"),
            "run",
            str(runbook),
            *lab.cli_args(),
            "--forks",
            str(args.hosts),
            "--db",
            f"sqlite:///{work}/state.db",
        ]
        theirs = [
            str(BIN / "ansible-playbook"),
            "-i",
            str(lab.inventory),
            "--forks",
            str(args.hosts),
            str(playbook),
        ]
        timed(ours)  # creates the store and warms the inventory cache, as a user's first run
        results = {
            "ansible-playbook": min(
                timed(theirs, environment(settings)) for _ in range(args.repeat)
            ),
            "runbook-exec": min(timed(ours) for _ in range(args.repeat)),
        }
    ratio = results["runbook-exec"] / results["ansible-playbook"]
    print(
        f"playbook of {args.tasks} tasks on {args.hosts} hosts, whole process, "
        f"best of {args.repeat}"
    )
    for name, seconds in results.items():
        print(f"  {name:<17} {seconds:6.2f} s")
    print(f"a playbook step costs {ratio:.2f}× running ansible-playbook directly")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "playbook.json").write_text(
        json.dumps({**vars(args), **results, "ratio": ratio}, indent=2)
    )


if __name__ == "__main__":
    main()
