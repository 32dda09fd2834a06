"""Throwaway PostgreSQL databases: ``temp_postgres_database`` makes a fresh one (``goha_test_<random>``),
migrated to head with Alembic, and drops it afterwards. The gateway benchmark runs on one; so do the
test suites. The server with the rights to create databases is ``GOHA_TEST_PG_ADMIN_URL`` (default:
the local ``postgres`` superuser on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def pg_admin_url() -> str:
    return os.environ.get("GOHA_TEST_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL)


def create_database(prefix: str = "goha_test", admin_url: str | None = None) -> str:
    """Create an empty database with a random name; returns its SQLAlchemy URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url or pg_admin_url())
    name = f"{prefix}_{secrets.token_hex(5)}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return admin.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str, admin_url: str | None = None) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    engine = create_engine(make_url(admin_url or pg_admin_url()), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@contextlib.contextmanager
def temp_postgres_database(prefix: str = "goha_test", *, migrate: bool = True) -> Iterator[str]:
    """A fresh database migrated to head (unless ``migrate=False``), dropped on exit."""
    url = create_database(prefix)
    try:
        if migrate:
            from shared.platform.migrate import upgrade

            upgrade(url)
        yield url
    finally:
        drop_database(url)
