"""Private scratch folders, for files that may hold a secret while a step needs them: what
ansible-runner works in, a template rendered before it is uploaded.

They all live under one parent per user, `$TMPDIR/runbook-exec-<uid>/` (0700, ours, not a
symlink), in a folder per process named for its pid. Each use takes a fresh folder of its
own there and removes it when done. A process killed with -9 cannot clean up after itself,
so every command starts by removing the folders of processes that are no longer alive
(`remove_leftovers`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import Refused
from .processes import alive

_cleanup_registered_for: int | None = None


def parent() -> Path:
    """Where every process's scratch folder is: `runbook-exec-<uid>` in the temp folder."""
    # TMPDIR is read afresh: a command forked by the warm controller has the caller's.
    base = os.environ.get("TMPDIR") or tempfile.gettempdir()
    return Path(base) / f"runbook-exec-{os.getuid()}"


@contextlib.contextmanager
def private_folder(purpose: str) -> Iterator[Path]:
    """A new empty folder that only this user can enter, removed with all it holds when
    the block ends."""
    folder = Path(tempfile.mkdtemp(prefix=f"{purpose}-", dir=_process_folder()))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def process_folder(purpose: str) -> Path:
    """A folder only this user can enter, kept for the life of this process (for what
    several steps share, such as Ansible's SSH control sockets)."""
    folder = _process_folder() / purpose
    _make_private(folder)
    return folder


def socket_folder(purpose: str) -> Path:
    """`process_folder(purpose)`, or, when that path is too long for a unix socket under
    it (108 bytes, less a socket's name; a long TMPDIR), a private folder of this process
    in /tmp, removed when it exits."""
    folder = process_folder(purpose)
    if len(str(folder)) <= 60:
        return folder
    short = Path("/tmp") / f"rbx-{os.getuid()}-{os.getpid()}-{purpose}"
    _make_private(short)
    atexit.register(shutil.rmtree, short, ignore_errors=True)
    return short


def remove_leftovers() -> None:
    """Remove the scratch folders of processes that have ended; a live one's are kept. Cheap
    enough for every command's start: one listing, and a signal 0 per folder."""
    top = parent()
    try:
        if not _private(top):
            return  # not ours to clean; `private_folder` says why when one is needed
        names = os.listdir(top)
    except OSError:
        return
    for name in names:
        if name.isdigit() and not alive(int(name)):
            shutil.rmtree(top / name, ignore_errors=True)


def _process_folder() -> Path:
    """This process's folder, made if need be and removed when the process exits."""
    global _cleanup_registered_for
    top = parent()
    _make_private(top)
    pid = os.getpid()
    mine = top / str(pid)
    _make_private(mine)
    if _cleanup_registered_for != pid:  # a forked process registers its own
        atexit.register(shutil.rmtree, mine, ignore_errors=True)
        _cleanup_registered_for = pid
    return mine


def _make_private(path: Path) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    if not _private(path):
        raise Refused(
            f"{path} is not a private folder of this user (it is a symlink, someone else's, "
            "or open to others): remove it, or set TMPDIR to another folder"
        )


def _private(path: Path) -> bool:
    info = os.lstat(path)
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    )
