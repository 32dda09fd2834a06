"""Issue 16, item 4: a database outage while a job finishes is transient, never a stuck job.

The worker's pipeline re-raises a lost database (it used to fail the job as internal_error, or, with
the database still down, let the error escape so Celery acked the message and the row stayed running);
the task keeps its claim and retries, and when it gives up the lease runs out and the reconciler
recovers the job. Real PostgreSQL (the job's rows) and a real dead endpoint (the outage)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from services.reconciler.reconcile import reconcile_once
from shared.platform.db import Database
from shared.platform.models import Job, utcnow
from shared.platform.processes import free_ports
from shared.platform.settings import get_settings
from shared.platform.tempdb import temp_postgres_database
from tests.support.factories import make_job_for_tests

pytestmark = pytest.mark.integration


def database_down() -> OperationalError:
    """The error a real connection to a PostgreSQL that is not there raises."""
    dead = Database(f"postgresql+psycopg://goha:goha@127.0.0.1:{free_ports(1)[0]}/goha")
    try:
        with dead.session() as session:
            session.get(Job, "x")
    except OperationalError as exc:
        return exc
    finally:
        dead.dispose()
    raise AssertionError("the dead endpoint answered")


@pytest.fixture
def db() -> Iterator[Database]:
    with temp_postgres_database("goha_outage") as url:
        database = Database(url)
        yield database
        database.dispose()


def test_the_pipeline_hands_a_lost_database_back_instead_of_failing_the_job() -> None:
    from services.worker.options import JobOptions
    from services.worker.pipeline import JobInputs, ReenactmentPipeline, RunStats

    failed: list[str] = []

    class Finishing:
        def _execute(self, *_: Any) -> None:  # the upload is done; recording it hits the outage
            raise database_down()

        def fail_job(self, job_id: str, code: str, message: str) -> str:
            failed.append(code)
            return "failed"

    inputs = JobInputs(
        job_id="j",
        tenant_id="t",
        job_type="reenact",
        options=JobOptions(),
        portrait_key="k",
        portrait_sha256="0" * 64,
        driving_key=None,
        driving_sha256=None,
    )
    with pytest.raises(OperationalError):
        ReenactmentPipeline._run_claimed(Finishing(), inputs, RunStats())  # type: ignore[arg-type]
    assert failed == []  # not failed as internal_error: retried


@dataclass
class _Ctx:
    session_factory: Any
    storage: Any


def test_the_task_keeps_the_job_recoverable_when_the_database_stays_down(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOHA_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("GOHA_WORKER_RETRIES", "0")  # give up at once: the outage outlasts the budget
    get_settings.cache_clear()
    import services.worker.tasks as tasks
    from shared.platform.storage import LocalStorage

    with db.session() as session:
        job_id = make_job_for_tests(session).id

    class Pipeline:
        ctx = _Ctx(db.sessionmaker, LocalStorage(tmp_path / "storage"))

        def run(self, job_id: str) -> str:
            raise database_down()  # e.g. _succeed's commit

        def fail_job(self, job_id: str, code: str, message: str) -> str:
            raise database_down()  # still down when the task gives up

    monkeypatch.setattr(tasks, "get_pipeline", lambda: Pipeline())
    try:
        result = tasks.reenact.apply(args=[job_id])
        assert result.successful(), result.traceback  # not an error Celery acks and forgets
        assert result.get() == "abandoned"
    finally:
        get_settings.cache_clear()

    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "running" and job.owner_id is not None
        assert job.lease_expires_at is not None  # so the reconciler can tell when it is stuck
        session.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    published: list[str] = []
    report = reconcile_once(db, published.append, stale_after_s=300, max_enqueues=3, max_attempts=3)
    assert report.recovered == [job_id] and published == [job_id]
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "queued"
