"""`playbook:` and `module:` steps: Ansible runs them, once for all of a batch's hosts that
need them (see `executor/ansible.py`), not once per host."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from ..fields import Strict
from .base import FieldPath, Scope, StepBase, in_workspace


def _ansible_missing() -> Iterator[str]:
    from ..transports.ansible import ansible_playbook_binary

    if ansible_playbook_binary() is None:
        yield "ansible-playbook is not installed (pip install ansible-core)"


class PlaybookStep(StepBase):
    kind = "playbook"
    scope = Scope.HOSTS
    playbook: str
    vars: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    skip_tags: list[str] = Field(default_factory=list)
    check: bool = False
    vault_password_file: str | None = None

    def files(self) -> Iterator[tuple[FieldPath, str]]:
        yield ("playbook",), self.playbook
        if self.vault_password_file:
            yield ("vault_password_file",), self.vault_password_file

    def requirements(self) -> Iterator[str]:
        return _ansible_missing()

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        extra = {k: action[k] for k in ("vars", "tags", "skip_tags", "check") if action.get(k)}
        shown = json.dumps(extra, sort_keys=True, default=str) if extra else ""
        return f"{action['playbook']} {shown}".rstrip()

    def ansible_call(self, workspace: Path) -> tuple[Path | list[dict[str, Any]], dict[str, Any]]:
        """The playbook file and its options (extra vars, tags, check, vault), as
        `run_playbook` takes them."""
        options: dict[str, Any] = {
            "extravars": self.vars,
            "tags": self.tags,
            "skip_tags": self.skip_tags,
            "check": self.check,
        }
        if self.vault_password_file:
            options["vault_password_file"] = in_workspace(workspace, self.vault_password_file)
        return in_workspace(workspace, self.playbook), options


class ModuleSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.]+$")
    args: dict[str, Any] = Field(default_factory=dict)


class ModuleStep(StepBase):
    kind = "module"
    scope = Scope.HOSTS
    module: ModuleSpec

    def requirements(self) -> Iterator[str]:
        return _ansible_missing()

    def ansible_call(self, workspace: Path) -> tuple[Path | list[dict[str, Any]], dict[str, Any]]:
        """A play of one task, so that a module runs exactly as a playbook does."""
        from ..transports.ansible import one_task_play

        return one_task_play(self.title, self.module.name, self.module.args), {}
