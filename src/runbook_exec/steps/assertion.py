"""`assert:` fails a host when a condition is false: Jinja2 expressions, as `when:` takes
them, evaluated on the controller with the host's variables and registered results.

    - assert:
        that: ["health.stdout == 'ok'", "app_port | int > 1024"]
        message: "the new release did not come up healthy"

`assert: EXPRESSION` is short for `that: [EXPRESSION]`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from ..fields import Strict
from ..templating import TemplateProblem, evaluate
from ..transports.base import CommandResult
from .base import FieldPath, HostContext, StepBase, ok


def _one_condition(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class AssertSpec(Strict):
    that: Annotated[list[str], BeforeValidator(_one_condition), Field(min_length=1)]
    message: str | None = None


def _shorthand(value: Any) -> Any:
    return {"that": value} if isinstance(value, str | list) else value


class AssertStep(StepBase):
    kind = "assert"
    over_ssh = False
    assert_: Annotated[AssertSpec, BeforeValidator(_shorthand)] = Field(alias="assert")

    def expressions(self) -> Iterator[tuple[FieldPath, str]]:
        for position, condition in enumerate(self.assert_.that):
            yield ("assert", "that", position), condition

    @classmethod
    def describe(cls, action: Mapping[str, Any]) -> str:
        return "assert " + " and ".join(action["assert"]["that"])

    async def run(self, host: HostContext) -> CommandResult:
        started = time.monotonic()
        for condition in self.assert_.that:
            try:
                holds = evaluate(condition, host.template_names)
            except TemplateProblem as exc:
                return _failed(f"cannot evaluate {condition!r}: {exc}", started)
            if not holds:
                if self.assert_.message:
                    return _failed(f"{self.assert_.message} (false: {condition})", started)
                return _failed(f"assertion failed: {condition}", started)
        count = len(self.assert_.that)
        return ok(f"{count} condition{'s' if count != 1 else ''} held", started)


def _failed(message: str, started: float) -> CommandResult:
    return CommandResult(1, "", message, time.monotonic() - started)
