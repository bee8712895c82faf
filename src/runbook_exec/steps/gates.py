"""`wait:` and `approve:` as steps: gates that hold the whole batch, on no host."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..durations import format_duration
from ..fields import Duration
from .base import Scope, StepBase


class WaitStep(StepBase):
    kind = "wait"
    scope = Scope.BATCH
    wait: Duration

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        return f"wait {format_duration(float(action['wait']))}"


class ApproveStep(StepBase):
    kind = "approve"
    scope = Scope.BATCH
    approve: str

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        return f"ask for approval: {action['approve']}"
