"""The warm controller's second fork: the process that becomes the caller's command, with
its streams, environment, directory, umask and signals, and exits with its code."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from .wire import FORWARDED


def become(
    request: dict[str, Any], fds: list[int], command: Callable[[list[str]], object]
) -> NoReturn:
    """The second fork: become the command as the caller started it, run it, exit."""
    code = 1
    try:
        os.setsid()  # not in the controller's terminal session; the caller forwards signals
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        _std_streams(request.get("streams") or [])
        os.environ.clear()
        os.environ.update(request["env"])
        time.tzset()
        os.umask(int(request["umask"]))
        sys.argv = list(request["argv"])
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        command(sys.argv[1:])
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:  # Ctrl-C before the command could handle it
        print("interrupted", file=sys.stderr)
        code = 130
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            threading._shutdown()  # type: ignore[attr-defined]  # as multiprocessing's forks do
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _std_streams(settings: list[list[str | None]]) -> None:
    """New sys.stdin/stdout/stderr on fds 0-2, set up as Python would have for the caller."""

    def setting(index: int, default_errors: str) -> tuple[str, str]:
        given = settings[index] if index < len(settings) else []
        encoding, errors = [*given, None, None][:2]
        return encoding or "utf-8", errors or default_errors

    # They live as long as the process, as Python's own do: no context managers.
    encoding, errors = setting(0, "strict")
    sys.stdin = open(0, encoding=encoding, errors=errors, closefd=False)  # noqa: SIM115
    encoding, errors = setting(1, "strict")
    line = 1 if os.isatty(1) else -1
    sys.stdout = open(  # noqa: SIM115
        1, "w", buffering=line, encoding=encoding, errors=errors, closefd=False
    )
    encoding, errors = setting(2, "backslashreplace")
    sys.stderr = open(  # noqa: SIM115
        2, "w", buffering=1, encoding=encoding, errors=errors, closefd=False
    )


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
