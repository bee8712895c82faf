"""runbook-exec: run declarative runbooks on real servers, with an audit trail that proves it."""

from .errors import InputError, InventoryError, ParameterError, RunbookError, RunbookExecError

__version__ = "0.1.0"

__all__ = [
    "InputError",
    "InventoryError",
    "ParameterError",
    "RunbookError",
    "RunbookExecError",
    "__version__",
]
