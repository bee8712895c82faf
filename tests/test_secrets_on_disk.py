"""Nothing secret is left on disk: `kill -9` in the middle of a playbook step that was given
a secret leaves no file, in the temp folder or the workspace, holding the secret, the audit
key or the environment; and the next command removes what the dead one left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import BACKENDS
from helpers import wait_until
from runbook_exec.processes import alive
from runbook_exec.testing.lab import SshLab

Run = Callable[..., subprocess.CompletedProcess[str]]
Write = Callable[[str, str], Path]

SLOW_PLAY = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: Work with the token for a while
      ansible.builtin.shell: "touch {{ lab_root }}/started; sleep 60; test -n \\"$TOKEN\\""
      environment: {TOKEN: "{{ token }}"}
"""

RUNBOOK = """\
name: secret-playbook
targets: app
params:
  token: {type: str, secret: true, required: true, env: RBX_DISK_TOKEN}
steps:
  - name: Check the token with a module
    module:
      name: ansible.builtin.assert
      args: {that: ["'{{ token }}' | length > 8"], quiet: true}
  - name: Slow playbook
    playbook: slow.yml
    vars: {token: "{{ token }}"}
"""


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def files_holding(folders: list[Path], needles: list[bytes], since: float) -> list[str]:
    """Files under `folders` changed since `since` that contain one of `needles`."""
    hits = []
    for folder in folders:
        for root, _, names in os.walk(folder, onerror=lambda error: None):
            for name in names:
                path = Path(root) / name
                try:
                    info = path.lstat()
                    if not path.is_file() or path.is_symlink() or info.st_mtime < since:
                        continue
                    if info.st_size > 50_000_000:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                hits += [f"{path} holds {needle!r}" for needle in needles if needle in data]
    return hits


def started_at(pid: int) -> str | None:
    """When the process `pid` started (clock ticks since boot), or None if there is none:
    with its pid, what tells one process from another that later got the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@pytest.fixture
def orphans() -> Iterator[dict[int, str | None]]:
    """Processes a killed command left running (pid: when it started), killed in turn
    when the test ends: each only while it is still that process. One that ended by
    itself left its pid to be reused, under a parallel run perhaps by another test's
    freshly started app (which then never answered its health check)."""
    left: dict[int, str | None] = {}
    yield left
    for pid, since in left.items():
        if since is not None and alive(pid) and started_at(pid) == since:
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_kill_9_in_a_playbook_step_leaves_no_secret_key_or_environment_on_disk(
    runbook_exec: Run, write: Write, hosts: SshLab, tmp_path: Path, orphans: dict[int, str | None]
) -> None:
    since = time.time() - 1
    secret = f"tok-{uuid.uuid4().hex}"
    key = f"audit-key-{uuid.uuid4().hex}"
    marker = f"env-marker-{uuid.uuid4().hex}"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        "RBX_DISK_TOKEN": secret,
        "RUNBOOK_EXEC_AUDIT_KEY": key,
        "RBX_ENV_MARKER": marker,
        "TMPDIR": str(scratch),
    }
    write("slow.yml", SLOW_PLAY)
    process = runbook_exec.spawn("run", write("rb.yml", RUNBOOK), env=env)  # type: ignore[attr-defined]
    started = [hosts.host(h).root / "started" for h in ("host1", "host2", "host3", "host4")]
    wait_until(lambda: all(p.exists() for p in started) or process.poll() is not None, 60)
    assert process.poll() is None, process.communicate()
    left = descendants(process.pid)
    orphans.update({pid: started_at(pid) for pid in left})
    assert left, "the playbook step runs in processes of its own"
    process.send_signal(signal.SIGKILL)
    process.wait()

    needles = [secret.encode(), key.encode(), marker.encode()]
    folders = [tmp_path, Path(tempfile.gettempdir()), Path.home() / ".ansible"]
    assert files_holding(folders, needles, since) == []
    dead = scratch / f"runbook-exec-{os.getuid()}" / str(process.pid)
    assert dead.exists(), "the killed command had a scratch folder"

    # The next command, whatever it is, removes the dead command's scratch folder.
    listed = runbook_exec("runs", env={"TMPDIR": str(scratch), "RUNBOOK_EXEC_AUDIT_KEY": key})
    assert listed.returncode == 0, listed.stderr
    assert not dead.exists()
    assert secret not in listed.stdout + listed.stderr
