"""The runbook as typed, validated objects: parameters, strategy, gates and the steps (each
kind is its own class, in `runbook_exec.steps`).

Field values that may hold a Jinja2 template (`"{{ app_port }}"`) are kept as text here and
validated again once rendered for a host (see `plan`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from .fields import Duration, Identifier, Strict, Templated
from .steps import Step, StepBase
from .steps.analysis import AnalysisSpec

__all__ = ["Gate", "Param", "Runbook", "Step", "StepBase", "Strategy"]


# --- parameters -------------------------------------------------------------------------------

ParamType = Literal["str", "int", "float", "bool", "path", "list", "duration"]


class Param(Strict):
    """A declared runbook parameter: its type and the rules a value must meet."""

    type: ParamType = "str"
    description: str = ""
    required: bool = False
    default: Any = None
    pattern: str | None = None
    choices: list[Any] | None = None
    secret: bool = False
    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _check_rules(self) -> Param:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        if self.pattern is not None and self.type not in ("str", "path"):
            raise ValueError(f"pattern applies to str and path parameters, not {self.type}")
        if self.required and self.default is not None:
            raise ValueError("a required parameter cannot have a default")
        if self.secret and self.default is not None:
            raise ValueError("a secret parameter cannot have a default in the runbook")
        return self


# --- strategy ---------------------------------------------------------------------------------


def _batch_size(value: Any) -> Any:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*%\s*", value)
        if not match or not 0 < int(match.group(1)) <= 100:
            raise ValueError(f"batch size {value!r} must be a count or a percentage 1%..100%")
        return f"{int(match.group(1))}%"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"batch size {value!r} must be a count of at least 1 or a percentage")
    return value


BatchSize = Annotated[int | str, BeforeValidator(_batch_size)]


class Gate(Strict):
    """What happens between two batches: a pause, a human approval, or an analysis of the
    batch that just ended (`batch_hosts`) by its metrics."""

    wait: Duration | Templated | None = None
    approve: str | None = None
    analysis: AnalysisSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Gate:
        if sum(x is not None for x in (self.wait, self.approve, self.analysis)) != 1:
            raise ValueError(
                "a gate is one of `wait: DURATION`, `approve: MESSAGE` or `analysis: {...}`"
            )
        return self


class Strategy(Strict):
    """How hosts are split into batches and how many failures a batch tolerates."""

    batches: list[BatchSize] = Field(default_factory=lambda: ["100%"], min_length=1)  # type: ignore[arg-type]
    max_fail_percentage: float = Field(default=0, ge=0, le=100)
    between_batches: list[Gate] = Field(default_factory=list)


# --- the runbook ------------------------------------------------------------------------------


GIVEN_NAMES = {
    "run": "the run's id and operator (run.id, run.operator) there",
    "inventory_hostname": "the host's inventory name there",
    "inventory_hostname_short": "the host's short name there",
    "group_names": "the host's groups there",
}


class Runbook(Strict):
    """A whole runbook: what to run, where, in what batches, and what to do on failure."""

    name: str = Field(min_length=1)
    description: str = ""
    params: dict[Identifier, Param] = Field(default_factory=dict)
    targets: str = Field(min_length=1)
    lock: str | None = Field(default=None, min_length=1)
    strategy: Strategy = Field(default_factory=Strategy)
    steps: list[Step] = Field(min_length=1)
    rollback: list[Step] = Field(default_factory=list)
    # Who may approve its gates from the web view or the API (signed-in names). Unset:
    # anyone with the operator role but the person who started the run (four eyes).
    approvers: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None
    # What people confirm at handover (`handover tick`), shown in the report's checklist.
    handover: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list
    )
    # After `rollback`, so that its validator can see whether there are rollback steps.
    on_failure: Literal["stop", "continue", "rollback"] = "stop"

    @field_validator("params")
    @classmethod
    def _not_a_given_name(cls, value: dict[str, Param]) -> dict[str, Param]:
        """Names every template is given already (`run.id`, `inventory_hostname`…) cannot
        be parameters: the parameter would be hidden, silently."""
        for name in value:
            if name in GIVEN_NAMES:
                raise ValueError(
                    f"parameter name '{name}' is taken: templates see {GIVEN_NAMES[name]}"
                )
        return value

    @field_validator("handover")
    @classmethod
    def _distinct_items(cls, value: list[str]) -> list[str]:
        seen = set()
        for item in value:
            if item.strip() != item or not item.strip():
                raise ValueError(f"handover item {item!r}: no leading or trailing spaces")
            if item in seen:
                raise ValueError(f"handover item {item!r} is listed twice")
            seen.add(item)
        return value

    @field_validator("on_failure")
    @classmethod
    def _rollback_needs_steps(cls, value: str, info: ValidationInfo) -> str:
        if value == "rollback" and "rollback" in info.data and not info.data["rollback"]:
            raise ValueError("is 'rollback' but the runbook has no `rollback` steps")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Runbook:
        for step in self.steps:
            if step.register_as and step.register_as in self.params:
                raise ValueError(
                    f"register name '{step.register_as}' hides the parameter of that name"
                )
        return self

    @property
    def secret_params(self) -> frozenset[str]:
        return frozenset(name for name, param in self.params.items() if param.secret)
