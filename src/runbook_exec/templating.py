"""Jinja2 rendering for runbook fields: sandboxed, strict about undefined names, and never
rendering its own output again, so a parameter value holding `{{ … }}` stays data."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, Undefined, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateProblem(ValueError):
    """A template that does not parse, or that uses a name the context does not have."""


def quote(value: Any) -> str:
    """Shell-quote a value for `sh -c`: the value reaches the command as one word, unchanged."""
    return shlex.quote(value if isinstance(value, str) else _text(value))


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


MAX_TEXT = 16 * 1024 * 1024
"""The longest text a template may make (a rendered field, a repeated string or list)."""
MAX_BITS = 100_000  # a power's size: 30,000 digits, made in microseconds


class _Bounded(ImmutableSandboxedEnvironment):
    """The sandbox, with what makes large texts or numbers bounded: `{{ 'x' * 1000000000 }}`,
    `{{ (9 ** 10000) ** 10000 }}`, `'x'.ljust(10**9)`, huge widths, replacements and joins
    are refused before they take gigabytes or minutes (`range` is bounded already)."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and isinstance(left, str):
            _bounded_format(left)
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                repeated = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if repeated and len(seq) * times > MAX_TEXT:
                    raise TemplateProblem(f"a text or list over {MAX_TEXT} long; refused")
        if operator == "%" and isinstance(right, tuple | int):
            _bounded_numbers(right if isinstance(right, tuple) else (right,))
        powers = operator == "**" and isinstance(left, int) and isinstance(right, int)
        if powers and abs(left) > 1 and right > 0 and left.bit_length() * right > MAX_BITS:
            raise TemplateProblem(f"a power of over {MAX_BITS} bits; refused")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        return _call(__self, __context, __obj, *args, **kwargs)


_WIDTH = re.compile(r"\d{8,}")  # a field width or precision of 10,000,000 or more


def _bounded_format(text: str) -> None:
    if _WIDTH.search(text):
        raise TemplateProblem("a format width over 9,999,999; refused")


def _bounded_width(name: str, original: Any, position: int) -> Any:
    """Jinja2's filter `name`, refusing a width that would make a text over MAX_TEXT."""

    def bounded(*args: Any, **kwargs: Any) -> Any:
        width = args[position] if len(args) > position else kwargs.get("width")
        if isinstance(width, int) and width > MAX_TEXT:
            raise TemplateProblem(f"{name} width over {MAX_TEXT}; refused")
        return original(*args, **kwargs)

    return bounded


def _bounded_format_filter(original: Any) -> Any:
    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            _bounded_format(value)
        return original(value, *args, **kwargs)

    return bounded


def _bounded_numbers(values: Any) -> None:
    """A number over MAX_TEXT given to a call (`'x'.ljust(10**9)`, a width, a count) would
    make a text that large: refused before it is made."""
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_TEXT:
            raise TemplateProblem(f"a number over {MAX_TEXT} given where a size goes; refused")


def _call(env: _Bounded, context: Any, obj: Any, *args: Any, **kwargs: Any) -> Any:
    _bounded_numbers((*args, *kwargs.values()))
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, str) and name in ("replace", "join") and args:
        _bounded_product(owner, name, args)
    return super(_Bounded, env).call(context, obj, *args, **kwargs)


def _bounded_product(text: str, name: str, args: tuple[Any, ...]) -> None:
    """`'x' * 1000 | replace('x', 'y' * 10**7)`, `', '.join(...)`: what they would make,
    refused when over MAX_TEXT, before it is made."""
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str):
        count = text.count(args[0]) if args[0] else len(text) + 1
        if count * len(str(args[1])) > MAX_TEXT:
            raise TemplateProblem(f"a replacement making a text over {MAX_TEXT}; refused")
    joined = name == "join" and isinstance(args[0], list | tuple | range)
    if joined and len(text) * len(args[0]) > MAX_TEXT:
        raise TemplateProblem(f"a join making a text over {MAX_TEXT}; refused")


def _bounded_filter(original: Any, name: str) -> Any:
    """Jinja2's `replace` / `join` filter, refusing what would make a text over MAX_TEXT."""

    def bounded(*args: Any, **kwargs: Any) -> Any:
        values = [a for a in args if not hasattr(a, "environment")]  # drop eval contexts
        if name == "replace" and len(values) >= 3 and isinstance(values[0], str):
            _bounded_product(values[0], "replace", tuple(values[1:]))
        if name == "join" and len(values) >= 2 and isinstance(values[1], str):
            items = values[0]
            if isinstance(items, list | tuple | range):
                _bounded_product(values[1], "join", (items,))
        return original(*args, **kwargs)

    for attribute in ("jinja_pass_arg",):  # keep what tells Jinja2 to pass a context
        if hasattr(original, attribute):
            setattr(bounded, attribute, getattr(original, attribute))
    return bounded


def _environment() -> ImmutableSandboxedEnvironment:
    env = _Bounded(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters["center"] = _bounded_width("center", env.filters["center"], 1)
    env.filters["indent"] = _bounded_width("indent", env.filters["indent"], 1)
    env.filters["format"] = _bounded_format_filter(env.filters["format"])
    env.filters["replace"] = _bounded_filter(env.filters["replace"], "replace")
    env.filters["join"] = _bounded_filter(env.filters["join"], "join")
    env.globals.pop("lipsum", None)  # text of any size, on request: not for runbooks
    env.filters.update(
        quote=quote, to_json=_to_json, basename=posixpath.basename, dirname=posixpath.dirname
    )
    return env


ENV = _environment()


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


@lru_cache(maxsize=4096)
def _compile(text: str) -> Any:
    try:
        return ENV.from_string(text)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax: {exc.message}") from None


@lru_cache(maxsize=4096)
def _compile_expression(text: str) -> Any:
    try:
        ENV.compile_expression(text)  # parses `text` as one expression, nothing more
        return ENV.from_string("{% set result = (" + text + ") %}")
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"expression syntax: {exc.message}") from None


def _context(template: Any, names: Mapping[str, Any]) -> Any:
    """A Jinja2 context that reads `names` lazily instead of copying every value first."""
    lazy = names if isinstance(names, HostVars) else HostVars({}, names)
    return template.new_context(lazy, shared=True)


def render(text: str, context: Mapping[str, Any]) -> str:
    """`text` rendered once with `context`; plain text comes back untouched.

    `context` is read lazily (only the names the template uses), so it may be a `HostVars`
    whose own templated values are rendered on first use."""
    if not is_template(text):
        return text
    template = _compile(text)
    try:
        rendered = str(ENV.concat(template.root_render_func(_context(template, context))))
    except Exception as exc:
        raise _problem(exc) from None
    if len(rendered) > MAX_TEXT:
        raise TemplateProblem(f"renders to over {MAX_TEXT} characters; refused")
    return rendered


class HostVars(Mapping[str, Any]):
    """A host's names for templates. Inventory values that are templates themselves
    (`app_root: "{{ base }}/app"`) are rendered when first used, as Ansible does; `data`
    values (parameters, `run`, registered results) are never rendered, and win over
    inventory values of the same name."""

    def __init__(self, inventory: Mapping[str, Any], data: Mapping[str, Any]) -> None:
        self._inventory = inventory
        self._data = data
        self._rendered: dict[str, Any] = {}
        self._active: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        if name in self._data:
            return self._data[name]
        if name in self._rendered:
            return self._rendered[name]
        if name not in self._inventory:
            if name in ENV.globals:
                return ENV.globals[name]
            raise KeyError(name)
        if name in self._active:
            raise TemplateProblem(f"inventory variable '{name}' refers to itself")
        self._active.add(name)
        try:
            value = render_data(self._inventory[name], self)
        except TemplateProblem as exc:
            raise TemplateProblem(f"in inventory variable '{name}': {exc}") from None
        finally:
            self._active.discard(name)
        self._rendered[name] = value
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._data or name in self._inventory or name in ENV.globals

    def __iter__(self) -> Iterator[str]:
        return iter({**self._inventory, **self._data})

    def __len__(self) -> int:
        return len({**self._inventory, **self._data})

    def extended(self, data: Mapping[str, Any]) -> HostVars:
        """The same host with more data names (registered results). Inventory values are
        rendered afresh: one may use a name the new data adds or changes."""
        return HostVars(self._inventory, {**self._data, **data}) if data else self


def render_data(value: Any, context: Mapping[str, Any]) -> Any:
    """Every string inside `value` (dicts, lists) rendered once."""
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, dict):
        return {key: render_data(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render_data(item, context) for item in value]
    return value


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """A bare Jinja2 expression (as in `when:`), evaluated to a value."""
    template = _compile_expression(expression)
    try:
        context_ = _context(template, context)
        for _ in template.root_render_func(context_):
            pass
        result = context_.vars["result"]
        if isinstance(result, Undefined):  # `when: nosuchname`: an error now, not at bool()
            result._fail_with_undefined_error()
        return result
    except Exception as exc:
        raise _problem(exc) from None


def _problem(exc: Exception) -> TemplateProblem:
    """What went wrong in a template, as the one error type callers handle: Jinja2's own
    errors, and what a filter or operator raised (`{{ 5 | length }}`, `{{ 1 / 0 }}`)."""
    if isinstance(exc, TemplateProblem):
        return exc
    if isinstance(exc, TemplateError):
        return TemplateProblem(_explain(exc))
    if isinstance(exc, RecursionError):
        return TemplateProblem("variables refer to each other in a loop")
    return TemplateProblem(f"{type(exc).__name__}: {exc}")


def names_used(text: str, *, expression: bool = False) -> set[str]:
    """The top-level names a template (or a bare expression) reads from its context."""
    source = "{{ " + text + " }}" if expression else text
    try:
        return set(meta.find_undeclared_variables(ENV.parse(source)))
    except TemplateSyntaxError as exc:
        kind = "expression" if expression else "template"
        raise TemplateProblem(f"{kind} syntax: {exc.message}") from None


def _explain(exc: TemplateError) -> str:
    message = exc.message or str(exc)
    return message.replace("jinja2.exceptions.", "")
