"""Fixtures of the observability tests: migrated databases on both dialects and a job factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.platform.db import Database
from shared.platform.jobs import JobState, transition
from shared.platform.migrate import upgrade
from shared.platform.models import Job
from tests.support.factories import make_job_for_tests


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'goha.sqlite3'}"
    upgrade(url)
    db = Database(url)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def any_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """A migrated database on each dialect the platform supports (PostgreSQL: a fresh one per session)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_db")
        return
    db = Database(request.getfixturevalue("goha_postgres_url"))
    try:
        yield db
    finally:
        db.dispose()


MakeJobs = Callable[[Database, JobState, int], list[str]]

# The legal path from queued to each state (shared.platform.jobs.LEGAL_TRANSITIONS).
PATHS: dict[JobState, tuple[JobState, ...]] = {
    JobState.QUEUED: (),
    JobState.RUNNING: (JobState.RUNNING,),
    JobState.SUCCEEDED: (JobState.RUNNING, JobState.SUCCEEDED),
    JobState.FAILED: (JobState.RUNNING, JobState.FAILED),
    JobState.CANCELLED: (JobState.CANCELLED,),
}


def make_jobs(db: Database, state: JobState, count: int) -> list[str]:
    """``count`` jobs moved through the state machine to ``state``."""
    ids = []
    for _ in range(count):
        with db.session() as session:
            job = make_job_for_tests(session)
            for step in PATHS[state]:
                transition(session, job, step, error_code="test_failure" if step is JobState.FAILED else None)
            ids.append(job.id)
    return ids


@pytest.fixture
def jobs_in() -> MakeJobs:
    return make_jobs


def count_jobs(db: Database) -> dict[str, int]:
    from sqlalchemy import func, select

    with db.session() as session:
        return {s: int(n) for s, n in session.execute(select(Job.state, func.count()).group_by(Job.state))}
