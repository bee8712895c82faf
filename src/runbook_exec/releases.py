"""What is live where: the recorded release switches and, on request, what the hosts' own
`current` links say, with any difference between the two called drift."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Mapping, Sequence
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


def recorded(rows: Sequence[Mapping[str, Any]]) -> list[LiveRelease]:
    return [
        LiveRelease(r["host"], r["root"], r["to_version"], r["from_version"], r["at"], r["run_id"])
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
