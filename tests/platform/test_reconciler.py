"""The reconciler re-publishes jobs stuck in `queued` to the real Redis broker."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from prometheus_client import REGISTRY

from services.reconciler.reconcile import QUEUE_TIMEOUT, reconcile_once
from shared.platform.db import Database
from shared.platform.jobs import JobState, transition
from shared.platform.models import Job, utcnow
from shared.platform.queue import REENACT_TASK, enqueue_job, make_celery
from shared.platform.settings import Settings
from shared.platform.tempdb import temp_postgres_database
from tests.support.factories import make_job_for_tests

pytestmark = pytest.mark.integration


@pytest.fixture
def db() -> Iterator[Database]:
    with temp_postgres_database("goha_recon") as url:  # its own database: the reconciler scans all jobs
        database = Database(url)
        yield database
        database.dispose()


@pytest.fixture
def celery_app(goha_redis_url: str, goha_queue_name: str) -> Iterator[Celery]:
    queue = f"{goha_queue_name}-recon"
    app = make_celery(Settings(broker_url=goha_redis_url, result_backend=goha_redis_url, queue_name=queue))
    client = redis.Redis.from_url(goha_redis_url)
    client.delete(queue)
    yield app
    client.delete(queue)
    client.close()


def _queued_job_ids(app: Celery, redis_url: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        messages = [json.loads(raw) for raw in client.lrange(app.conf.task_default_queue, 0, -1)]
    finally:
        client.close()
    assert all(m["headers"]["task"] == REENACT_TASK for m in messages)
    return sorted(json.loads(m["headers"]["argsrepr"].replace("'", '"'))[0] for m in messages)


def _make(
    db: Database, *, enqueued_ago_s: float | None, enqueue_count: int = 1, running: bool = False
) -> str:
    with db.session() as session:
        job = make_job_for_tests(session)
        job.enqueued_at = None if enqueued_ago_s is None else utcnow() - dt.timedelta(seconds=enqueued_ago_s)
        job.enqueue_count = enqueue_count
        if running:
            session.flush()
            transition(session, job, JobState.RUNNING)
        return job.id


def test_stuck_jobs_are_republished_and_hopeless_ones_fail(
    db: Database, celery_app: Celery, goha_redis_url: str
) -> None:
    fresh = _make(db, enqueued_ago_s=5)
    stale = _make(db, enqueued_ago_s=3600)
    never_published = _make(db, enqueued_ago_s=None)
    running = _make(db, enqueued_ago_s=3600, running=True)
    hopeless = _make(db, enqueued_ago_s=3600, enqueue_count=3)

    report = reconcile_once(
        db, lambda job_id: enqueue_job(job_id, celery_app), stale_after_s=300, max_enqueues=3
    )

    assert sorted(report.requeued) == sorted([stale, never_published])
    assert report.failed == [hopeless] and report.publish_errors == []
    assert _queued_job_ids(celery_app, goha_redis_url) == sorted([stale, never_published])
    with db.session() as session:
        jobs = {
            job_id: session.get(Job, job_id) for job_id in (fresh, stale, never_published, running, hopeless)
        }
        assert jobs[stale].enqueue_count == 2 and jobs[stale].state == "queued"  # type: ignore[union-attr]
        assert jobs[never_published].enqueued_at is not None  # type: ignore[union-attr]
        assert jobs[fresh].enqueue_count == 1 and jobs[running].state == "running"  # type: ignore[union-attr]
        assert (jobs[hopeless].state, jobs[hopeless].error_code) == ("failed", QUEUE_TIMEOUT)  # type: ignore[union-attr]

    # A second pass right away finds nothing new to do.
    again = reconcile_once(
        db, lambda job_id: enqueue_job(job_id, celery_app), stale_after_s=300, max_enqueues=3
    )
    assert again.requeued == [] and again.failed == []


def _queue_timeout_failures() -> float:
    return REGISTRY.get_sample_value("goha_job_failures_total", {"code": QUEUE_TIMEOUT}) or 0.0


def test_queue_timeout_failures_are_counted_once(db: Database, celery_app: Celery) -> None:
    hopeless = [_make(db, enqueued_ago_s=3600, enqueue_count=3) for _ in range(2)]
    stale = _make(db, enqueued_ago_s=3600)  # re-published, not failed: not a failure
    before = _queue_timeout_failures()

    report = reconcile_once(
        db, lambda job_id: enqueue_job(job_id, celery_app), stale_after_s=300, max_enqueues=3
    )

    assert sorted(report.failed) == sorted(hopeless) and report.requeued == [stale]
    assert _queue_timeout_failures() == before + 2
    # The failed jobs are no longer queued: a second pass neither fails nor counts them again.
    reconcile_once(db, lambda job_id: enqueue_job(job_id, celery_app), stale_after_s=300, max_enqueues=3)
    assert _queue_timeout_failures() == before + 2


def test_broker_down_leaves_the_job_for_the_next_pass(db: Database, goha_queue_name: str) -> None:
    dead = make_celery(
        Settings(
            broker_url="redis://127.0.0.1:1/0",
            result_backend="redis://127.0.0.1:1/0",
            queue_name=goha_queue_name,
            broker_connect_timeout_s=0.5,
        )
    )
    job_id = _make(db, enqueued_ago_s=None)
    report = reconcile_once(db, lambda j: enqueue_job(j, dead), stale_after_s=300, max_enqueues=5)
    assert report.publish_errors == [job_id] and report.requeued == []
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "queued" and job.enqueued_at is None  # still due
