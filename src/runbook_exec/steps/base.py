"""What every step kind is: the fields all steps accept, and what a kind says about itself —
its scope, the local files it reads, the expressions it evaluates, what it needs on the
controller, how it describes a rendered action, and how it runs on one host.

A kind is one module under `steps/` and one entry in the registry (`steps/__init__.py`).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ..events import ReleaseSwitch
from ..fields import Duration, Identifier, Strict, Timeout
from ..masking import Secrets
from ..transports.base import CommandResult, Session
from ..transports.guard import Mark


class Scope(StrEnum):
    """Where a kind runs."""

    HOST = "host"  # on each host by itself (or on one, with `run_once`)
    HOSTS = "hosts"  # on all of a batch's hosts in one call (Ansible)
    BATCH = "batch"  # once per batch, on no host (a gate: wait, approve)


@dataclass
class HostContext:
    """What a step needs to act on one host."""

    session: Callable[[], Awaitable[Session]]
    timeout: float
    output_limit: int
    secrets: Secrets
    workspace: Path
    template_names: Mapping[str, Any]
    previous_release: Callable[[str], str | None] = lambda root: None
    release_switched: Callable[[ReleaseSwitch], None] = lambda switch: None
    # (root, run id or "last", force) -> (release to put back, what) or (None, why not here)
    undo_target: Callable[[str, str, bool], tuple[str | None, str]] = lambda root, run, force: (
        None,
        "no record of releases to undo",
    )
    mark: Mark | None = None  # the run, step and attempt its commands belong to

    async def run(self, command: str, timeout: float | None = None) -> CommandResult:
        """Run `command` on the host, within `timeout` (default: the step's)."""
        session = await self.session()
        return await session.run(command, self.timeout if timeout is None else timeout, self.mark)


FieldPath = tuple[str | int, ...]
"""Where a field lies inside a step, e.g. ("upload", "src")."""


class StepBase(Strict):
    """Fields every step kind accepts, and the behaviour each kind gives itself."""

    kind: ClassVar[str]
    scope: ClassVar[Scope] = Scope.HOST
    over_ssh: ClassVar[bool] = True  # a HOST kind that runs its commands over our SSH

    name: str | None = None
    when: str | None = None
    timeout: Timeout | None = None
    retries: int = Field(default=0, ge=0)
    delay: Duration | None = None
    run_once: bool = False
    ignore_errors: bool = False
    register_as: Identifier | None = Field(default=None, alias="register")
    creates: str | None = None
    unless: str | None = None

    @property
    def title(self) -> str:
        return self.name or self.kind

    def action(self) -> dict[str, Any]:
        """The kind-specific fields with their defaults, and the `creates`/`unless` guards
        when set: what a host gets (once rendered), as the plan shows it."""
        common = {i.alias or n for n, i in StepBase.model_fields.items()} - {"creates", "unless"}
        return {
            key: value
            for key, value in self.model_dump(mode="json", by_alias=True).items()
            if key not in common and not (key in ("creates", "unless") and value is None)
        }

    def payload(self) -> dict[str, Any]:
        """The kind-specific fields, as they appear in the runbook."""
        common = {i.alias or n for n, i in StepBase.model_fields.items()}
        return {
            key: value
            for key, value in self.model_dump(
                mode="python", exclude_unset=True, by_alias=True
            ).items()
            if key not in common
        }

    @field_validator("when", mode="before")
    @classmethod
    def _bare_expression(cls, value: Any) -> Any:
        """`when: "{{ x }}"`, common in Ansible, is read as `x`, as Ansible reads it (and
        `check` warns, as Ansible does)."""
        return braced_expression(value) or value

    # --- what a kind says about itself (override what applies) --------------------------------

    def files(self) -> Iterator[tuple[FieldPath, str]]:
        """The controller-side files the step reads: (where in the step, path as written)."""
        return iter(())

    def expressions(self) -> Iterator[tuple[FieldPath, str]]:
        """Jinja2 expressions (not templates) the step evaluates, as `when:` is."""
        return iter(())

    def requirements(self) -> Iterator[str]:
        """What the controller lacks to run this kind, as messages for `check`."""
        return iter(())

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        """One line that says what a rendered action (as the plan records it) does."""
        import json

        shown = {k: v for k, v in action.items() if k not in ("creates", "unless")}
        return json.dumps(shown, sort_keys=True, default=str) if shown else ""

    def ansible_call(self, workspace: Path) -> tuple[Path | list[dict[str, Any]], dict[str, Any]]:
        """What Ansible runs for a kind of scope HOSTS: a playbook (a file, or a play as
        data) and the options `run_playbook` takes with it."""
        raise NotImplementedError(f"{self.kind} steps are not run by Ansible")

    @property
    def runs_commands(self) -> bool:
        """Whether the step runs commands over our own SSH (not Ansible's): its kind's, or
        its `creates`/`unless` guard."""
        return (self.scope is Scope.HOST and self.over_ssh) or bool(self.creates or self.unless)

    async def run(self, host: HostContext) -> CommandResult:
        """Carry out this rendered step on one host and say what happened."""
        raise NotImplementedError(f"{self.kind} steps do not run on a host by themselves")

    async def skip_reason(self, host: HostContext) -> str | None:
        """Why the step is skipped on this host (`creates` exists, `unless` succeeds)."""
        if self.creates:
            done = await host.run(f"test -e {shlex.quote(self.creates)}")
            if done.ok:
                return f"{self.creates} exists"
        if self.unless:
            done = await host.run(self.unless)
            if done.ok:
                return f"`{self.unless}` succeeded"
        return None


def in_workspace(workspace: Path, raw: str) -> Path:
    """A path from a runbook: `~` expanded; relative ones resolve against the workspace."""
    path = Path(raw).expanduser()
    return path if path.is_absolute() else workspace / path


def ok(stdout: str = "", started: float | None = None) -> CommandResult:
    duration = time.monotonic() - started if started is not None else 0.0
    return CommandResult(rc=0, stdout=stdout, stderr="", duration=duration)


def braced_expression(value: Any) -> str | None:
    """The expression inside a value that is one whole `{{ … }}` and nothing else."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    inner = text[2:-2]
    if text.startswith("{{") and text.endswith("}}") and "{{" not in inner and "}}" not in inner:
        return inner.strip() or None
    return None
