"""What is live where: the recorded release switches and, on request, what the hosts' own
`current` links say, with any difference between the two called drift."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import HostKeyError
from .inventory import Host
from .jsonout import rfc3339
from .record.values import SwitchRecord, previous_of
from .transports.base import Unreachable
from .transports.ssh import SshOptions, connect

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
            "since": rfc3339(self.since),
            "run_id": self.run_id,
            "found": self.found,
            "problem": self.problem,
            "drift": self.drift,
        }


def recorded(
    switches: Mapping[tuple[str, str], Sequence[SwitchRecord]],
    hosts: Collection[str] | None = None,
) -> list[LiveRelease]:
    """What is live on each host under each root, from the recorded switches (oldest
    first), for the given hosts only when `hosts` is given."""
    live = []
    for (host, root), history in sorted(switches.items()):
        if not history or (hosts is not None and host not in hosts):
            continue
        newest = history[-1]
        previous = previous_of(history)
        live.append(LiveRelease(host, root, newest.to_version, previous, newest.at, newest.run_id))
    return live


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
