"""The step kinds. Each is one class in its own module (what it accepts, its scope, the
files and expressions it holds, how it describes and runs itself); this registry lists
them, and the runbook's `Step` type is built from it. Adding a kind is a new module and
one line in `KINDS`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BaseModel, Discriminator, Tag

from .analysis import AnalysisStep
from .ansible import ModuleStep, PlaybookStep
from .assertion import AssertStep
from .base import HostContext, Scope, StepBase, in_workspace
from .files import ScriptStep, TemplateStep, UploadStep
from .gates import ApproveStep, WaitStep
from .http import HttpStep
from .local import LocalStep
from .release import ReleaseStep
from .shell import CommandStep, ShellStep
from .wait_for import WaitForStep

KINDS: tuple[type[StepBase], ...] = (
    ShellStep,
    CommandStep,
    ScriptStep,
    UploadStep,
    TemplateStep,
    PlaybookStep,
    ModuleStep,
    HttpStep,
    WaitForStep,
    LocalStep,
    ReleaseStep,
    ApproveStep,
    WaitStep,
    AssertStep,
    AnalysisStep,
)


def _registered(kinds: tuple[type[StepBase], ...]) -> dict[str, type[StepBase]]:
    """The kinds by name, refusing one that could not run: a host-scoped kind must say how
    it runs, an Ansible one how it is called; a kind's key must be one of its fields."""
    classes: dict[str, type[StepBase]] = {}
    for cls in kinds:
        if cls.kind in classes:
            raise TypeError(f"two step kinds are called {cls.kind!r}")
        keys = {info.alias or name for name, info in cls.model_fields.items()}
        if cls.kind not in keys:
            raise TypeError(f"step kind {cls.__name__} has no field {cls.kind!r}")
        if cls.scope is Scope.HOST and cls.run is StepBase.run:
            raise TypeError(f"step kind {cls.__name__} runs on hosts but defines no run()")
        if cls.scope is Scope.HOSTS and cls.ansible_call is StepBase.ansible_call:
            raise TypeError(f"step kind {cls.__name__} defines no ansible_call()")
        classes[cls.kind] = cls
    return classes


STEP_CLASSES = _registered(KINDS)
STEP_KINDS = tuple(STEP_CLASSES)
TAG_PREFIX = "kind="


def step_kinds_in(value: Any) -> list[str]:
    """The step-kind keys present in a raw step mapping."""
    if isinstance(value, BaseModel):
        return [type(value).kind] if isinstance(value, StepBase) else []
    if not isinstance(value, dict):
        return []
    return [key for key in value if key in STEP_CLASSES]


def _step_tag(value: Any) -> str | None:
    kinds = step_kinds_in(value)
    return TAG_PREFIX + kinds[0] if len(kinds) == 1 else None


if TYPE_CHECKING:
    Step = StepBase
else:
    Step = Annotated[
        Union[tuple(Annotated[cls, Tag(TAG_PREFIX + cls.kind)] for cls in KINDS)],  # noqa: UP007
        Discriminator(
            _step_tag,
            custom_error_type="step_kind",
            custom_error_message="a step needs exactly one kind",
        ),
    ]
"""Any step, as a runbook holds it: the one kind its mapping names, validated as that kind."""

__all__ = [
    "KINDS",
    "STEP_CLASSES",
    "STEP_KINDS",
    "TAG_PREFIX",
    "AnalysisStep",
    "ApproveStep",
    "AssertStep",
    "CommandStep",
    "HostContext",
    "HttpStep",
    "LocalStep",
    "ModuleStep",
    "PlaybookStep",
    "ReleaseStep",
    "Scope",
    "ScriptStep",
    "ShellStep",
    "Step",
    "StepBase",
    "TemplateStep",
    "UploadStep",
    "WaitForStep",
    "WaitStep",
    "in_workspace",
    "step_kinds_in",
]
