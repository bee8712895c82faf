"""Each step kind turned into transport calls, for one host. The executor decides when and
where; this module only says how a rendered step is carried out."""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..events import ReleaseSwitch
from ..masking import Secrets
from ..runbook import in_workspace
from ..scratch import private_folder
from ..templating import render
from ..transports.ansible import one_task_play
from ..transports.local import run_local
from ..transports.ssh import CommandResult, SshSession

# The release switch, in POSIX sh: the new `current` is made beside the old one and renamed
# over it (rename(2) via mv -T), so there is never a moment without `current`. Releases are
# pruned oldest first (by mtime) beyond `keep`, never the new live one nor the one it
# replaced. With target "previous" and no record, the release before the live one on disk
# is chosen, and the output says so.
RELEASE_SCRIPT = """\
set -eu
cd "$root" 2>/dev/null || { echo "$root does not exist" >&2; exit 3; }
old=$(readlink current 2>/dev/null || true); old=${old#releases/}
if [ "$target" = "{previous-on-disk}" ]; then
    target=""; seen=""
    for r in $(ls -1t releases 2>/dev/null); do
        [ -d "releases/$r" ] || continue
        if [ -n "$seen" ]; then target=$r; break; fi
        [ "$r" = "$old" ] && seen=1
    done
    [ -n "$target" ] || { echo "no release before ${old:-none} in $root/releases" >&2; exit 3; }
    echo "source=disk"
fi
[ -d "releases/$target" ] || { echo "release $target not found in $root/releases" >&2; exit 3; }
ln -sfn "releases/$target" ".current.$$"
mv -T ".current.$$" current
echo "from=$old"
echo "to=$target"
n=0
for r in $(ls -1t releases); do
    [ -d "releases/$r" ] || continue
    n=$((n + 1))
    if [ "$n" -gt "$keep" ] && [ "$r" != "$target" ] && [ "$r" != "$old" ]; then
        rm -rf "releases/$r" && echo "pruned=$r"
    fi
done
"""
PREVIOUS_ON_DISK = "{previous-on-disk}"

PORT_PROBE = (
    "(command -v nc >/dev/null 2>&1 && nc -z {h} {p}) || "
    "(command -v bash >/dev/null 2>&1 && bash -c 'exec 3<>/dev/tcp/'{h}'/'{p}) || "
    "(command -v python3 >/dev/null 2>&1 && python3 -c "
    "'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)' {h} {p})"
)


@dataclass
class HostContext:
    """What a step needs to act on one host."""

    session: Callable[[], Awaitable[SshSession]]
    timeout: float
    output_limit: int
    secrets: Secrets
    workspace: Path
    template_names: Mapping[str, Any]
    previous_release: Callable[[str], str | None] = lambda root: None


def ok(stdout: str = "", started: float | None = None) -> CommandResult:
    duration = time.monotonic() - started if started is not None else 0.0
    return CommandResult(rc=0, stdout=stdout, stderr="", duration=duration)


async def perform(kind: str, action: Mapping[str, Any], host: HostContext) -> CommandResult:
    """Carry out one rendered step on one host and say what happened."""
    if kind == "shell":
        return await (await host.session()).run(action["shell"], host.timeout)
    if kind == "command":
        return await (await host.session()).run(shlex.join(action["command"]), host.timeout)
    if kind == "local":
        return await run_local(
            action["local"], host.timeout, host.output_limit, str(host.workspace), host.secrets
        )
    if kind == "http":
        from ..transports.http import check_http  # urllib costs 0.3 s to import; only if used

        return await check_http(action["http"], host.timeout)
    if kind in ("upload", "template"):
        return await _transfer(kind, action[kind], host)
    if kind == "script":
        return await _script(action["script"], host)
    if kind == "wait_for":
        return await _wait_for(action["wait_for"], host)
    if kind == "release":
        return await _release(action["release"], host)
    raise ValueError(f"{kind} steps are not run per host")


async def _transfer(kind: str, spec: Mapping[str, Any], host: HostContext) -> CommandResult:
    started = time.monotonic()
    source = in_workspace(host.workspace, spec["src"])
    session = await host.session()
    if kind == "upload":
        await asyncio.wait_for(session.upload(source, spec["dest"], spec.get("mode")), host.timeout)
        return ok(f"uploaded {source.stat().st_size} bytes to {spec['dest']}", started)
    text = render(source.read_text(encoding="utf-8"), host.template_names)
    # The rendering may hold a secret: it lies in a private folder (0600 inside 0700) only
    # while it is uploaded; a kill -9 meanwhile leaves it to the next command to remove.
    with private_folder("template") as folder:
        rendered = folder / "rendered"
        fd = os.open(rendered, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w", encoding="utf-8") as out:
            out.write(text)
        await asyncio.wait_for(
            session.upload(rendered, spec["dest"], spec.get("mode")), host.timeout
        )
    return ok(f"rendered {spec['src']} to {spec['dest']}", started)


async def _script(spec: Mapping[str, Any], host: HostContext) -> CommandResult:
    session = await host.session()
    made = await session.run("mktemp /tmp/rbx-script.XXXXXX", host.timeout)
    if not made.ok:
        return made
    remote = made.stdout.strip()
    await asyncio.wait_for(
        session.upload(in_workspace(host.workspace, spec["src"]), remote, "0700"), host.timeout
    )
    argv = shlex.join([remote, *spec.get("args", [])])
    return await session.run(f"{argv}; rc=$?; rm -f {shlex.quote(remote)}; exit $rc", host.timeout)


async def _wait_for(spec: Mapping[str, Any], host: HostContext) -> CommandResult:
    """Probe until it succeeds or `spec.timeout` runs out; each probe has its own timeout."""
    session = await host.session()
    started = time.monotonic()
    if spec.get("command") is not None:
        probe = spec["command"]
        what = f"`{probe}` to succeed"
    else:
        probe = PORT_PROBE.format(h=shlex.quote(str(spec["host"])), p=int(spec["port"]))
        what = f"port {spec['port']} on {spec['host']} to answer"
    deadline = started + float(spec["timeout"])
    attempts = 0
    last: CommandResult | None = None
    while True:
        attempts += 1
        last = await session.run(probe, min(host.timeout, max(deadline - time.monotonic(), 1.0)))
        if last.ok:
            return CommandResult(0, last.stdout, last.stderr, time.monotonic() - started)
        if time.monotonic() + float(spec["interval"]) > deadline:
            break
        await asyncio.sleep(float(spec["interval"]))
    message = f"gave up waiting for {what} after {attempts} tries"
    stderr = f"{last.stderr}\n{message}".strip() if last else message
    return CommandResult(1, last.stdout if last else "", stderr, time.monotonic() - started)


async def _release(spec: Mapping[str, Any], host: HostContext) -> CommandResult:
    target = str(spec["activate"])
    note = ""
    if target == "previous":
        recorded = host.previous_release(str(spec["root"]))
        target = recorded or PREVIOUS_ON_DISK
        if recorded is None:
            note = "no record of an earlier release on this host; chose from what is on disk\n"
    script = (
        f"root={shlex.quote(str(spec['root']))}; target={shlex.quote(target)}; "
        f"keep={int(spec['keep'])}\n{RELEASE_SCRIPT}"
    )
    done = await (await host.session()).run(script, host.timeout)
    return replace(done, stdout=note + done.stdout) if note else done


def release_switch(spec: Mapping[str, Any], stdout: str) -> ReleaseSwitch | None:
    fields: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        fields.setdefault(key, []).append(value)
    if "to" not in fields:
        return None
    if spec["activate"] != "previous":
        source = "activate"
    else:
        source = "disk" if fields.get("source") == ["disk"] else "previous"
    return ReleaseSwitch(
        root=str(spec["root"]),
        from_version=fields.get("from", [""])[0] or None,
        to_version=fields["to"][0],
        pruned=tuple(fields.get("pruned", [])),
        source=source,
    )


def ansible_call(
    kind: str, title: str, action: Mapping[str, Any], workspace: Path
) -> tuple[Path | list[dict[str, Any]], dict[str, Any]]:
    """A rendered playbook or module step as what `run_playbook` takes: the playbook (a file,
    or a one-task play for `module:`) and its options (extra vars, tags, check, vault)."""
    if kind == "module":
        spec = action["module"]
        return one_task_play(title, spec["name"], spec["args"]), {}
    options: dict[str, Any] = {
        "extravars": action["vars"],
        "tags": action["tags"],
        "skip_tags": action["skip_tags"],
        "check": action["check"],
    }
    if action.get("vault_password_file"):
        options["vault_password_file"] = in_workspace(workspace, action["vault_password_file"])
    return in_workspace(workspace, action["playbook"]), options


async def guard_skips(action: Mapping[str, Any], host: HostContext) -> str | None:
    """Why the step is skipped on this host (`creates` exists, `unless` succeeds), or None."""
    if action.get("creates"):
        path = action["creates"]
        done = await (await host.session()).run(f"test -e {shlex.quote(path)}", host.timeout)
        if done.ok:
            return f"{path} exists"
    if action.get("unless"):
        done = await (await host.session()).run(action["unless"], host.timeout)
        if done.ok:
            return f"`{action['unless']}` succeeded"
    return None
