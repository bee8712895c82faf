"""Steps that carry a file from the controller: `upload:` as it is, `template:` rendered
for the host, `script:` copied, run and removed."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import shlex
import time
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from ..fields import FileMode, Strict
from ..scratch import private_folder
from ..templating import render
from ..transports.base import CommandResult
from .base import FieldPath, HostContext, StepBase, in_workspace, ok


class TransferSpec(Strict):
    src: str
    dest: str
    mode: FileMode | None = None


def _transfer(spec: Mapping[str, Any]) -> str:
    mode = f" (mode {spec['mode']})" if spec.get("mode") else ""
    return f"{spec['src']} → {spec['dest']}{mode}"


class UploadSpec(TransferSpec):
    verify: bool = True
    """Check the file's SHA-256 on the host (`sha256sum`) against the source's."""


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """A local file's SHA-256, computed once per version of it (size, mtime) per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


class UploadStep(StepBase):
    kind = "upload"
    upload: UploadSpec

    def files(self) -> Iterator[tuple[FieldPath, str]]:
        yield ("upload", "src"), self.upload.src

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        return _transfer(action["upload"])

    async def run(self, host: HostContext) -> CommandResult:
        started = time.monotonic()
        source = in_workspace(host.workspace, self.upload.src)
        session = await host.session()
        await asyncio.wait_for(
            session.upload(source, self.upload.dest, self.upload.mode), host.timeout
        )
        info = source.stat()
        done = f"uploaded {info.st_size} bytes to {self.upload.dest}"
        if not self.upload.verify:
            return ok(done, started)
        expected = await asyncio.to_thread(_sha256, str(source), info.st_size, info.st_mtime_ns)
        found = await host.run(f"sha256sum -- {shlex.quote(self.upload.dest)}")
        digest = found.stdout.split()[0] if found.ok and found.stdout.split() else ""
        if digest != expected:
            why = (
                f"its SHA-256 there is {digest}, not the source's {expected}"
                if digest
                else f"sha256sum failed there (exit {found.rc}): {found.stderr.strip()[:200]}; "
                "set verify: false to upload unchecked"
            )
            return CommandResult(1, "", f"{done}, but {why}", time.monotonic() - started)
        return ok(f"{done}; sha256 {expected}, checked on the host", started)


class TemplateStep(StepBase):
    kind = "template"
    template: TransferSpec

    def files(self) -> Iterator[tuple[FieldPath, str]]:
        yield ("template", "src"), self.template.src

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        return _transfer(action["template"])

    async def run(self, host: HostContext) -> CommandResult:
        started = time.monotonic()
        spec = self.template
        source = in_workspace(host.workspace, spec.src)
        text = render(source.read_text(encoding="utf-8"), host.template_names)
        session = await host.session()
        # The rendering may hold a secret: it lies in a private folder (0600 inside 0700)
        # only while it is uploaded; a kill -9 meanwhile leaves it to the next command.
        with private_folder("template") as folder:
            rendered = folder / "rendered"
            fd = os.open(rendered, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "w", encoding="utf-8") as out:
                out.write(text)
            await asyncio.wait_for(session.upload(rendered, spec.dest, spec.mode), host.timeout)
        return ok(f"rendered {spec.src} to {spec.dest}", started)


class ScriptSpec(Strict):
    src: str
    args: list[str] = Field(default_factory=list)


def _script_shorthand(value: Any) -> Any:
    return {"src": value} if isinstance(value, str) else value


class ScriptStep(StepBase):
    kind = "script"
    script: Annotated[ScriptSpec, BeforeValidator(_script_shorthand)]

    def files(self) -> Iterator[tuple[FieldPath, str]]:
        yield ("script", "src"), self.script.src

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        spec = action["script"]
        return shlex.join([spec["src"], *spec.get("args", [])])

    async def run(self, host: HostContext) -> CommandResult:
        made = await host.run("mktemp /tmp/rbx-script.XXXXXX")
        if not made.ok:
            return made
        remote = made.stdout.strip()
        source = in_workspace(host.workspace, self.script.src)
        session = await host.session()
        await asyncio.wait_for(session.upload(source, remote, "0700"), host.timeout)
        argv = shlex.join([remote, *self.script.args])
        return await host.run(f"{argv}; rc=$?; rm -f {shlex.quote(remote)}; exit $rc")
