"""Hosts and their variables, read with Ansible's own inventory parser and host patterns.

Users already keep their fleet in Ansible inventories (INI, YAML, directories with group_vars
and host_vars), so we read them with Ansible's code and get Ansible's semantics exactly. Ansible
is imported only when an inventory is loaded, and its warnings are captured here and turned into
`InventoryError`s rather than printed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InventoryError, Problem

_QUIET_ANSIBLE = {
    "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
    "ANSIBLE_HOST_PATTERN_MISMATCH": "ignore",
    "ANSIBLE_LOCALHOST_WARNING": "False",
    "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
    "ANSIBLE_DEPRECATION_WARNINGS": "False",
    "ANSIBLE_SYSTEM_WARNINGS": "False",
}


@dataclass(frozen=True)
class Host:
    """One inventory host: its name, groups and merged variables (as Ansible would merge them)."""

    name: str
    groups: tuple[str, ...]
    vars: Mapping[str, Any] = field(repr=False)

    @property
    def address(self) -> str:
        return str(self.vars.get("ansible_host") or self.name)

    @property
    def port(self) -> int | None:
        port = self.vars.get("ansible_port", self.vars.get("ansible_ssh_port"))
        return int(port) if port not in (None, "") else None

    @property
    def user(self) -> str | None:
        user = self.vars.get("ansible_user", self.vars.get("ansible_ssh_user"))
        return str(user) if user else None

    @property
    def key_file(self) -> str | None:
        key = self.vars.get(
            "ansible_ssh_private_key_file", self.vars.get("ansible_private_key_file")
        )
        return os.path.expanduser(str(key)) if key else None

    @property
    def become(self) -> bool:
        value = self.vars.get("ansible_become", False)
        return value if isinstance(value, bool) else str(value).lower() in ("true", "yes", "1")

    @property
    def become_password(self) -> str | None:
        """The inventory's ansible_become_password (or ansible_become_pass), if it gives one."""
        value = self.vars.get("ansible_become_password", self.vars.get("ansible_become_pass"))
        return str(value) if value not in (None, "") else None

    def template_vars(self) -> dict[str, Any]:
        """The names a template sees for this host, with Ansible's magic names filled in."""
        names = dict(self.vars)
        names.setdefault("ansible_host", self.address)
        names["inventory_hostname"] = self.name
        names["inventory_hostname_short"] = self.name.split(".")[0]
        names["group_names"] = sorted(g for g in self.groups if g not in ("all", "ungrouped"))
        return names


class Inventory:
    """Parsed inventory sources; `select` applies Ansible host patterns and `--limit`."""

    def __init__(self, manager: Any, loader: Any, sources: Sequence[str]) -> None:
        self._manager = manager
        self._loader = loader
        self.sources = tuple(sources)
        self._group_vars: dict[tuple[str, ...], dict[str, Any]] = {}

    @classmethod
    def load(cls, sources: Sequence[str | Path]) -> Inventory:
        """Parse `sources` (files or directories); raise `InventoryError` on any problem."""
        if not sources:
            raise InventoryError(Problem("no inventory given; use -i FILE (repeatable)"))
        missing = [str(s) for s in sources if not Path(s).exists()]
        if missing:
            raise InventoryError([Problem("inventory not found", path) for path in missing])
        for name, value in _QUIET_ANSIBLE.items():
            os.environ.setdefault(name, value)
        with _captured_ansible_warnings() as warnings:
            from ansible.errors import AnsibleError
            from ansible.inventory.manager import InventoryManager
            from ansible.parsing.dataloader import DataLoader

            loader = DataLoader()
            # Absolute, as ansible-inventory makes them: a bare `inventory.yml` would
            # otherwise lose the group_vars/ and host_vars/ beside it.
            paths = [os.path.abspath(s) for s in sources]
            try:
                manager = InventoryManager(loader=loader, sources=paths)
            except AnsibleError as exc:
                raise InventoryError(_parse_problems(exc, warnings)) from None
        return cls(manager, loader, paths)

    def select(self, pattern: str, limit: str | None = None) -> list[Host]:
        """Hosts matching `pattern` (narrowed by `limit`), in inventory order, as Ansible does."""
        from ansible.errors import AnsibleError

        try:
            self._manager.subset(limit)
            with _captured_ansible_warnings():
                hosts = self._manager.get_hosts(pattern)
        except AnsibleError as exc:
            raise InventoryError(Problem(f"host pattern {pattern!r}: {exc.message}")) from None
        finally:
            self._manager.subset(None)
        if not hosts:
            where = ", ".join(self.sources)
            narrowed = f" limited to {limit!r}" if limit else ""
            raise InventoryError(
                Problem(f"host pattern {pattern!r}{narrowed} matches no hosts in {where}")
            )
        return [self._host(h) for h in hosts]

    def _host(self, host: Any) -> Host:
        from ansible.inventory.helpers import sort_groups
        from ansible.utils.vars import combine_vars

        groups = sort_groups([g for g in host.get_groups() if g.name != "all"])
        merged = combine_vars(self._vars_of_groups(groups), host.get_vars())
        merged = combine_vars(merged, self._plugin_vars([host]))
        names = tuple(g.name for g in host.get_groups())
        return Host(str(host.name), names, _plain(merged))

    def _vars_of_groups(self, groups: list[Any]) -> dict[str, Any]:
        """Group variables in Ansible's default precedence, cached per set of groups."""
        from ansible.inventory.helpers import get_group_vars
        from ansible.utils.vars import combine_vars

        key = tuple(g.name for g in groups)
        if key not in self._group_vars:
            everyone = self._manager.groups["all"]
            merged = combine_vars(everyone.get_vars(), get_group_vars(groups))
            merged = combine_vars(merged, self._plugin_vars([everyone]))
            self._group_vars[key] = combine_vars(merged, self._plugin_vars(groups))
        return self._group_vars[key]

    def _plugin_vars(self, entities: list[Any]) -> dict[str, Any]:
        """group_vars/ and host_vars/ beside the sources, through Ansible's vars plugins."""
        from ansible.vars.plugins import get_vars_from_inventory_sources

        if not entities:
            return {}
        found: dict[str, Any] = get_vars_from_inventory_sources(
            self._loader, list(self.sources), entities, "task"
        )
        return found


CACHE_ENTRIES = 64


MAX_INVENTORY_BYTES = 64 * 1024 * 1024  # 100,000 hosts fit; /dev/zero does not


def select_hosts(
    sources: Sequence[str | Path],
    pattern: str,
    limit: str | None = None,
    cache_dir: Path | None = None,
) -> list[Host]:
    """`Inventory.load(sources).select(pattern, limit)`, remembered for static inventories.

    The answer is kept under a key made from the SHA-256 of every inventory file (and the
    group_vars/host_vars beside them), the pattern, the limit, Ansible's version and the
    ANSIBLE_* settings, so any change to any of them misses. An inventory with an executable
    (a dynamic inventory script) is never cached. A hit does not import Ansible at all."""
    for source in map(Path, sources):
        if source.exists() and not (source.is_file() or source.is_dir()):
            raise InventoryError(Problem("not a regular file or a folder", str(source)))
        if source.is_file() and source.stat().st_size > MAX_INVENTORY_BYTES:
            raise InventoryError(
                Problem(f"is too large: the limit is {MAX_INVENTORY_BYTES} bytes", str(source))
            )
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    key = _fingerprint(sources, pattern, limit)
    entry = folder / "inventory" / f"{key}.json" if key else None
    if entry is not None and entry.exists():
        try:
            rows = json.loads(entry.read_text())
            return [Host(r["name"], tuple(r["groups"]), r["vars"]) for r in rows]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged entry is simply recomputed
    hosts = Inventory.load(sources).select(pattern, limit)
    if entry is not None:
        _remember(
            entry, [{"name": h.name, "groups": list(h.groups), "vars": h.vars} for h in hosts]
        )
    return hosts


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(os.environ.get("RUNBOOK_EXEC_CACHE", Path(base) / "runbook-exec"))


@functools.lru_cache(maxsize=1)
def ansible_version() -> str:
    """ansible-core's version, read from its release.py: importing `ansible` or
    `importlib.metadata` for it would cost some 35 ms a command."""
    import importlib.util

    spec = importlib.util.find_spec("ansible")
    if spec is not None and spec.origin:
        try:
            text = (Path(spec.origin).parent / "release.py").read_text()
        except OSError:
            text = ""
        if found := re.search(r"__version__ = ['\"]([^'\"]+)", text):
            return found.group(1)
    from importlib.metadata import version

    return version("ansible-core")


def _fingerprint(sources: Sequence[str | Path], pattern: str, limit: str | None) -> str | None:
    digest = hashlib.sha256()
    settings = sorted((k, v) for k, v in os.environ.items() if k.startswith("ANSIBLE_"))
    digest.update(json.dumps([ansible_version(), settings, pattern, limit]).encode())
    files: list[Path] = []
    if limit and limit.startswith("@"):
        files.append(Path(limit[1:]))
    for source in map(Path, sources):
        beside = source if source.is_dir() else source.parent
        for folder in (beside / "group_vars", beside / "host_vars"):
            files.extend(p for p in sorted(folder.rglob("*")) if p.is_file())
        if source.is_dir():
            files.extend(p for p in sorted(source.rglob("*")) if p.is_file())
        else:
            files.append(source)
    try:
        for path in dict.fromkeys(files):
            if not path.is_file():
                return None  # a FIFO or device in group_vars: never read it, never cache
            if os.access(path, os.X_OK) and path.suffix not in (".yml", ".yaml", ".ini", ".json"):
                return None  # a dynamic inventory script: its answer can change any time
            digest.update(str(path.resolve()).encode() + b"\0" + path.read_bytes() + b"\0")
    except OSError:
        return None
    return digest.hexdigest()


def _remember(entry: Path, rows: list[dict[str, Any]]) -> None:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        temporary = entry.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(rows))
        temporary.replace(entry)
        kept = sorted(entry.parent.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[CACHE_ENTRIES:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # the cache is an optimisation; a read-only home must not stop a run


def _plain(value: Any) -> Any:
    """Ansible's tagged and "unsafe" values as plain Python types."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    return str(value)


@contextmanager
def _captured_ansible_warnings() -> Iterator[list[str]]:
    """Collect what Ansible would print as warnings while parsing, instead of printing it."""
    from ansible.plugins.inventory import ini
    from ansible.utils.display import Display

    captured: list[str] = []
    display = Display()
    saved = display.warning, display.error_as_warning, ini.InventoryModule._raise_error

    def warning(msg: str, *args: Any, **kwargs: Any) -> None:
        captured.append(str(msg))

    def error_as_warning(msg: str | None, exception: BaseException, **kwargs: Any) -> None:
        causes = []
        current: BaseException | None = exception
        while current is not None:
            causes.append(str(getattr(current, "message", "") or current).strip())
            current = current.__cause__
        captured.append(causes[-1] if causes else str(msg))

    def raise_with_line(plugin: Any, message: str) -> None:
        line = getattr(getattr(plugin, "_origin", None), "line_num", None)
        saved[2](plugin, f"line {line}: {message}" if line else message)

    display.warning, display.error_as_warning = warning, error_as_warning
    ini.InventoryModule._raise_error = raise_with_line
    try:
        yield captured
    finally:
        display.warning, display.error_as_warning = saved[0], saved[1]
        ini.InventoryModule._raise_error = saved[2]


def _parse_problems(exc: Any, warnings: list[str]) -> list[Problem]:
    source = str(exc.message).rsplit(" ", 1)[-1]
    details = [w for w in warnings if not w.startswith("Unable to parse")]
    if not details:
        return [Problem(f"cannot parse as an inventory: {exc.message}", source)]
    yaml_file = source.endswith((".yml", ".yaml", ".json"))
    best = details[0] if yaml_file else details[-1]
    line = None
    if match := re.match(r"line (\d+): ", best):
        line, best = int(match.group(1)), best[match.end() :]
    elif match := re.search(r"line (\d+), column", best):
        line = int(match.group(1))
    best = " ".join(re.sub(r'in "<unicode string>", line \d+, column \d+', "", best).split())
    return [Problem(f"cannot parse as an inventory: {best}", source, line)]
