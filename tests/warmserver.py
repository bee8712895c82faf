"""A warm controller for one test: `runbook-exec warm start --foreground` on a socket of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import wait_until
from runbook_exec.warm import ask

BIN = Path(sys.executable).parent


class WarmController:
    def __init__(self, folder: Path, *args: str) -> None:
        self.folder = folder
        self.socket = folder / "warm.sock"
        self.args = args
        self.env = {"RUNBOOK_EXEC_NO_WARM": "", "RUNBOOK_EXEC_WARM_SOCKET": str(self.socket)}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WarmController:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.folder / "controller.log", "wb") as log:
            self.process = subprocess.Popen(
                [str(BIN / "runbook-exec"), "warm", "start", "--foreground", *self.args],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process = self.process
        wait_until(lambda: self.status() is not None or process.poll() is not None, 60)
        if process.poll() is not None:
            raise RuntimeError(f"the warm controller did not start:\n{self.log()}")
        return self

    def status(self) -> dict[str, Any] | None:
        return ask("status", str(self.socket))

    def served(self) -> int:
        status = self.status()
        assert status is not None, f"the warm controller is not running:\n{self.log()}"
        return int(status["served"])

    def log(self) -> str:
        path = self.folder / "controller.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def __enter__(self) -> WarmController:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
