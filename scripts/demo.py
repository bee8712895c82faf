"""The demo: six real sshd hosts on loopback, and runbook-exec used on them as a user would.

It deploys 1.0.0 everywhere (canary first), then tries a broken 1.1.0 whose release check
fails on the canary: the run stops there, the canary keeps 1.0.0, and no other host is
touched. Then it lists the runs and shows the failed one. The state store is the embedded
SQLite file, in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from runbook_exec.lab import SshLab

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("runbook-exec"))


def say(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def step(title: str, *args: str, expect: int = 0) -> None:
    say(title)
    print("$ " + " ".join(shlex.quote(a) for a in ["runbook-exec", *args]), flush=True)
    done = subprocess.run([CLI, *args], cwd=REPO)
    if done.returncode != expect:
        sys.exit(f"demo: expected exit {expect}, got {done.returncode}")


def artifact(folder: Path, version: str, *, broken: bool = False) -> Path:
    source = folder / f"app-{version}"
    source.mkdir()
    if not broken:
        (source / "VERSION").write_text(version + "\n")
    (source / "app.sh").write_text(f"#!/bin/sh\necho 'hello from app {version}'\n")
    path = folder / f"app-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for item in source.iterdir():
            tar.add(item, arcname=item.name)
    return path


def live_versions(lab: SshLab) -> str:
    versions = []
    for host in lab.hosts:
        current = host.root / "app" / "current" / "VERSION"
        versions.append(f"{host.name}={current.read_text().strip() if current.exists() else '-'}")
    return "  ".join(versions)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="rbx-demo-"))
    os.chmod(work, 0o755)
    with SshLab() as lab:
        lab.start(6, prefix="web", groups={"web": [f"web{i}" for i in range(1, 7)]})
        inventory = work / "inventory"
        inventory.mkdir()
        shutil.copy(lab.inventory, inventory / "hosts.ini")
        shutil.copytree(REPO / "inventory" / "group_vars", inventory / "group_vars")
        ports = ", ".join(str(h.port) for h in lab.hosts)
        print(
            f"Started {len(lab.hosts)} sshd hosts on 127.0.0.1 (ports {ports}), "
            f"logging in as {lab.user}; inventory in {inventory}"
        )
        store = ["--db", f"sqlite:///{work}/state.db"]
        ssh = ["-i", str(inventory), "--known-hosts", str(lab.known_hosts)]
        good, bad = artifact(work, "1.0.0"), artifact(work, "1.1.0", broken=True)

        step(
            "Check the runbook, parameters, inventory and templates (connects nowhere)",
            "check",
            "runbooks/deploy.yml",
            "-i",
            str(inventory),
            "-e",
            "version=1.0.0",
            "-e",
            f"artifact={good}",
        )
        step(
            "A mistake is caught before anything connects (exit 2)",
            "check",
            "runbooks/deploy.yml",
            "-i",
            str(inventory),
            "-e",
            "version=1.0 beta",
            "-e",
            f"artifact={good}",
            expect=2,
        )
        step(
            "Deploy 1.0.0: the canary web1 first, then half, then the rest",
            "run",
            "runbooks/deploy.yml",
            *ssh,
            *store,
            "-e",
            "version=1.0.0",
            "-e",
            f"artifact={good}",
            "--change-id",
            "CHG-1001",
            "--reason",
            "first release",
        )
        say("Live on each host now")
        print(live_versions(lab))
        step(
            "Deploy a broken 1.1.0: its check fails on the canary and the run stops (exit 1)",
            "run",
            "runbooks/deploy.yml",
            *ssh,
            *store,
            "-e",
            "version=1.1.0",
            "-e",
            f"artifact={bad}",
            "--change-id",
            "CHG-1002",
            "--reason",
            "hotfix",
            expect=1,
        )
        say("Live on each host now: the canary kept 1.0.0, no other host was touched")
        print(live_versions(lab))
        step("Every run, newest first", "runs", *store)
        record = subprocess.run(
            [CLI, "runs", "--json", *store], capture_output=True, text=True, check=True, cwd=REPO
        )
        failed = json.loads(record.stdout)[0]["run_id"]
        step("What the failed run did, host by host", "show", failed, *store)
    shutil.rmtree(work, ignore_errors=True)
    print("\nDemo finished; the lab hosts are stopped and its files removed.")


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "120")
    main()
