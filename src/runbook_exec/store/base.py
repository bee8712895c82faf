"""The store's footing: opening a database (SQLite or PostgreSQL), migrating it, and the
transactions every write goes through. SQLAlchemy errors become `StoreError` here."""

from __future__ import annotations

import gc
import json
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..errors import StoreError
from .keys import KeyRing

MIGRATIONS = Path(__file__).parent / "migrations"


class StoreBase:
    """One database's connections and transactions; `Store` adds what is kept in it."""

    def __init__(self, engine: Engine, keys: KeyRing | None = None) -> None:
        self.engine = engine
        self.where = str(engine.url)  # for messages: the file, or the URL without password
        self.keys = keys if keys is not None else KeyRing.load()
        self._local = threading.local()

    @classmethod
    def open(cls, url: str, keys: KeyRing | None = None) -> Self:
        url = engine_url(url)
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            _private_file(Path(url.removeprefix("sqlite:///")))
        try:
            engine = create_engine(url, future=True, pool_pre_ping=url.startswith("postgresql"))
        except ImportError:
            raise StoreError(
                f"cannot open the state store {_safe_url(url)}: PostgreSQL needs the psycopg "
                "driver (pip install 'runbook-exec[postgres]')"
            ) from None
        except (SQLAlchemyError, ValueError) as exc:
            raise StoreError(f"cannot open the state store {_safe_url(url)}: {exc}") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
            # Take the write lock when a transaction begins: in WAL mode a transaction that
            # read first and then writes fails at once if another writer got in between.
            event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        store = cls(engine, keys)
        store.where = (
            _safe_url(url).removeprefix("sqlite:///").replace("postgresql+psycopg", "postgresql")
        )
        store.migrate()
        return store

    def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic is loaded only if needed)."""
        if self._schema_is_current():
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                # Two processes opening a new PostgreSQL database at once: one migrates, the
                # other waits here and then finds the schema current (SQLite's BEGIN
                # IMMEDIATE already serializes them).
                _serialize(connection, MIGRATION_LOCK)
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot prepare the state store: {first_line(exc)}") from None

    def _schema_is_current(self) -> bool:
        heads = {p.stem.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*.py")}
        newest = max(heads) if heads else None
        try:
            connection = self.engine.connect()
        except SQLAlchemyError as exc:
            where = _safe_url(self.engine.url.render_as_string(hide_password=False))
            raise StoreError(f"cannot reach the state store {where}: {first_line(exc)}") from None
        with connection:
            try:
                version = connection.exec_driver_sql(
                    "SELECT version_num FROM alembic_version"
                ).scalar()
            except SQLAlchemyError:
                return False  # a new database: no schema yet
        return version is not None and version == newest

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write in this block (in this thread) commits together, or not at all."""
        with self._tx() as connection:
            self._local.connection = connection
            try:
                yield
            finally:
                self._local.connection = None

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        shared = getattr(self._local, "connection", None)
        if shared is not None:
            yield shared
            return
        try:
            with self.engine.begin() as connection:
                yield connection
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"the state store could not be written: {first_line(exc)}") from None

    def _read(self, statement: Any) -> list[dict[str, Any]]:
        """The rows of a SELECT as dicts; inside a batch, on the batch's own connection
        (which sees its writes)."""
        shared = getattr(self._local, "connection", None)
        if shared is not None:
            result = shared.execute(statement)
            names = list(result.keys())
            return [dict(zip(names, row, strict=True)) for row in result]
        try:
            with gc_paused(), self.engine.connect() as connection:
                result = connection.execute(statement)
                names = list(result.keys())
                return [dict(zip(names, row, strict=True)) for row in result]
        except SQLAlchemyError as exc:
            raise StoreError(f"the state store could not be read: {first_line(exc)}") from None


# PostgreSQL advisory lock keys (any two fixed 64-bit numbers of our own).
CHAIN_LOCK = 0x7262_7861_7564_6974  # "rbxaudit": one appender at a time, so one chain
MIGRATION_LOCK = 0x7262_786D_6967_7261  # "rbxmigra"


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a block that makes many acyclic objects (rows,
    decoded events): its passes over them find nothing and cost as much as the work."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _serialize(connection: Connection, key: int) -> None:
    """On PostgreSQL, hold `key` until this transaction ends: writers take turns, as SQLite's
    BEGIN IMMEDIATE makes them. Without it two runs could read the same chain head, and
    one of them would lose a whole group commit to the primary key."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({key})")


def _private_file(path: Path) -> None:
    """The SQLite file made (or kept) for its owner only: it holds commands' output. Its
    folder is made 0700; SQLite gives its -wal and -shm files the file's mode."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            path.chmod(0o600)
    except OSError as exc:
        raise StoreError(f"cannot create the state store {path}: {exc.strerror}") from None


def engine_url(url: str) -> str:
    """SQLAlchemy's URL for ours: `postgresql://` and `postgres://` use psycopg (3)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


_JSON_FIELDS = ("params", "secret_names", "inventory", "plan", "options")


def _encode(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: json.dumps(value, sort_keys=True) if key in _JSON_FIELDS else value
        for key, value in record.items()
    }


def _decode(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: json.loads(value) if key in _JSON_FIELDS and value is not None else value
        for key, value in row.items()
    }


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    connection.isolation_level = None  # transactions begin with BEGIN IMMEDIATE (see open)
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def first_line(exc: BaseException) -> str:
    """The database's own message, without the SQL and parameters SQLAlchemy adds."""
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url
