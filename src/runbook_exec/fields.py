"""Field types shared by the runbook model and the step kinds: strict models, values that
may be a `{{ template }}`, durations, identifiers and file modes."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
)

from .durations import as_seconds, parse_duration

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _templated(value: str) -> str:
    if "{{" not in value:
        raise ValueError("expected a number or a {{ template }}")
    return value


def _duration(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str) and "{{" in value:
        return value
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        if (info.context or {}).get("rendered"):
            # A step as rendered: its values are seconds already (a duration parameter
            # renders as one, and so does a field validated before)
            return as_seconds(value)
        return parse_duration(value)  # as written: a bare number needs its unit
    return value


Templated = Annotated[str, AfterValidator(_templated)]
Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
Timeout = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
"""A duration that must be more than none (a timeout of 0s would fail every command)."""
Identifier = Annotated[str, Field(pattern=IDENTIFIER)]
FileMode = Annotated[str, Field(pattern=r"^0?[0-7]{3,4}$")]


class Strict(BaseModel):
    """A runbook mapping: unknown keys are errors, values do not change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True)
