"""A 10-step runbook on a fleet of real local sshd hosts, against the alternatives, in one run.

    .venv/bin/python bench/fleet.py [--hosts 50] [--steps 10] [--repeat 3]

Every contender does the same work: connect to every host, then run `true` there --steps
times, each step on all hosts at once before the next. Each is timed as a whole process
(start-up, inventory, connections and, for runbook-exec, its store writes), in turns, best
of --repeat:

  runbook-exec   `runbook-exec run` on a runbook of --steps `shell: "true"` steps, cold:
                 the process imports everything itself (RUNBOOK_EXEC_NO_WARM=1)
  rbx-warm       the same command with a warm controller running (`runbook-exec warm
                 start`): the command is forked from a process that has imported it all
  asyncssh       a bare asyncssh loop: the floor for any Python tool on SSH
  ansible        ansible-playbook with --steps `raw: "true"` tasks, forks = hosts,
                 pipelining on, facts off (ControlPersist as Ansible sets it by default)
  fabric         Fabric's ThreadingGroup running the command --steps times

and prints each with its ratio to runbook-exec, and runbook-exec's peak memory (RSS).
Needs fabric installed (`pip install fabric`) for the Fabric row; skipped otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runbook_exec.testing.lab import SshLab
from runbook_exec.warm import ask

BIN = Path(sys.executable).parent

ASYNCSSH_LOOP = """
import asyncio, sys, asyncssh
hosts = [line.split() for line in open(sys.argv[1])]
async def main():
    conns = await asyncio.gather(*(asyncssh.connect("127.0.0.1", port=int(p), username=u,
        client_keys=[k], known_hosts=sys.argv[2]) for p, u, k in hosts))
    for _ in range(int(sys.argv[3])):
        results = await asyncio.gather(*(c.run("true") for c in conns))
        assert all(r.exit_status == 0 for r in results)
    for c in conns:
        c.close()
asyncio.run(main())
"""

FABRIC_LOOP = """
import sys
from fabric import ThreadingGroup
hosts = [line.split() for line in open(sys.argv[1])]
group = ThreadingGroup(*(f"{u}@127.0.0.1:{p}" for p, u, k in hosts),
                       connect_kwargs={"key_filename": hosts[0][2]})
for conn in group:
    conn.client.load_host_keys(sys.argv[2])
for _ in range(int(sys.argv[3])):
    group.run("true", hide=True)
group.close()
"""


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one whole process."""
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *command],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return elapsed, int(done.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rbx-bench-"))
    with SshLab() as lab:
        lab.start(args.hosts)
        hosts_file = work / "hosts.txt"
        hosts_file.write_text("".join(f"{h.port} {lab.user} {lab.client_key}\n" for h in lab.hosts))
        runbook = work / "rb.yml"
        runbook.write_text(
            "name: bench\ntargets: lab\nsteps:\n" + '  - shell: "true"\n' * args.steps
        )
        playbook = work / "pb.yml"
        playbook.write_text(
            "- hosts: lab\n  gather_facts: false\n  tasks:\n" + '    - raw: "true"\n' * args.steps
        )
        ansible_env = {
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_SSH_ARGS": f"-o ControlMaster=auto -o ControlPersist=60s "
            f"-o UserKnownHostsFile={lab.known_hosts}",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCALHOST_WARNING": "False",
        }
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
        cold = {"RUNBOOK_EXEC_NO_WARM": "1"}
        warm = {"RUNBOOK_EXEC_NO_WARM": "", "RUNBOOK_EXEC_WARM_SOCKET": str(work / "w" / "sock")}
        timed(ours, cold)  # a first run creates the store, as a user's first run does
        controller = subprocess.Popen(
            [str(BIN / "runbook-exec"), "warm", "start", "--foreground"],
            env={**os.environ, **warm},
            stderr=subprocess.DEVNULL,
        )
        while ask("status", warm["RUNBOOK_EXEC_WARM_SOCKET"]) is None:
            if controller.poll() is not None:
                raise RuntimeError("the warm controller did not start")
            time.sleep(0.1)
        contenders = {
            "runbook-exec": lambda: timed(ours, cold),
            "rbx-warm": lambda: timed(ours, warm),
            "asyncssh": lambda: timed(
                [
                    sys.executable,
                    "-c",
                    ASYNCSSH_LOOP,
                    str(hosts_file),
                    str(lab.known_hosts),
                    str(args.steps),
                ]
            ),
            "ansible": lambda: timed(
                [
                    str(BIN / "ansible-playbook"),
                    "-i",
                    str(lab.inventory),
                    "--forks",
                    str(args.hosts),
                    str(playbook),
                ],
                ansible_env,
            ),
        }
        try:
            import fabric  # noqa: F401

            contenders["fabric"] = lambda: timed(
                [
                    sys.executable,
                    "-c",
                    FABRIC_LOOP,
                    str(hosts_file),
                    str(lab.known_hosts),
                    str(args.steps),
                ]
            )
        except ImportError:
            print("fabric not installed: skipping the Fabric row")
        runs: dict[str, list[tuple[float, int]]] = {name: [] for name in contenders}
        try:
            for _ in range(args.repeat):  # in turns, so a slow spell hits every contender
                for name, run in contenders.items():
                    runs[name].append(run())
        finally:
            controller.terminate()
            controller.wait()
    shutil.rmtree(work, ignore_errors=True)

    results = {name: min(times) for name, times in runs.items()}
    for name, times in runs.items():
        print(f"  {name:<13} runs: " + " ".join(f"{t:.2f}" for t, _ in times))
    ours = results["runbook-exec"][0]
    print(f"{args.hosts} hosts × {args.steps} steps, whole process, best of {args.repeat}")
    for name, (seconds, rss) in results.items():
        memory = (
            "(the command is a fork of the controller)"
            if name == "rbx-warm"
            else f"peak RSS {rss / 1024:6.1f} MiB"
        )
        print(f"  {name:<13} {seconds:6.2f} s  {seconds / ours:5.2f}× runbook-exec  {memory}")
    for name, label in (("runbook-exec", "cold"), ("rbx-warm", "warm")):
        seconds = results[name][0]
        print(
            f"runbook-exec {label}: {seconds / results['asyncssh'][0]:.2f}× the bare asyncssh "
            f"loop, {results['ansible'][0] / seconds:.1f}× faster than ansible-playbook"
        )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"fleet-{args.hosts}.json").write_text(
        json.dumps(
            {
                "hosts": args.hosts,
                "steps": args.steps,
                **{k: {"seconds": s, "peak_rss_kib": m} for k, (s, m) in results.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
