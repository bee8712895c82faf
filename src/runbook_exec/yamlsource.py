"""Safe, bounded YAML loading that remembers the line every key and item came from.

Only PyYAML's safe loader is used. A file over the size limit is refused before parsing, and a
document whose aliases expand past the node budget (an "alias bomb") is refused while it is
walked, so memory and time stay bounded whatever the input.
"""

from __future__ import annotations

import stat
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import Problem, RunbookError

MAX_BYTES = 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64  # a runbook is a few levels deep; thousands only come from an attack

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class SourceMap:
    """Line numbers (1-based) of every mapping key and sequence item, by path from the root."""

    path: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """The line of `loc`, or of its nearest ancestor that the file spells out."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return None


def load_yaml(path: Path, *, display_path: str | None = None) -> tuple[Any, SourceMap, str]:
    """Load one YAML document; return its data, where each part came from, and the text."""
    shown = display_path or str(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # /dev/zero, a FIFO, a folder: never read
            raise RunbookError(Problem("not a regular file", shown))
        with path.open("rb") as file:
            raw = file.read(MAX_BYTES + 1)  # bounded even if it grows while being read
    except FileNotFoundError:
        raise RunbookError(Problem("file not found", shown)) from None
    except OSError as exc:
        raise RunbookError(Problem(f"cannot read: {exc.strerror}", shown)) from None
    if len(raw) > MAX_BYTES:
        raise RunbookError(Problem(f"is too large: the limit is {MAX_BYTES} bytes", shown))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunbookError(Problem(f"is not UTF-8 text (byte {exc.start})", shown)) from None
    data, source = parse_yaml(text, shown)
    return data, source, text


def parse_yaml(text: str, shown: str) -> tuple[Any, SourceMap]:
    if "\0" in text:
        at = text.count("\n", 0, text.index("\0")) + 1
        raise RunbookError(Problem("holds a NUL byte; YAML text cannot", shown, at))
    deep = _flow_too_deep(text)
    if deep is not None:
        raise RunbookError(
            Problem(f"nested more than {MAX_DEPTH} levels deep; refused", shown, deep)
        )
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise RunbookError(Problem(f"YAML: {exc}", shown)) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise RunbookError(Problem("is empty", shown))
        source = SourceMap(shown, {(): node.start_mark.line + 1})
        _walk(node, (), source, [0], shown, loader)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise RunbookError(Problem(f"YAML syntax: {problem}", shown, line)) from None
    except yaml.YAMLError as exc:
        raise RunbookError(Problem(f"YAML: {exc}", shown)) from None
    except RecursionError:
        raise RunbookError(
            Problem(f"nested more than {MAX_DEPTH} levels deep; refused", shown)
        ) from None
    finally:
        loader.dispose()
    return data, source


def _flow_too_deep(text: str) -> int | None:
    """The line where `[`/`{` brackets (outside quotes) nest deeper than MAX_DEPTH, found in
    one pass before the parser would spend seconds recursing into them; None if nowhere."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None
    depth, quote, line = 0, "", 1
    for char in text:
        if char == "\n":
            line += 1
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line
        elif char in "]}":
            depth = max(depth - 1, 0)
    return None


def _walk(
    node: yaml.Node,
    loc: Loc,
    source: SourceMap,
    budget: list[int],
    shown: str,
    loader: yaml.SafeLoader,
) -> None:
    """Record lines under `node`, counting every node reached through aliases too."""
    budget[0] += 1
    if len(loc) > MAX_DEPTH:
        raise RunbookError(
            Problem(
                f"nested more than {MAX_DEPTH} levels deep; refused",
                shown,
                node.start_mark.line + 1,
            )
        )
    if budget[0] > MAX_NODES:
        raise RunbookError(
            Problem(
                f"expands to more than {MAX_NODES} nodes through aliases; refused",
                shown,
                node.start_mark.line + 1,
            )
        )
    if isinstance(node, yaml.MappingNode):
        own = [pair for pair in node.value if pair[0].tag != "tag:yaml.org,2002:merge"]
        loader.flatten_mapping(node)  # resolve `<<` merge keys in place, as construction will
        own_ids = {id(key_node) for key_node, _ in own}
        seen: dict[Hashable, int] = {}
        for key_node, _ in own:
            if isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                if key_node.value in seen:
                    first = seen[key_node.value]
                    raise RunbookError(
                        Problem(
                            f"duplicate key '{key_node.value}' (first at line {first})", shown, line
                        )
                    )
                seen[key_node.value] = line
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            if id(key_node) in own_ids or key not in seen:
                source.lines[(*loc, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*loc, key), source, budget, shown, loader)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            source.lines[(*loc, index)] = item.start_mark.line + 1
            _walk(item, (*loc, index), source, budget, shown, loader)
