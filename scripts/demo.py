"""The demo: six real sshd hosts on loopback, and runbook-exec used on them as a user would."""

from __future__ import annotations

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


def step(title: str, *args: str, expect: int = 0) -> None:
    shown = " ".join(shlex.quote(a) for a in ["runbook-exec", *args])
    print(f"\n\033[1m== {title}\033[0m\n$ {shown}", flush=True)
    done = subprocess.run([CLI, *args], cwd=REPO)
    if done.returncode != expect:
        sys.exit(f"demo: expected exit {expect}, got {done.returncode}")


def artifact(folder: Path, version: str) -> Path:
    source = folder / f"app-{version}"
    source.mkdir()
    (source / "VERSION").write_text(version + "\n")
    (source / "app.sh").write_text(f"#!/bin/sh\necho 'hello from app {version}'\n")
    path = folder / f"app-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for item in source.iterdir():
            tar.add(item, arcname=item.name)
    return path


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="rbx-demo-"))
    with SshLab() as lab:
        lab.start(6, prefix="web", groups={"web": [f"web{i}" for i in range(1, 7)]})
        inventory = work / "inventory"
        inventory.mkdir()
        shutil.copy(lab.inventory, inventory / "hosts.ini")
        shutil.copytree(REPO / "inventory" / "group_vars", inventory / "group_vars")
        print(
            f"Started {len(lab.hosts)} sshd hosts on 127.0.0.1 (ports "
            f"{', '.join(str(h.port) for h in lab.hosts)}); inventory in {inventory}"
        )
        tarball = artifact(work, "1.0.0")
        common = ["-i", str(inventory), "-e", "version=1.0.0", "-e", f"artifact={tarball}"]
        step(
            "Check the runbook, parameters, inventory and templates",
            "check",
            "runbooks/deploy.yml",
            *common,
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
            f"artifact={tarball}",
            expect=2,
        )
        step(
            "Plan: batches, gates and every step rendered per host",
            "plan",
            "runbooks/deploy.yml",
            *common,
        )
    shutil.rmtree(work, ignore_errors=True)
    print("\nDemo finished; the lab hosts are stopped.")


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "120")
    main()
