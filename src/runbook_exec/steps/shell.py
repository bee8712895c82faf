"""`shell:` (a string for the login shell) and `command:` (an argv list, quoted for you)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from ..transports.base import CommandResult
from .base import HostContext, StepBase


class ShellStep(StepBase):
    kind = "shell"
    shell: str

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        return f"$ {action['shell']}"

    async def run(self, host: HostContext) -> CommandResult:
        return await host.run(self.shell)


def _argv_only(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(
            "command takes an argv list, e.g. [systemctl, restart, app]; use shell: for a string"
        )
    return value


class CommandStep(StepBase):
    kind = "command"
    command: Annotated[list[str], BeforeValidator(_argv_only), Field(min_length=1)]

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        return f"$ {shlex.join(action['command'])}"

    async def run(self, host: HostContext) -> CommandResult:
        return await host.run(shlex.join(self.command))
