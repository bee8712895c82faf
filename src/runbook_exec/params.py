"""Parameter values: gathered from `-e`, parameter files and the environment, then checked
against the runbook's declarations. Values are data: nothing here ever evaluates a template."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .durations import parse_duration
from .errors import ParameterError, Problem, RunbookError
from .masking import MASK, SHORTEST_FORM, Secrets
from .model import Param
from .runbook import RunbookFile
from .yamlsource import load_yaml

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class GivenValue:
    """A value as the operator gave it, and where it came from (for error messages)."""

    value: Any
    origin: str
    line: int | None = None


@dataclass(frozen=True)
class ResolvedParams:
    """Every declared parameter's final value, and which of them are secret."""

    values: Mapping[str, Any]
    secret_names: frozenset[str] = field(default_factory=frozenset)

    def masked(self) -> dict[str, Any]:
        """The values with secrets replaced, safe to print, store and export."""
        return {
            name: (MASK if name in self.secret_names and value is not None else value)
            for name, value in self.values.items()
        }

    @property
    def secrets(self) -> Secrets:
        """The secret values, for masking them inside command output and results."""
        return Secrets(
            str(value)
            for name, value in self.values.items()
            if name in self.secret_names and value not in (None, "")
        )


def parse_extra_vars(items: Sequence[str], cwd: Path | None = None) -> dict[str, GivenValue]:
    """`-e key=value` and `-e @file.yml`, later ones winning, as ansible-playbook does."""
    given: dict[str, GivenValue] = {}
    problems: list[Problem] = []
    for item in items:
        if item.startswith("@"):
            file = Path(item[1:])
            if cwd is not None and not file.is_absolute():
                file = cwd / file
            try:
                data, source, _ = load_yaml(file, display_path=item[1:])
            except RunbookError as exc:
                problems.extend(exc.problems)
                continue
            if not isinstance(data, dict):
                problems.append(
                    Problem("a parameter file is a mapping of name: value", item[1:], 1)
                )
                continue
            for key, value in data.items():
                given[str(key)] = GivenValue(value, item[1:], source.line_of((str(key),)))
        elif "=" in item and item.split("=", 1)[0].strip():
            key, value = item.split("=", 1)
            given[key.strip()] = GivenValue(value, "-e")
        else:
            problems.append(Problem(f"-e {item!r}: expected NAME=VALUE or @FILE.yml"))
    if problems:
        raise ParameterError(problems)
    return given


def resolve_params(
    runbook_file: RunbookFile,
    given: Mapping[str, GivenValue],
    environ: Mapping[str, str],
    cwd: Path | None = None,
) -> ResolvedParams:
    """Apply declarations to the given values: every problem is reported, not only the first."""
    declared = runbook_file.runbook.params
    problems: list[Problem] = []
    for name, value in given.items():
        if name not in declared:
            known = ", ".join(declared) or "none"
            problems.append(
                Problem(
                    f"'{name}' is not a parameter of this runbook (declared: {known})",
                    value.origin if value.origin != "-e" else None,
                    value.line,
                    f"-e {name}" if value.origin == "-e" else name,
                )
            )
    values: dict[str, Any] = {}
    for name, param in declared.items():
        loc = ("params", name)
        where = (runbook_file.display_path, runbook_file.line_of(loc), f"params.{name}")
        if name in given:
            raw, origin = given[name].value, f"from {given[name].origin}"
        elif param.env and param.env in environ:
            raw, origin = environ[param.env], f"from ${param.env}"
        elif param.default is not None:
            raw, origin = param.default, "default"
        elif param.required:
            hint = f" or set ${param.env}" if param.env else ""
            problems.append(Problem(f"required; give it with -e {name}=VALUE{hint}", *where))
            continue
        else:
            values[name] = None
            continue
        try:
            values[name] = coerce(param, raw, cwd)
        except ValueError as exc:
            shown = "the secret value" if param.secret else repr(_clip(raw))
            problems.append(Problem(f"{shown} ({origin}) {exc}", *where))
            continue
        text = values[name]
        if isinstance(text, str) and "\0" in text:
            problems.append(Problem(f"the value ({origin}) holds a NUL byte", *where))
        elif param.secret and text is not None and 0 < len(str(text)) < SHORTEST_FORM:
            problems.append(
                Problem(
                    f"the secret value ({origin}) is shorter than {SHORTEST_FORM} characters: "
                    "it could not be masked without masking ordinary text",
                    *where,
                )
            )
    if problems:
        raise ParameterError(problems)
    return ResolvedParams(values, runbook_file.runbook.secret_params)


def coerce(param: Param, raw: Any, cwd: Path | None = None) -> Any:
    """`raw` converted to the parameter's type; ValueError says which rule it broke."""
    value = _convert(param.type, raw, cwd)
    if param.pattern is not None and not re.fullmatch(param.pattern, str(raw)):
        raise ValueError(f"does not match pattern {param.pattern!r}")
    if param.choices is not None and value not in param.choices:
        raise ValueError(f"is not one of {param.choices}")
    return value


def _convert(kind: str, raw: Any, cwd: Path | None) -> Any:
    if kind == "str":
        if isinstance(raw, dict | list):
            raise ValueError("is not a string")
        if isinstance(raw, bool):  # YAML's bare true/false: str() would make it "False"
            raise ValueError("is a boolean (a bare true/false in YAML); quote it if text is meant")
        return raw if isinstance(raw, str) else str(raw)
    if kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ValueError("is not an integer")
        try:
            return int(raw)
        except ValueError:
            raise ValueError("is not an integer") from None
    if kind == "float":
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError("is not a number")
        try:
            return float(raw)
        except ValueError:
            raise ValueError("is not a number") from None
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ValueError("is not a boolean (true/false, yes/no, on/off, 1/0)")
    if kind == "duration":
        try:
            return parse_duration(raw)
        except ValueError:
            raise ValueError("is not a duration; write e.g. 30s, 5m, 1h30m or 500ms") from None
    if kind == "list":
        return _as_list(raw)
    if kind == "path":
        return _as_path(raw, cwd)
    raise ValueError(f"unknown type {kind}")


def _as_list(raw: Any) -> list[Any]:
    if isinstance(raw, list):
        return raw
    if not isinstance(raw, str):
        raise ValueError("is not a list")
    text = raw.strip()
    if text.startswith("["):
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError("is not a list: write [a, b] or a,b") from None
        if not isinstance(parsed, list):
            raise ValueError("is not a list: write [a, b] or a,b")
        return parsed
    return [part.strip() for part in text.split(",")] if text else []


def _as_path(raw: Any, cwd: Path | None) -> str:
    if not isinstance(raw, str) or not raw:
        raise ValueError("is not a path")
    path = Path(raw)
    if cwd is not None and not path.is_absolute():
        path = cwd / path
    if not path.exists():
        raise ValueError("does not exist on this machine")
    return str(path.resolve())


def _clip(value: Any, limit: int = 60) -> Any:
    text = str(value)
    return value if len(text) <= limit else text[:limit] + "…"
