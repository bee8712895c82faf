"""Whether a process still runs: for stale locks, and for `warm stop` waiting on the end."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether `pid` runs on this machine. A zombie (ended, its exit status not yet
    collected by its parent; some containers' init collects late) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: it exists
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc here: kill(0) is all there is to go on
