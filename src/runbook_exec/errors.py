"""The exceptions users meet, one small family, and the exit code each family maps to.

Library exceptions (PyYAML, Pydantic, Ansible, asyncssh, SQLAlchemy) are turned into these at
the boundary where they arise; nothing above that boundary sees them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
EXIT_AUDIT = 4
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70  # a bug of ours (sysexits' EX_SOFTWARE): one line, and a debug log


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where it is (file, line, field) and what is wrong."""

    message: str
    path: str | None = None
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.path:
            where = f"{self.path}:{self.line}: " if self.line else f"{self.path}: "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class RunbookExecError(Exception):
    """Root of every error runbook-exec raises on purpose."""

    exit_code = EXIT_FAILED


class InputError(RunbookExecError):
    """Bad input: the runbook, inventory, parameters or options. Nothing has run."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems: Problem | str | Iterable[Problem]) -> None:
        if isinstance(problems, str):
            problems = Problem(problems)
        self.problems: tuple[Problem, ...] = (
            (problems,) if isinstance(problems, Problem) else tuple(problems)
        )
        super().__init__("\n".join(str(p) for p in self.problems))


class RunbookError(InputError):
    """The runbook file is not valid: names the file, the line and the field."""


class ParameterError(InputError):
    """A parameter value (from -e, a file or the environment) is missing or invalid."""


class InventoryError(InputError):
    """An inventory cannot be read, or a host pattern selects nothing."""


class Refused(RunbookExecError):
    """The request is valid but not allowed now: a lock is held, an approval is missing."""

    exit_code = EXIT_REFUSED


class LockHeld(Refused):
    """Another run holds the lock this run needs."""

    def __init__(self, message: str, holder: object = None) -> None:
        super().__init__(message)
        self.holder = holder


class NotFound(InputError):
    """A run id, lock or other named thing does not exist in the store."""


class StoreError(RunbookExecError):
    """The state store cannot be opened, read or written. A run stops before its next remote
    step and can be resumed once the store is back."""

    exit_code = EXIT_AUDIT


class HostKeyError(RunbookExecError):
    """A host presented a host key that is unknown or does not match known_hosts."""
