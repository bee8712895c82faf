"""Rendering the steps for every host: the real rendering (what runs) and the masked view
(what is shown and recorded), collecting every problem instead of stopping at one."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from ..durations import as_seconds
from ..errors import Problem
from ..inventory import Host
from ..masking import MASK
from ..model import Gate
from ..params import ResolvedParams
from ..runbook import RunbookFile
from ..steps import Scope, StepBase
from ..steps.base import FieldPath
from ..templating import HostVars, TemplateProblem, evaluate, is_template, names_used, render
from .values import PlannedStep, Rendered, group_actions, step_options


class RunTimeValue:
    """Stands for a value known only during the run (a registered result) when planning."""

    def __init__(self, path: str) -> None:
        self._path = path

    def __getattr__(self, name: str) -> RunTimeValue:
        if name.startswith("_"):
            raise AttributeError(name)
        return RunTimeValue(f"{self._path}.{name}")

    def __getitem__(self, key: Any) -> RunTimeValue:
        return RunTimeValue(f"{self._path}[{key!r}]")

    def __iter__(self) -> Iterator[RunTimeValue]:
        yield RunTimeValue(f"{self._path}[*]")  # `batch_hosts | join('|')` shows as one

    def __str__(self) -> str:
        return f"<{self._path} at run time>"


class _Registered(Mapping[str, Any]):
    """The plan's names with each result registered by an earlier step standing in as a
    `RunTimeValue`; notes which of those a rendering read, directly or through an
    inventory variable (`url: "http://{{ health.stdout }}"`)."""

    def __init__(self, data: Mapping[str, Any], registered: set[str]) -> None:
        self.data = data
        self.late = {name: RunTimeValue(name) for name in registered}
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        if name in self.late:
            self.read.add(name)
            return self.late[name]
        return self.data[name]

    def __contains__(self, name: object) -> bool:
        return name in self.late or name in self.data

    def __iter__(self) -> Iterator[str]:
        return iter({**self.data, **self.late})

    def __len__(self) -> int:
        return len({**self.data, **self.late})


class Renderer:
    """Renders every step for every host, collecting problems instead of stopping at one."""

    def __init__(
        self,
        runbook_file: RunbookFile,
        hosts: Sequence[Host],
        params: ResolvedParams,
        run: Mapping[str, Any],
    ) -> None:
        self.file = runbook_file
        self.hosts = hosts
        self.base = {**params.values, "run": run}
        # What is shown is rendered with a stand-in for each secret value that filters
        # leave recognisable (`quote` keeps it one word, `upper` is undone by matching
        # case-insensitively), then each stand-in becomes the mask.
        stand_ins = {
            name: f"{_STAND_IN}{_letters(number)}"
            for number, name in enumerate(sorted(params.secret_names))
            if params.values.get(name) is not None
        }
        self.masked_base = {**params.values, **stand_ins, "run": run}
        self.has_secrets = bool(params.secret_names)
        self.secrets = params.secrets
        self.contexts = {h.name: HostVars(h.template_vars(), self.base) for h in hosts}
        self.masked: dict[str, HostVars] = {}  # the hosts' names with secrets masked
        self.registered: set[str] = set()
        self.problems: dict[tuple[int | None, str, str], list[str]] = {}

    def gates(
        self, gates: Sequence[Gate]
    ) -> list[tuple[float | None, str | None, dict[str, Any] | None]]:
        """Gate fields rendered once, with the parameters (they are the same for every host);
        an analysis as written (its batch's names are known when the batch ends), its
        templates checked now."""
        names = HostVars({}, self.masked_base)  # gates are messages: shown, never secret
        rendered: list[tuple[float | None, str | None, dict[str, Any] | None]] = []
        for index, gate in enumerate(gates):
            loc = ("strategy", "between_batches", index)
            field = f"strategy.between_batches[{index}]"
            if gate.analysis is not None:
                analysis = gate.analysis.model_dump(mode="json", exclude_unset=True)
                late = _Registered(self.masked_base, set(BATCH_NAMES))
                for path, text in _strings(analysis, ("analysis",)):
                    if not is_template(text) or path[-1] in ("success", "failure"):
                        continue
                    try:
                        render(text, late)
                    except TemplateProblem as exc:
                        if not late.read:
                            self._problem((*loc, *path), field + _dotted(path), str(exc), "(all)")
                    late.read.clear()
                rendered.append((None, None, self.secrets.data(analysis)))
                continue
            try:
                wait = gate.wait
                if isinstance(wait, str):  # rendered: a duration parameter is seconds
                    wait = as_seconds(_hide(render(wait, names)).strip())
                approve = _hide(render(gate.approve, names)) if gate.approve else None
            except (TemplateProblem, ValueError) as exc:
                self._problem(loc, field, str(exc), "(all)")
                wait, approve = None, gate.approve
            rendered.append((wait, approve, None))
        return rendered

    def section(self, section: str, steps: Sequence[StepBase]) -> tuple[PlannedStep, ...]:
        """Plan `steps`. Names registered by earlier steps stay known afterwards: rollback
        steps, planned after the main ones, may test what those registered."""
        planned = []
        for index, step in enumerate(steps):
            planned.append(self._step(section, index, step, set(self.registered)))
            if step.register_as:
                self.registered.add(step.register_as)
        return tuple(planned)

    def _step(self, section: str, index: int, step: StepBase, registered: set[str]) -> PlannedStep:
        loc = (section, index)
        field = self.file.step_field(section, index)
        per_batch = step.scope is Scope.BATCH
        for key, expression in step.expressions():
            try:
                names_used(expression, expression=True)
            except TemplateProblem as exc:
                where = field + _dotted(key)
                self._problem((*loc, *key), where, str(exc), "(all)")
        templates = list(_templates(step))
        targets = self.hosts[:1] if per_batch else self.hosts
        if per_batch:  # its batch's names are known when the batch reaches it
            registered = registered | BATCH_NAMES
        rows: list[tuple[str, Mapping[str, Any] | None, str]] = []
        hosts: dict[str, Rendered] = {}
        for position, host in enumerate(targets):
            name = "*" if per_batch else host.name
            names: _Registered | None = None
            context = self.contexts[host.name]
            if registered:  # fresh names: what an inventory variable renders to may be late
                names = _Registered(self.base, registered)
                context = HostVars(host.template_vars(), names)
            note = "once per batch" if per_batch else ""
            if step.run_once:
                note = "run_once: this host only"
            when_later = False
            if step.when is not None:
                decided = self._when(step.when, context, names, loc, field, host.name)
                when_later = decided is None
                if decided is False:
                    note = f"skipped: when {step.when!r} is false"
                elif when_later:
                    note = _join(note, f"when {step.when!r} is decided at run time")
            if note.startswith("skipped:"):
                hosts[name] = Rendered(None, None)
                rendered = shown = None
            else:
                rendered, late = self._payload(step, context, names, loc, field, host.name)
                shown = self._shown(step, host, rendered, templates, late, registered)
                hosts[name] = Rendered(None if late else rendered, shown, when_later, late)
            if step.run_once and position > 0:
                rows.append((name, None, f"run_once: runs on {targets[0].name} only"))
            else:
                rows.append((name, shown, note))
        return PlannedStep(
            section=section,
            index=index,
            name=self._name(step, targets, loc, field),
            kind=step.kind,
            options=step_options(step),
            actions=group_actions(rows if not per_batch else rows[:1]),
            hosts=hosts,
        )

    def _shown(
        self,
        step: StepBase,
        host: Host,
        rendered: StepBase | None,
        templates: Sequence[tuple[FieldPath, str]],
        late: bool,
        registered: set[str],
    ) -> dict[str, Any]:
        """The step as it may be shown and recorded for `host`: what runs, with secrets
        masked. When the runbook has secrets, every templated field is rendered again with
        the secrets masked in the parameters, so that what a template made of a secret
        (`{{ token | upper }}`, directly or through an inventory variable) shows masked too;
        the masking of what is left catches a secret that reached a field any other way."""
        action = (rendered or step).action()
        if self.has_secrets or rendered is None:
            if late:
                masked = HostVars(host.template_vars(), _Registered(self.masked_base, registered))
            else:
                if host.name not in self.masked:
                    self.masked[host.name] = HostVars(host.template_vars(), self.masked_base)
                masked = self.masked[host.name]
            for path, text in templates:
                try:
                    _set(action, path, _hide(render(text, masked)))
                except TemplateProblem:
                    _set(action, path, text if rendered is None else MASK)
        return self.secrets.data(action)  # type: ignore[no-any-return]

    def _name(self, step: StepBase, targets: Sequence[Host], loc: Any, field: str) -> str:
        if step.name is None or not targets:
            return step.title
        try:
            names = HostVars(targets[0].template_vars(), self.masked_base)  # shown only
            return self.secrets.text(_hide(render(step.name, names)))
        except TemplateProblem as exc:
            self._problem((*loc, "name"), f"{field}.name", str(exc), targets[0].name)
            return step.name

    def _when(
        self,
        expression: str,
        context: Mapping[str, Any],
        names: _Registered | None,
        loc: Any,
        field: str,
        host: str,
    ) -> bool | None:
        """The host's `when`, or None when it is decided at run time (it reads a result
        registered during the run)."""
        try:
            value = evaluate(expression, context)
        except TemplateProblem as exc:
            if names is None or not names.read:
                self._problem((*loc, "when"), f"{field}.when", str(exc), host)
            return None
        return None if names is not None and names.read else bool(value)

    def _payload(
        self,
        step: StepBase,
        context: Mapping[str, Any],
        names: _Registered | None,
        loc: Any,
        field: str,
        host: str,
    ) -> tuple[StepBase | None, bool]:
        """The step rendered for the host, and whether it must be rendered again at run time
        (it reads a registered result; what it reads is then not known, so its problems are
        not either)."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if names is not None:
            names.read.clear()
        rendered = render_action(step, context, lambda path, text: problems.append((path, text)))
        if names is not None and names.read:
            return rendered, True
        for path, message in problems:
            self._problem((*loc, *path), field + _dotted(path), message, host)
        return rendered, False

    def _problem(self, loc: Any, where: str, message: str, host: str) -> None:
        line = self.file.line_of(tuple(loc))
        self.problems.setdefault((line, where, message), []).append(host)

    def summarised_problems(self) -> list[Problem]:
        problems = []
        for (line, where, message), hosts in self.problems.items():
            if len(self.hosts) > 1:
                shown = ", ".join(hosts[:3]) + (", …" if len(hosts) > 3 else "")
                message = f"{message} (on {len(hosts)} of {len(self.hosts)} hosts: {shown})"
            problems.append(Problem(message, self.file.display_path, line, where))
        return problems


BATCH_NAMES = frozenset({"batch_number", "batch_hosts", "baseline_hosts"})
"""What a step run once per batch (a gate, an analysis) may name besides a host's names."""


def _strings(value: Any, path: FieldPath) -> Iterator[tuple[FieldPath, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _strings(item, (*path, position))


_STAND_IN = "rbxsecret"
_STAND_INS = re.compile(_STAND_IN + "[a-z]+", re.IGNORECASE)


def _letters(number: int) -> str:
    """0 -> "a", 25 -> "z", 26 -> "ba": a stand-in's suffix, letters only (a filter that
    replaces digits leaves it as it is)."""
    text = ""
    while True:
        number, digit = divmod(number, 26)
        text = "abcdefghijklmnopqrstuvwxyz"[digit] + text
        if number == 0:
            return text


def _hide(text: str) -> str:
    return _STAND_INS.sub(MASK, text)


def render_action(
    step: StepBase,
    context: Mapping[str, Any],
    problem: Callable[[tuple[str | int, ...], str], None],
) -> StepBase | None:
    """The step with its kind-specific fields (and `creates`/`unless`) rendered for one host
    and validated again; each problem goes to `problem(path, message)` and gives None. A
    step with no template in them is the same on every host: the step itself."""
    failed = templated = False
    expressions = {path for path, _ in step.expressions()}  # evaluated, never rendered

    def walk(value: Any, path: tuple[str | int, ...]) -> Any:
        nonlocal failed, templated
        if isinstance(value, str):
            text = value
            if is_template(value) and path not in expressions:
                templated = True
                try:
                    text = render(value, context)
                except TemplateProblem as exc:
                    failed = True
                    problem(path, str(exc))
                    return value
            if "\0" in text:  # no command, path or argument can carry one
                failed = True
                problem(path, "holds a NUL byte")
            return text
        if isinstance(value, dict):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        return value

    rendered: dict[str, Any] = walk(step.payload(), ())
    for key in ("creates", "unless"):
        guard = getattr(step, key)
        if guard is not None:
            rendered[key] = walk(guard, (key,))
    if failed:
        return None
    if not templated:
        return step
    try:
        whole = step.model_dump(mode="python", exclude_unset=True, by_alias=True)
        validated = type(step).model_validate({**whole, **rendered}, context={"rendered": True})
    except ValidationError as exc:
        reported: set[tuple[str | int, ...]] = set()
        for error in exc.errors(include_url=False):
            path = _data_path(rendered, error["loc"])
            if path in reported:
                continue  # the other alternatives of a union, failing on the same value
            reported.add(path)
            message = str(error["msg"]).removeprefix("Value error, ")
            problem(path, f"after rendering: {message}")
        return None
    return validated


def _templates(step: StepBase) -> Iterator[tuple[FieldPath, str]]:
    """Every template in the step's kind-specific fields and guards, with where it lies
    (not its expressions, which are evaluated as `when:` is, never rendered)."""
    expressions = {path for path, _ in step.expressions()}

    def walk(value: Any, path: FieldPath) -> Iterator[tuple[FieldPath, str]]:
        if isinstance(value, str):
            if is_template(value) and path not in expressions:
                yield path, value
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, (*path, key))
        elif isinstance(value, list):
            for position, item in enumerate(value):
                yield from walk(item, (*path, position))

    yield from walk(step.payload(), ())
    for key in ("creates", "unless"):
        guard = getattr(step, key)
        if guard is not None:
            yield from walk(guard, (key,))


def _get(data: Any, path: FieldPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _set(data: Any, path: FieldPath, value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _dotted(path: Sequence[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _data_path(data: Any, loc: Sequence[str | int]) -> tuple[str | int, ...]:
    """The part of a validation error's `loc` that exists in `data` (drops union branch names)."""
    path: list[str | int] = []
    for part in loc:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and part < len(data)
        if not (in_dict or in_list):
            continue
        data = data[part]
        path.append(part)
    return tuple(path)


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second
