"""Where state lives and what a site sets once instead of typing on every command.

The state store's default is the workspace's own `.runbook-exec/state.db` when the working
directory has one (a workspace that pinned its store keeps it), else
`$XDG_STATE_HOME/runbook-exec/state.db` (`~/.local/state/...`): one store per user, whatever
folder a command is typed in. `--db` or RUNBOOK_EXEC_DB choose another.

Settings come from `runbook-exec.toml` in the working directory, then from
`$XDG_CONFIG_HOME/runbook-exec/config.toml` (`~/.config/...`); the workspace's win. Each key
is the default of the option of that name on every command that has one; what is typed, or
set in the option's environment variable, still wins:

    db = "postgresql://ops@db.internal/runbooks"
    inventory = ["inventory/"]          # -i; paths relative to the working directory
    known_hosts = "~/.ssh/known_hosts"
    operator = "anna"
    forks = 20
    timeout = "15m"
    connect_timeout = "10s"

`[[notify]]` tables name where runs send notifications (see `notify`).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from .errors import InputError, Problem

WORKSPACE_STORE = Path(".runbook-exec") / "state.db"
WORKSPACE_CONFIG = "runbook-exec.toml"
KEYS = {
    "db": str,
    "inventory": list,
    "known_hosts": str,
    "operator": str,
    "forks": int,
    "timeout": str,
    "connect_timeout": str,
    "notify": list,  # [[notify]] tables: checked by notify.targets
}


def default_db() -> str:
    """The store a command uses when none is named."""
    if WORKSPACE_STORE.is_file():
        return f"sqlite:///{WORKSPACE_STORE}"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return f"sqlite:///{Path(base) / 'runbook-exec' / 'state.db'}"


def config_dir() -> Path:
    """This user's folder of settings and keys: $XDG_CONFIG_HOME/runbook-exec."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "runbook-exec"


def config_files() -> list[Path]:
    """The settings files that apply here, the one that wins last."""
    return [config_dir() / "config.toml", Path(WORKSPACE_CONFIG)]


def load() -> dict[str, Any]:
    """The settings, merged; a file that cannot be read or holds an unknown key or a value
    of the wrong type is bad input naming the file and the key."""
    merged: dict[str, Any] = {}
    for path in config_files():
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InputError(Problem(f"cannot read the settings: {exc}", str(path))) from None
        problems = []
        for key, value in data.items():
            kind = KEYS.get(key)
            if kind is None:
                known = ", ".join(KEYS)
                problems.append(Problem(f"unknown setting (known: {known})", str(path), field=key))
            elif key == "notify" and isinstance(value, list | dict):
                merged[key] = value
            elif kind is list and isinstance(value, str):
                merged[key] = [value]
            elif not isinstance(value, kind) or isinstance(value, bool):
                word = {str: "text", int: "a whole number", list: "a list of text"}[kind]
                problems.append(Problem(f"must be {word}", str(path), field=key))
            else:
                merged[key] = value
        if problems:
            raise InputError(problems)
    return merged


def default_map(command: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Click's default_map for a command tree: each setting as the default of every option
    of that name."""
    found: dict[str, Any] = {}
    for param in getattr(command, "params", ()):
        if param.name in settings:
            found[param.name] = settings[param.name]
    for name, sub in (getattr(command, "commands", None) or {}).items():
        inner = default_map(sub, settings)
        if inner:
            found[name] = inner
    return found
