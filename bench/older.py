"""Another revision of runbook-exec, run beside this one: a git worktree of it, and the
command line that runs its CLI from there. For benchmarks that compare with an earlier
revision in the same run."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = "import sys; from runbook_exec.cli import main; sys.argv[0] = 'runbook-exec'; main()"


@contextlib.contextmanager
def revision(rev: str, where: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    """`rev` checked out at `where` for the duration: the argv prefix that runs its CLI and
    the environment it needs (this environment, with its source first on the path)."""
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), rev],
        check=True,
        capture_output=True,
    )
    try:
        yield [sys.executable, "-c", CLI], {**os.environ, "PYTHONPATH": str(where / "src")}
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)],
            capture_output=True,
        )
