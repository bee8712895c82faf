"""The runbook as typed, validated objects: parameters, strategy, gates and every step kind.

Field values that may hold a Jinja2 template (`"{{ app_port }}"`) are kept as text here and
validated again once rendered for a host (see `plan`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .durations import parse_duration

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _templated(value: str) -> str:
    if "{{" not in value:
        raise ValueError("expected a number or a {{ template }}")
    return value


def _duration(value: Any) -> Any:
    if isinstance(value, str) and "{{" not in value:
        return parse_duration(value)
    return value


Templated = Annotated[str, AfterValidator(_templated)]
Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
Identifier = Annotated[str, Field(pattern=IDENTIFIER)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True)


# --- parameters -------------------------------------------------------------------------------

ParamType = Literal["str", "int", "float", "bool", "path", "list", "duration"]


class Param(_Strict):
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


class Gate(_Strict):
    """What happens between two batches: a pause, or a human approval."""

    wait: Duration | Templated | None = None
    approve: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Gate:
        if (self.wait is None) == (self.approve is None):
            raise ValueError("a gate is either `wait: DURATION` or `approve: MESSAGE`")
        return self


class Strategy(_Strict):
    """How hosts are split into batches and how many failures a batch tolerates."""

    batches: list[BatchSize] = Field(default_factory=lambda: ["100%"], min_length=1)  # type: ignore[arg-type]
    max_fail_percentage: float = Field(default=0, ge=0, le=100)
    between_batches: list[Gate] = Field(default_factory=list)


# --- steps ------------------------------------------------------------------------------------


class StepBase(_Strict):
    """Fields every step kind accepts."""

    kind: ClassVar[str]
    remote: ClassVar[bool] = True

    name: str | None = None
    when: str | None = None
    timeout: Duration | None = None
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
        when set: what the executor acts on (once rendered)."""
        common = {i.alias or n for n, i in StepBase.model_fields.items()} - {"creates", "unless"}
        return {
            key: value
            for key, value in self.model_dump(mode="json", by_alias=True).items()
            if key not in common and not (key in ("creates", "unless") and value is None)
        }

    def payload(self) -> dict[str, Any]:
        """The kind-specific fields, as they appear in the runbook."""
        common = set(StepBase.model_fields)
        return {
            key: value
            for key, value in self.model_dump(mode="python", exclude_unset=True).items()
            if key not in common
        }


class ShellStep(StepBase):
    kind = "shell"
    shell: str


def _argv_only(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(
            "command takes an argv list, e.g. [systemctl, restart, app]; use shell: for a string"
        )
    return value


class CommandStep(StepBase):
    kind = "command"
    command: Annotated[list[str], BeforeValidator(_argv_only), Field(min_length=1)]


class ScriptSpec(_Strict):
    src: str
    args: list[str] = Field(default_factory=list)


def _script_shorthand(value: Any) -> Any:
    return {"src": value} if isinstance(value, str) else value


class ScriptStep(StepBase):
    kind = "script"
    script: Annotated[ScriptSpec, BeforeValidator(_script_shorthand)]


FileMode = Annotated[str, Field(pattern=r"^0?[0-7]{3,4}$")]


class TransferSpec(_Strict):
    src: str
    dest: str
    mode: FileMode | None = None


class UploadStep(StepBase):
    kind = "upload"
    upload: TransferSpec


class TemplateStep(StepBase):
    kind = "template"
    template: TransferSpec


class PlaybookStep(StepBase):
    kind = "playbook"
    playbook: str
    vars: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    skip_tags: list[str] = Field(default_factory=list)
    check: bool = False
    vault_password_file: str | None = None


class ModuleSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.]+$")
    args: dict[str, Any] = Field(default_factory=dict)


class ModuleStep(StepBase):
    kind = "module"
    module: ModuleSpec


class HttpSpec(_Strict):
    url: str
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    status: int | list[int] | Templated = 200
    contains: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    validate_certs: bool = True


class HttpStep(StepBase):
    kind = "http"
    remote = False
    http: HttpSpec


class WaitForSpec(_Strict):
    port: int | Templated | None = None
    host: str = "127.0.0.1"
    command: str | None = None
    timeout: Duration = 60.0
    interval: Duration = 1.0

    @model_validator(mode="after")
    def _exactly_one(self) -> WaitForSpec:
        if (self.port is None) == (self.command is None):
            raise ValueError("wait_for takes either `port` or `command`")
        return self


class WaitForStep(StepBase):
    kind = "wait_for"
    wait_for: WaitForSpec


class LocalStep(StepBase):
    kind = "local"
    remote = False
    local: str | Annotated[list[str], Field(min_length=1)]


class ReleaseSpec(_Strict):
    root: str
    activate: str
    keep: int | Templated = Field(default=5)


class ReleaseStep(StepBase):
    kind = "release"
    release: ReleaseSpec


class ApproveStep(StepBase):
    kind = "approve"
    remote = False
    approve: str


class WaitStep(StepBase):
    kind = "wait"
    remote = False
    wait: Duration


STEP_CLASSES: dict[str, type[StepBase]] = {
    cls.kind: cls
    for cls in (
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
    )
}
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


Step = Annotated[
    Annotated[ShellStep, Tag(TAG_PREFIX + "shell")]
    | Annotated[CommandStep, Tag(TAG_PREFIX + "command")]
    | Annotated[ScriptStep, Tag(TAG_PREFIX + "script")]
    | Annotated[UploadStep, Tag(TAG_PREFIX + "upload")]
    | Annotated[TemplateStep, Tag(TAG_PREFIX + "template")]
    | Annotated[PlaybookStep, Tag(TAG_PREFIX + "playbook")]
    | Annotated[ModuleStep, Tag(TAG_PREFIX + "module")]
    | Annotated[HttpStep, Tag(TAG_PREFIX + "http")]
    | Annotated[WaitForStep, Tag(TAG_PREFIX + "wait_for")]
    | Annotated[LocalStep, Tag(TAG_PREFIX + "local")]
    | Annotated[ReleaseStep, Tag(TAG_PREFIX + "release")]
    | Annotated[ApproveStep, Tag(TAG_PREFIX + "approve")]
    | Annotated[WaitStep, Tag(TAG_PREFIX + "wait")],
    Discriminator(
        _step_tag,
        custom_error_type="step_kind",
        custom_error_message="a step needs exactly one kind",
    ),
]


# --- the runbook ------------------------------------------------------------------------------


class Runbook(_Strict):
    """A whole runbook: what to run, where, in what batches, and what to do on failure."""

    name: str = Field(min_length=1)
    description: str = ""
    params: dict[Identifier, Param] = Field(default_factory=dict)
    targets: str = Field(min_length=1)
    lock: str | None = Field(default=None, min_length=1)
    strategy: Strategy = Field(default_factory=Strategy)
    steps: list[Step] = Field(min_length=1)
    rollback: list[Step] = Field(default_factory=list)
    # After `rollback`, so that its validator can see whether there are rollback steps.
    on_failure: Literal["stop", "continue", "rollback"] = "stop"

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
