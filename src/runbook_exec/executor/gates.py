"""The executor's gates: `wait:` and `approve:` (as steps, once per batch, or between
batches), each recorded as waiting and then done, approved or rejected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ..events import HostStepResult, RunStatus, StepStatus
from ..steps import StepBase
from .progress import PASSED

if TYPE_CHECKING:
    from . import Executor


class Gates:
    """Holds one executor's batches at its gates, reporting through it."""

    def __init__(self, executor: Executor) -> None:
        self.ex = executor

    async def step(
        self, section: str, index: int, step: StepBase, number: int, live: Sequence[str]
    ) -> str | None:
        """A `wait:` or `approve:` step: once for the batch, as planned; what it needs at run
        time (a `when` or a field that reads a registered result) is decided with the
        batch's first live host's results. Skipped when its `when` is false; a gate that
        cannot be rendered fails the batch's hosts."""
        action = self.ex.action_for(section, index, step, live[0], planned_as="*")
        if isinstance(action, HostStepResult):
            if action.status == StepStatus.SKIPPED:
                self.ex.recorder.note(f"{step.title}: skipped ({action.message})")
                return None
            for host in live:
                self.ex.finish(number, replace(action, host=host))
            return None
        wait = getattr(action, "wait", None)
        approve = getattr(action, "approve", None)
        return await self.gate(
            f"{section}:{number}:{index}",
            float(wait) if wait is not None else None,
            self.ex.mask(approve) if approve is not None else None,
        )

    async def gate(self, key: str, wait: float | None, approve: str | None) -> str | None:
        await self.ex.recorder.flush()
        known = self.ex.progress.gates.get(key)
        if known and known["status"] in PASSED:
            return None
        if known and known["status"] == "rejected":
            return RunStatus.REJECTED
        if wait is not None:
            self.ex.recorder.gate(key, "wait", f"wait {wait:g}s", "waiting")
            await self.sleep(wait)
            if self.ex.stopping:
                return RunStatus.INTERRUPTED
            self.ex.recorder.gate(key, "wait", f"wait {wait:g}s", "done")
            return None
        message = approve or "Continue?"
        self.ex.recorder.gate(key, "approve", message, "waiting")
        answer = await self.ex.approver(message) if self.ex.approver else None
        if answer is None:
            return RunStatus.AWAITING_APPROVAL
        approved, comment = answer
        status = "approved" if approved else "rejected"
        self.ex.recorder.gate(key, "approve", message, status, self.ex.operator, comment)
        self.ex.progress.gates[key] = {"status": status}
        return None if approved else RunStatus.REJECTED

    async def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.ex.stopping and time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, deadline - time.monotonic()))
