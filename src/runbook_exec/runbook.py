"""Reading a runbook file: YAML to a validated `Runbook`; errors name file, line and field."""

from __future__ import annotations

import difflib
import functools
import hashlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import Problem, RunbookError
from .model import Runbook
from .steps import STEP_CLASSES, STEP_KINDS, TAG_PREFIX, StepBase, step_kinds_in
from .yamlsource import Loc, SourceMap, load_yaml, parse_yaml


@dataclass(frozen=True, eq=False)
class RunbookFile:
    """A runbook as loaded: the model, its text and digest, and where its parts are in the file."""

    path: Path
    display_path: str
    text: str
    sha256: str
    runbook: Runbook
    source: SourceMap

    @functools.cached_property
    def workspace(self) -> Path:
        """Where relative paths in the runbook resolve: the folder that holds `runbooks/`
        when the runbook lives in one, otherwise the runbook's own folder."""
        folder = self.path.resolve().parent
        return folder.parent if folder.name == "runbooks" else folder

    def line_of(self, loc: Loc) -> int | None:
        return self.source.line_of(loc)

    def step_field(self, section: str, index: int, field: str | None = None) -> str:
        steps = self.runbook.steps if section == "steps" else self.runbook.rollback
        name = steps[index].name
        label = f"{section}[{index}] ({name})" if name else f"{section}[{index}]"
        return f"{label}.{field}" if field else label


def load_runbook(path: Path, display_path: str | None = None) -> RunbookFile:
    """Load and validate a runbook; raise `RunbookError` listing every problem found."""
    shown = display_path or str(path)
    data, source, text = load_yaml(path, display_path=shown)
    return _validated(path, shown, text, data, source)


def runbook_from_text(text: str, display_path: str) -> RunbookFile:
    """A runbook from its recorded text (to resume a run exactly as it started)."""
    data, source = parse_yaml(text, display_path)
    return _validated(Path(display_path), display_path, text, data, source)


def _validated(path: Path, shown: str, text: str, data: Any, source: SourceMap) -> RunbookFile:
    if not isinstance(data, dict):
        raise RunbookError(Problem("a runbook is a mapping (name:, targets:, steps: …)", shown, 1))
    try:
        runbook = Runbook.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc, source, data)
        known = {(p.line, p.field) for p in problems}
        more = [p for p in _template_problems(data, source) if (p.line, p.field) not in known]
        raise RunbookError(problems + more) from None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return RunbookFile(path, shown, text, digest, runbook, source)


def _template_problems(data: Mapping[str, Any], source: SourceMap) -> list[Problem]:
    """Template syntax in the steps as written, for a runbook whose fields are wrong too:
    `check` reports both in one pass instead of the templates only on the next try."""
    from .templating import TemplateProblem, names_used

    problems = []

    def walk(value: Any, loc: Loc) -> None:
        if isinstance(value, str):
            expression = loc[-1] == "when"
            text = value.strip().removeprefix("{{").removesuffix("}}") if expression else value
            try:
                names_used(text, expression=expression)
            except TemplateProblem as exc:
                problems.append(Problem(str(exc), source.path, source.line_of(loc), _dotted(loc)))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if key != "assert":  # expressions, checked once the model holds
                    walk(item, (*loc, str(key)))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, (*loc, index))

    for section in ("steps", "rollback"):
        steps = data.get(section)
        if isinstance(steps, list):
            walk(steps, (section,))
    return problems


def _dotted(loc: Loc) -> str:
    """("steps", 2, "shell") as steps[2].shell."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _problems(exc: ValidationError, source: SourceMap, data: Any) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[Loc, str]] = set()
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if not str(part).startswith(TAG_PREFIX))
        message = _message(error, loc, data)
        if (loc, message) in seen:
            continue
        seen.add((loc, message))
        line_loc = loc
        if error["type"] == "step_kind" and message.startswith("unknown key '"):
            line_loc = (*loc, message.split("'")[1])
        problems.append(
            Problem(message, source.path, source.line_of(line_loc), _field_name(loc, data))
        )
    return problems


def _message(error: Any, loc: Loc, data: Any) -> str:
    kind = error["type"]
    if kind == "step_kind":
        return _step_kind_message(error["input"])
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], data)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown key '{loc[-1]}'{hint}"
    if kind == "missing":
        return f"required field '{loc[-1]}' is missing"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _step_kind_message(value: Any) -> str:
    if not isinstance(value, dict):
        return f"a step is a mapping with one kind ({', '.join(STEP_KINDS)})"
    kinds = step_kinds_in(value)
    if kinds:
        return f"a step does one thing, but this one has {len(kinds)} kinds: {', '.join(kinds)}"
    common = set(StepBase.model_fields)
    unknown = [str(key) for key in value if key not in common]
    for key in unknown:
        close = difflib.get_close_matches(key, STEP_KINDS, n=1)
        if close:
            return f"unknown key '{key}'; did you mean '{close[0]}'? (a step needs one kind)"
    return f"a step needs one kind: {', '.join(STEP_KINDS)}"


def _field_name(loc: Loc, data: Any) -> str:
    """`steps[2] (Configure).vars` — indices in brackets, a step's name beside its index."""
    parts: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str) and len(parts) == 2:
                parts.append(f" ({node['name']})")
        else:
            parts.append(f".{part}" if parts else str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return "".join(parts) or "runbook"


def _allowed_keys(loc: Loc, data: Any) -> list[str]:
    """The keys the model accepts at `loc`, for "did you mean" hints."""
    annotation: Any = Runbook
    node = data
    for part in loc:
        annotation = _child(annotation, part, node)
        if annotation is None:
            return []
        found = isinstance(node, dict | list) and _has(node, part)
        node = node[part] if found else None
    model = _as_model(annotation, node)
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _has(node: dict[Any, Any] | list[Any], part: str | int) -> bool:
    return part in node if isinstance(node, dict) else isinstance(part, int) and part < len(node)


def _child(annotation: Any, part: str | int, node: Any) -> Any:
    """The annotation of `part` inside a value of type `annotation`."""
    model = _as_model(annotation, node)
    if model is not None and isinstance(part, str):
        for name, info in model.model_fields.items():
            if part in (name, info.alias):
                return info.annotation
        return None
    for candidate in _flatten(annotation):
        origin = typing.get_origin(candidate)
        args = typing.get_args(candidate)
        if origin is list and isinstance(part, int):
            return args[0]
        if origin is dict and isinstance(part, str):
            return args[1]
    return None


def _as_model(annotation: Any, node: Any) -> type[BaseModel] | None:
    kinds = step_kinds_in(node)
    models = [c for c in _flatten(annotation) if isinstance(c, type) and issubclass(c, BaseModel)]
    if len(kinds) == 1 and any(issubclass(m, StepBase) for m in models):
        return STEP_CLASSES[kinds[0]]
    return models[0] if models else None


def _flatten(annotation: Any) -> list[Any]:
    """The alternatives of a union, seen through `Annotated`."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [alt for arg in typing.get_args(annotation) for alt in _flatten(arg)]
    return [annotation]
