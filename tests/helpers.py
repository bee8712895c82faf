"""Small helpers the tests share."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from pgserver import server_binaries
from runbook_exec.store import engine_url
from runbook_exec.testing.lab import SshLab


def wait_until(condition: Callable[[], bool], seconds: float = 30) -> None:
    """Poll `condition` until it holds; fail the test if it does not within `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds}s")
        time.sleep(0.05)


def query(url: str, statement: str, **params: Any) -> list[dict[str, Any]]:
    """Run one SQL statement against a state store (SQLite or PostgreSQL) as another process
    would, outside runbook-exec; returns the rows of a SELECT, or [] for a change."""
    engine = create_engine(engine_url(url))
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return [dict(row._mapping) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def assert_nowhere_in_store(url: str, secret: bytes) -> None:
    """`secret` is in no file of the store, as it lies on disk: SQLite's database and WAL, or
    every file of the PostgreSQL cluster (tables, indexes, WAL) after a checkpoint, and in
    none of the database's rows as `pg_dump` prints them (values PostgreSQL compressed on
    disk are read back as text there)."""
    if url.startswith("sqlite:///"):
        database = Path(url.removeprefix("sqlite:///"))
        files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    else:
        query(url, "CHECKPOINT")
        folder = Path(str(query(url, "SHOW data_directory")[0]["data_directory"]))
        files = [p for p in folder.rglob("*") if p.is_file()]
        dump = subprocess.run(
            [str(server_binaries() / "pg_dump"), "--data-only", url],  # type: ignore[operator]
            capture_output=True,
            check=True,
        )
        assert secret not in dump.stdout, "in a row of the PostgreSQL database"
    found = [f for f in files if f.exists() and secret in f.read_bytes()]
    assert not found, f"the secret is in {found}"


def on_a_terminal(
    command: list[str],
    cwd: Path,
    env: dict[str, str],
    answer: bytes | None = None,
    prompt: bytes = b"[y/N]",
) -> tuple[int, bytes, bool]:
    """Run `command` on a real pseudo-terminal until it exits: its exit code, all it wrote
    there, and whether `answer` was typed (once, at the first `prompt`)."""
    import os
    import pty
    import select

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        command, stdin=terminal, stdout=terminal, stderr=terminal, cwd=cwd, env=env
    )
    os.close(terminal)
    seen = b""
    answered = False
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                seen += os.read(controller, 65536)
            except OSError:
                break
        if answer is not None and not answered and prompt in seen:
            os.write(controller, answer)
            answered = True
    process.wait(timeout=30)
    with contextlib.suppress(OSError):
        seen += os.read(controller, 65536)
    os.close(controller)
    return process.returncode, seen, answered


CHROMIUM_ARGS = [
    "--headless=new",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


@contextlib.contextmanager
def chromium_browser() -> Iterator[Any]:
    """Debian's Chromium, driven by Playwright (its own browser download is never used):
    skipped where either is missing, except in CI, which installs both."""
    import os
    import shutil

    import pytest

    executable = os.environ.get("RBX_CHROMIUM") or shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        message = "needs Debian's chromium and playwright: `scripts/setup --with-browser`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def apps(hosts: SshLab) -> str:
    """Each host's sample app as the host has it: its pid file, whether that process runs,
    its port, and the end of its log."""
    lines = []
    for host in hosts.hosts:
        folder = host.root / "app"
        pid = (folder / "app.pid").read_text().strip() if (folder / "app.pid").exists() else ""
        running = bool(pid) and Path(f"/proc/{pid}").exists()
        log = (folder / "app.log").read_text()[-400:] if (folder / "app.log").exists() else ""
        lines.append(
            f"{host.name}: port {host.app_port}, pid {pid or '-'} running={running}: {log!r}"
        )
    return "\n".join(lines)
