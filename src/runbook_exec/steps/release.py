"""`release:` switches a host's `current` link to a release directory, atomically, and
prunes old releases; `activate: previous` goes back to the one the record says was live."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pydantic import Field, field_validator, model_validator

from ..events import ReleaseSwitch
from ..fields import Strict, Templated
from ..templating import is_template
from ..transports.base import CommandResult
from .base import HostContext, StepBase, ok

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
case "$target" in
    ""|.|..|*/*) echo "unsafe release name '$target': one path component, not . or .." >&2; exit 3;;
esac
[ -d "releases/$target" ] || { echo "release $target not found in $root/releases" >&2; exit 3; }
if [ "$target" = "$old" ]; then echo "unchanged=$target"; exit 0; fi
if [ -n "$artifact" ]; then
    sum=$(sha256sum <"$artifact") || { echo "cannot read the artifact $artifact" >&2; exit 3; }
    echo "artifact=${sum%% *}"
fi
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


class ReleaseSpec(Strict):
    """`activate` a named release (or `previous`), or `undo` a run: put back, on the hosts
    that run switched, what was live before it (`last`: the newest run that deployed a
    release on the run's hosts, not one that only switched back). `force` undoes where
    another run has switched since."""

    root: str
    activate: str | None = None
    undo: str | None = None
    force: bool | Templated = False
    keep: int | Templated = Field(default=5)
    # The artifact on the host the release was made from: its SHA-256 is recorded with the
    # switch, so the record says which bytes went live, not only which name.
    artifact: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ReleaseSpec:
        if (self.activate is None) == (self.undo is None):
            raise ValueError("give either activate (a release) or undo (a run id, or last)")
        return self

    @field_validator("force", mode="before")
    @classmethod
    def _yes_or_no(cls, value: Any) -> Any:
        """true/false, or a template that renders to one (`"{{ force }}"`)."""
        if isinstance(value, str) and not is_template(value):
            word = value.strip().lower()
            if word not in ("true", "false", "yes", "no"):
                raise ValueError(f"force must be true or false, not {value!r}")
            return word in ("true", "yes")
        return value

    @field_validator("activate")
    @classmethod
    def _one_component(cls, value: str | None) -> str | None:
        """A release is a folder of `root/releases`: its name is one path component, so
        that no value can point `current` anywhere else (`../../etc`)."""
        if value is None or is_template(value) or value == "previous":
            return value
        if value in ("", ".", "..") or "/" in value or "\0" in value or "\n" in value:
            raise ValueError(
                f"release name {value!r} is not one path component (no '/', not '.' or '..')"
            )
        return value


class ReleaseStep(StepBase):
    kind = "release"
    release: ReleaseSpec

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        spec = action["release"]
        keep = spec.get("keep", 5)
        if spec.get("activate") is None:
            last = spec["undo"] == "last"
            run = "the last run that deployed a release" if last else f"run {spec['undo']}"
            force = ", even where switched since" if spec.get("force") is True else ""
            return f"put back under {spec['root']} what was live before {run}{force} (keep {keep})"
        made = f", made from {spec['artifact']}" if spec.get("artifact") else ""
        return f"activate {spec['activate']} under {spec['root']} (keep {keep}){made}"

    async def skip_reason(self, host: HostContext) -> str | None:
        """An `undo` has nothing to do on a host the run did not switch, or one that is
        back already: the step is skipped there (and `when: not x.skipped` can say so to
        the steps after it)."""
        spec = self.release
        if spec.undo is not None:
            target, why = host.undo_target(spec.root, spec.undo, bool(spec.force))
            if target is None:
                return why
        return await super().skip_reason(host)

    async def run(self, host: HostContext) -> CommandResult:
        spec = self.release
        note = ""
        if spec.undo is not None:
            undone, why = host.undo_target(spec.root, spec.undo, bool(spec.force))
            if undone is None:
                return ok(why + "\n")
            target, note = undone, why + "\n"
        else:
            target = spec.activate or ""
        if target == "previous":
            recorded = host.previous_release(spec.root)
            target = recorded or PREVIOUS_ON_DISK
            if recorded is None:
                note = "no record of an earlier release on this host; chose from what is on disk\n"
        script = (
            f"root={shlex.quote(spec.root)}; target={shlex.quote(target)}; "
            f"keep={int(spec.keep)}; artifact={shlex.quote(spec.artifact or '')}\n"
            f"{RELEASE_SCRIPT}"
        )
        done = await host.run(script)
        if done.ok and done.stdout.startswith("unchanged="):
            live = done.stdout.strip().removeprefix("unchanged=")
            message = f"{live} is already live under {spec.root}: nothing changed\n"
            return replace(done, stdout=note + message)
        if done.ok:
            switch = release_switch(spec, done.stdout)
            if switch is not None:
                host.release_switched(switch)
        return replace(done, stdout=note + done.stdout) if note else done


def release_switch(spec: ReleaseSpec, stdout: str) -> ReleaseSwitch | None:
    """What the release script's output says it switched (None if it switched nothing)."""
    fields: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        fields.setdefault(key, []).append(value)
    if "to" not in fields:
        return None
    if spec.undo is not None:
        source = "previous"  # a way back, as `rollback RUN_ID` records it
    elif spec.activate != "previous":
        source = "activate"
    else:
        source = "disk" if fields.get("source") == ["disk"] else "previous"
    return ReleaseSwitch(
        root=spec.root,
        from_version=fields.get("from", [""])[0] or None,
        to_version=fields["to"][0],
        pruned=tuple(fields.get("pruned", [])),
        source=source,
        artifact_sha256=fields.get("artifact", [""])[0] or None,
    )
