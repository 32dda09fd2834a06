"""Engine and sessions for PostgreSQL (production, tests) and SQLite (embedded mode)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from shared.platform.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _prepare_sqlite_file(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def make_engine(
    database_url: str, *, pool_size: int = 5, max_overflow: int = 15, echo: bool = False
) -> Engine:
    """An engine with the per-dialect settings the platform relies on.

    SQLite: WAL so the gateway reads while a worker writes, foreign keys on, and a long busy timeout
    because gateway and worker are separate processes writing the same file.
    """
    kwargs: dict[str, Any] = {"echo": echo, "future": True}
    if database_url.startswith("sqlite"):
        _prepare_sqlite_file(database_url)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True)
    engine = create_engine(database_url, **kwargs)
    if engine.dialect.name == "sqlite":
        _install_sqlite_pragmas(engine)
    return engine


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling would defer BEGIN; take it over so that
        # "BEGIN IMMEDIATE" style locking and SAVEPOINTs behave as SQLAlchemy expects.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock up front: two processes upgrading a read lock to a write lock at the same
        # time is what makes SQLite answer "database is locked" despite the busy timeout.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """An engine and its session factory; one per process (create clients lazily after fork)."""

    def __init__(self, database_url: str, *, pool_size: int = 5, max_overflow: int = 15) -> None:
        self.url = database_url
        self.engine = make_engine(database_url, pool_size=pool_size, max_overflow=max_overflow)
        self.sessionmaker: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(
            settings.database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any exception."""
        session = self.sessionmaker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
