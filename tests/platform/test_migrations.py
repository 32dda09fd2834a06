"""One set of migrations builds the same schema on PostgreSQL and SQLite, and undoes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from shared.platform.db import Database, make_engine
from shared.platform.migrate import current_revision, downgrade, head_revision, upgrade
from shared.platform.models import Base
from shared.platform.tempdb import temp_postgres_database

TABLES = {"tenants", "api_keys", "assets", "jobs", "job_events", "provenance_records", "audit_log"}


def _check_cycle(url: str) -> None:
    upgrade(url)
    assert current_revision(url) == head_revision()
    engine = make_engine(url)
    try:
        assert TABLES <= set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            diff = compare_metadata(
                MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
            )
        assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        engine.dispose()
    downgrade(url, "base")
    assert current_revision(url) is None
    engine = make_engine(url)
    try:
        assert not TABLES & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    upgrade(url)  # and up again: the downgrade left nothing behind (functions, triggers)
    assert current_revision(url) == head_revision()


@pytest.mark.integration
def test_postgres_upgrade_downgrade_upgrade() -> None:
    with temp_postgres_database("goha_migr", migrate=False) as url:
        _check_cycle(url)


def test_sqlite_upgrade_downgrade_upgrade(tmp_path: Path) -> None:
    _check_cycle(f"sqlite:///{tmp_path / 'm.sqlite3'}")


@pytest.mark.parametrize("table", ["audit_log", "job_events"])
def test_append_only_tables_refuse_update_and_delete(any_db: Database, table: str) -> None:
    from shared.platform import repository
    from shared.platform.jobs import JobState, record_event
    from tests.support.factories import make_job_for_tests

    with any_db.session() as session:
        if table == "audit_log":
            entry = repository.audit(session, actor="test", action="test.append_only")
            session.flush()
            row_id = entry.id
        else:
            job = make_job_for_tests(session)
            event = record_event(session, job, JobState.QUEUED, JobState.RUNNING, reason="test")
            session.flush()
            row_id = event.id
    for statement in (
        f"UPDATE {table} SET details = details WHERE id = :id",
        f"DELETE FROM {table} WHERE id = :id",
    ):
        with pytest.raises(DBAPIError) as caught, any_db.session() as session:
            session.execute(text(statement), {"id": row_id})
        assert "append-only" in str(caught.value)
