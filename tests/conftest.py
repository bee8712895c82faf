"""Fixtures named for what they give: real sshd hosts (`lab`, `hosts`), a real PostgreSQL
server (`postgres`), a state store URL on either backend (`db_url`), files to feed the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgserver import PostgresServer, server_binaries
from runbook_exec.testing.lab import SshLab
from warmserver import WarmController

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Commands start cold unless a test asks for a warm controller (`launch`): a developer's own
# `runbook-exec warm start` must not serve the suite.
os.environ["RUNBOOK_EXEC_NO_WARM"] = "1"
# Audit keys made for new stores go to a folder of the suite's own, not the user's.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="rbx-test-config-")
# So do stores opened without --db (the default is per user, not per folder).
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="rbx-test-state-")


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLab]:
    """Six real sshd hosts on loopback, in groups web (all), dc1 (1-3) and dc2 (4-6)."""
    with SshLab() as started:
        started.start(
            6,
            prefix="web",
            groups={
                "web": [f"web{i}" for i in range(1, 7)],
                "dc1": ["web1", "web2", "web3"],
                "dc2": ["web4", "web5", "web6"],
            },
        )
        yield started


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on a loopback port, for the whole session."""
    binaries = server_binaries()
    if binaries is None:
        message = "PostgreSQL is not installed: `scripts/setup --with-postgres` installs it"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must test both backends, never skip one
        pytest.skip(message)
    server = PostgresServer(binaries).start()
    yield server
    server.stop()


BACKENDS = ["sqlite", "postgresql"]
# For ("db_url", "launch"): both backends, and the warm controller on one of them.
BACKENDS_AND_WARM = [("sqlite", "cold"), ("postgresql", "cold"), ("sqlite", "warm")]


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The state store for one test: a SQLite file in its directory, or, when parametrized
    with "postgresql" (`indirect=True`), a fresh database on the session's server."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    # A shared store is keyed with a key every machine of the team is given.
    key = tmp_path / "team-audit.key"
    key.write_text("the-teams-shared-audit-key\n")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("RUNBOOK_EXEC_AUDIT_KEY_FILE", str(key))
    name = server.new_database()
    yield server.url(name)
    server.drop_database(name)


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a file under the test's own directory and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return _write


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed `runbook-exec` command as a user would, in the test's directory."""

    def _run(
        *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "runbook-exec"), *map(str, args)],
            capture_output=True,
            text=True,
            cwd=cwd or tmp_path,
            timeout=120,
            env={
                **os.environ,
                "COLUMNS": "200",
                "XDG_STATE_HOME": str(tmp_path / ".state"),  # each test its own default store
                **(env or {}),
            },
        )

    return _run


@pytest.fixture(params=["cold"])
def launch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment `runbook-exec` starts in: as installed ("cold"), or, parametrized
    with "warm" (`indirect=True`), through a warm controller started for the test, which
    must have served commands and refused none by the end."""
    if request.param == "cold":
        yield {}
        return
    with WarmController(tmp_path / "warm") as warm:
        yield warm.env
        assert warm.served() > 0, "no command went through the warm controller"
    assert "warm: refused:" not in warm.log(), warm.log()


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[SshLab]:
    """Four fresh sshd hosts (host1..host4, group `app`) for a test that changes them."""
    with SshLab() as started:
        started.start(4, groups={"app": ["host1", "host2", "host3", "host4"]})
        yield started


@pytest.fixture
def runbook_exec(
    tmp_path: Path, hosts: SshLab, db_url: str, launch: dict[str, str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`runbook-exec` against the `hosts` lab: its inventory, known_hosts and a test database.
    Pass a command and its arguments; `-i`/`--known-hosts`/`--db` are added where they fit.
    Started as `launch` says: cold, or through a warm controller."""
    db = db_url
    base_env = {**os.environ, "COLUMNS": "200", **launch}

    def argv(command: str, args: tuple[str | Path, ...]) -> list[str]:
        extra: list[str] = ["--db", db]
        if command == "run":
            extra += hosts.cli_args()
        return [str(BIN / "runbook-exec"), command, *map(str, args), *extra]

    def _run(
        command: str, *args: str | Path, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv(command, args),
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=timeout,
            env={**base_env, **(env or {})},
        )

    def spawn(
        command: str, *args: str | Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """The same command in the background, for tests that kill or race it."""
        return subprocess.Popen(
            argv(command, args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env={**base_env, **(env or {})},
        )

    _run.db = db  # type: ignore[attr-defined]
    _run.spawn = spawn  # type: ignore[attr-defined]
    _run.env = base_env  # type: ignore[attr-defined]
    return _run
