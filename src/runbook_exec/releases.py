"""What is live where: the recorded release switches and, on request, what the hosts' own
`current` links say, with any difference between the two called drift."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import HostKeyError
from .inventory import Host
from .transports.ssh import SshOptions, Unreachable, connect

CHECK_TIMEOUT = 30.0


@dataclass(frozen=True)
class LiveRelease:
    """One host's release under one root, as recorded (and as found, when checked)."""

    host: str
    root: str
    live: str
    previous: str | None
    since: float
    run_id: str
    found: str | None = None
    problem: str | None = None

    @property
    def drift(self) -> bool:
        return self.problem is not None or (self.found is not None and self.found != self.live)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "root": self.root,
            "live": self.live,
            "previous": self.previous,
            "since": self.since,
            "run_id": self.run_id,
            "found": self.found,
            "problem": self.problem,
            "drift": self.drift,
        }


def previous_of(switches: Sequence[Mapping[str, Any]]) -> str | None:
    """The release that was live before the current one was deployed, from one root's
    switches on one host (oldest first). Switching back (`activate: previous`) is not a
    deploy: after 1 -> 2 -> 3 and a rollback to 2, the previous release is 1, not 3, so a
    second rollback goes further back instead of returning to the release just left."""
    if not switches:
        return None
    live = switches[-1]["to_version"]
    for switch in reversed(switches):
        if switch["to_version"] == live and switch["source"] == "activate":
            return str(switch["from_version"]) if switch["from_version"] else None
    return None  # the live release was never deployed on record: the disk must tell


def recorded(
    rows: Sequence[Mapping[str, Any]],
    history: Callable[[str, str], Sequence[Mapping[str, Any]]],
) -> list[LiveRelease]:
    return [
        LiveRelease(
            r["host"],
            r["root"],
            r["to_version"],
            previous_of(history(r["host"], r["root"])),
            r["at"],
            r["run_id"],
        )
        for r in rows
    ]


async def check(
    releases: Sequence[LiveRelease], hosts: Mapping[str, Host], options: SshOptions
) -> list[LiveRelease]:
    """Read each host's `ROOT/current` link and set what was found (or why not)."""

    async def one(release: LiveRelease) -> LiveRelease:
        host = hosts.get(release.host)
        if host is None:
            return _with(release, problem="not in the inventory given; cannot check")
        try:
            session = await connect(host, options)
        except (Unreachable, HostKeyError) as exc:
            return _with(release, problem=f"unreachable: {exc}")
        try:
            done = await session.run(
                f"readlink {shlex.quote(release.root + '/current')}", CHECK_TIMEOUT
            )
        except Unreachable as exc:
            return _with(release, problem=f"unreachable: {exc}")
        finally:
            await session.close()
        if not done.ok:
            return _with(release, problem=f"no current link under {release.root}")
        return _with(release, found=done.stdout.strip().removeprefix("releases/"))

    return list(await asyncio.gather(*(one(r) for r in releases)))


def _with(release: LiveRelease, **changes: Any) -> LiveRelease:
    from dataclasses import replace

    return replace(release, **changes)
