"""`local:` runs a command on the controller, once for each host it is planned for."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field

from ..transports.base import CommandResult
from .base import HostContext, StepBase


class LocalStep(StepBase):
    kind = "local"
    over_ssh = False
    local: str | Annotated[list[str], Field(min_length=1)]

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        local = action["local"]
        return f"(controller) $ {local if isinstance(local, str) else shlex.join(local)}"

    async def run(self, host: HostContext) -> CommandResult:
        from ..transports.local import run_local

        return await run_local(
            self.local, host.timeout, host.output_limit, str(host.workspace), host.secrets
        )
