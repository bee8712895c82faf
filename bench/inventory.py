"""How long resolving a large inventory takes, against Ansible's own tools, in one run.

    .venv/bin/python bench/inventory.py [--hosts 1000] [--repeat 5]

Builds an INI inventory with group_vars/host_vars, then times (best of --repeat):
  ours      Inventory.load + select('web:db') + merged variables for every host, in-process
            after a warm import (what `runbook-exec plan` pays per invocation besides start-up)
  ours-cli  `runbook-exec plan` on a one-step runbook, the whole process
  ansible   `ansible 'web:db' --list-hosts`, the whole process (pattern only, no variables)
  ansible-inventory  `ansible-inventory --list`, the whole process (all hosts with variables)
and prints each with its ratio to ansible-inventory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def build(root: Path, count: int) -> Path:
    (root / "group_vars").mkdir(parents=True)
    (root / "host_vars").mkdir()
    half = count // 2
    lines = ["[web]"] + [f"web{i} ansible_host=10.1.{i // 250}.{i % 250}" for i in range(half)]
    lines += ["[db]"] + [
        f"db{i} ansible_host=10.2.{i // 250}.{i % 250}" for i in range(count - half)
    ]
    lines += ["[dc1:children]", "web", "[dc1:vars]", "region=eu"]
    (root / "hosts.ini").write_text("\n".join(lines) + "\n")
    (root / "group_vars" / "all.yml").write_text("ntp: pool.ntp.org\n")
    (root / "group_vars" / "web.yml").write_text("app_port: 8080\napp_root: /srv/{{ region }}\n")
    for i in range(0, half, 50):
        (root / "host_vars" / f"web{i}.yml").write_text("app_port: 9090\n")
    (root / "rb.yml").write_text(
        "name: bench\ntargets: web:db\nsteps:\n  - shell: echo {{ inventory_hostname }}\n"
    )
    return root


def best(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from runbook_exec.inventory import Inventory

    with tempfile.TemporaryDirectory() as tmp:
        root = build(Path(tmp), args.hosts)

        def ours() -> None:
            hosts = Inventory.load([root]).select("web:db")
            assert len(hosts) == args.hosts
            for host in hosts:
                host.template_vars()

        def run(*command: str) -> None:
            subprocess.run(command, check=True, capture_output=True)

        ours()  # warm the import, as a long-lived process would be
        results = {
            "ours": best(ours, args.repeat),
            "ours-cli": best(
                lambda: run(
                    str(BIN / "runbook-exec"),
                    "plan",
                    str(root / "rb.yml"),
                    "-i",
                    str(root),
                    "--json",
                ),
                args.repeat,
            ),
            "ansible": best(
                lambda: run(str(BIN / "ansible"), "web:db", "-i", str(root), "--list-hosts"),
                args.repeat,
            ),
            "ansible-inventory": best(
                lambda: run(str(BIN / "ansible-inventory"), "-i", str(root), "--list"), args.repeat
            ),
        }
    base = results["ansible-inventory"]
    print(f"inventory of {args.hosts} hosts, best of {args.repeat}")
    for name, seconds in results.items():
        print(f"  {name:<18} {seconds * 1000:8.0f} ms   {seconds / base:5.2f}x ansible-inventory")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "inventory.json").write_text(json.dumps({"hosts": args.hosts, **results}, indent=2))


if __name__ == "__main__":
    main()
