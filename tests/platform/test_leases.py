"""Issue 16, items 3 and 4: a job runs under one lease at a time, a backlog is not a lost message, a
dead worker's job is recovered (or failed as worker_crashed after N starts), and a superseded worker
never overwrites a finished result. Real PostgreSQL, Redis (the Celery broker) and SeaweedFS."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import update

from services.reconciler.reconcile import reconcile_once
from services.worker.reference import run_reference_job
from shared.platform.db import Database
from shared.platform.errors import IllegalTransition
from shared.platform.jobs import (
    WORKER_CRASHED,
    ClaimOutcome,
    JobState,
    claim,
    holding_claim,
    transition,
)
from shared.platform.leases import (
    claim_job,
    discard_unrecorded_result,
    leased,
    new_owner_id,
    result_object_name,
)
from shared.platform.metrics import JobStateCollector
from shared.platform.models import Job, utcnow
from shared.platform.queue import REENACT_TASK, enqueue_job, make_celery, pending_job_ids
from shared.platform.settings import Settings
from shared.platform.storage import make_storage, output_key
from shared.platform.tempdb import temp_postgres_database
from tests.support.factories import make_job_for_tests

pytestmark = pytest.mark.integration


@pytest.fixture
def db() -> Iterator[Database]:
    with temp_postgres_database("goha_lease") as url:  # its own database: the reconciler scans all jobs
        database = Database(url)
        yield database
        database.dispose()


@pytest.fixture
def celery_app(goha_redis_url: str, goha_queue_name: str) -> Iterator[Celery]:
    queue = f"{goha_queue_name}-lease"
    app = make_celery(Settings(broker_url=goha_redis_url, result_backend=goha_redis_url, queue_name=queue))
    client = redis.Redis.from_url(goha_redis_url)
    client.delete(queue)
    yield app
    client.delete(queue)
    client.close()


def _queued_messages(app: Celery, redis_url: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(app.conf.task_default_queue, 0, -1)
    finally:
        client.close()
    messages = [json.loads(m) for m in raw]
    assert all(m["headers"]["task"] == REENACT_TASK for m in messages)
    return sorted(json.loads(m["headers"]["argsrepr"].replace("'", '"'))[0] for m in messages)


def _job(db: Database, **values: Any) -> str:
    with db.session() as session:
        job = make_job_for_tests(session)
        session.flush()
        job_id = job.id
    if values:
        with db.session() as session:
            session.execute(update(Job).where(Job.id == job_id).values(**values))
    return job_id


def _get(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _expire(db: Database, job_id: str) -> None:
    with db.session() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )


def _reconcile(db: Database, app: Celery, **kwargs: Any) -> Any:
    return reconcile_once(
        db,
        lambda job_id: enqueue_job(job_id, app),
        stale_after_s=300,
        max_enqueues=3,
        pending=lambda: pending_job_ids(app),
        **kwargs,
    )


def test_a_backlogged_job_is_neither_republished_nor_failed(
    db: Database, celery_app: Celery, goha_redis_url: str
) -> None:
    # Published long ago, as often as the limit allows, and still waiting in the broker's queue.
    waiting = _job(db, enqueued_at=utcnow() - dt.timedelta(hours=2), enqueue_count=3)
    enqueue_job(waiting, celery_app)
    lost = _job(db, enqueued_at=utcnow() - dt.timedelta(hours=2), enqueue_count=1)  # no message anywhere

    report = _reconcile(db, celery_app)

    assert report.waiting == [waiting] and report.failed == []
    assert report.requeued == [lost]
    assert _queued_messages(celery_app, goha_redis_url) == sorted([waiting, lost])  # one message each
    assert _get(db, waiting).state == "queued" and _get(db, waiting).enqueue_count == 3


def test_a_running_job_under_a_live_lease_is_not_run_by_a_second_delivery(db: Database) -> None:
    job_id = _job(db)
    first, second = new_owner_id(), new_owner_id()
    assert claim_job(db.sessionmaker, job_id, first, lease_s=60, max_attempts=3) is ClaimOutcome.CLAIMED
    assert claim_job(db.sessionmaker, job_id, second, lease_s=60, max_attempts=3) is ClaimOutcome.BUSY
    # ...and the reference worker (what the gateway tests run) skips it the same way.
    assert run_reference_job(job_id, Settings(), db=db) == "skipped"
    job = _get(db, job_id)
    assert (job.state, job.owner_id, job.attempts) == ("running", first, 1)
    # The same claim's own retry resumes it.
    assert claim_job(db.sessionmaker, job_id, first, lease_s=60, max_attempts=3) is ClaimOutcome.RESUMED


def test_an_expired_lease_is_recovered_and_the_old_worker_cannot_finish(
    db: Database, celery_app: Celery, goha_redis_url: str
) -> None:
    job_id = _job(db)
    dead = new_owner_id()
    assert claim_job(db.sessionmaker, job_id, dead, lease_s=60, max_attempts=3) is ClaimOutcome.CLAIMED
    _expire(db, job_id)  # the worker stopped renewing (killed, hung, lost the database)

    report = _reconcile(db, celery_app)

    assert report.recovered == [job_id]
    assert _queued_messages(celery_app, goha_redis_url) == [job_id]
    assert _get(db, job_id).state == "queued"
    fresh = new_owner_id()
    assert claim_job(db.sessionmaker, job_id, fresh, lease_s=60, max_attempts=3) is ClaimOutcome.CLAIMED
    assert _get(db, job_id).attempts == 2
    # The first worker wakes up and tries to finish: fenced on its claim, refused.
    with db.session() as session, holding_claim(dead):
        job = session.get(Job, job_id)
        assert job is not None
        with pytest.raises(IllegalTransition):
            transition(session, job, JobState.SUCCEEDED)
    assert _get(db, job_id).state == "running"


def test_a_job_whose_workers_keep_dying_fails_as_worker_crashed(db: Database, celery_app: Celery) -> None:
    in_reconciler = _job(db)
    for _ in range(3):  # three starts, each worker killed: the lease runs out each time
        claim_job(db.sessionmaker, in_reconciler, new_owner_id(), lease_s=60, max_attempts=3)
        _expire(db, in_reconciler)
        if _get(db, in_reconciler).attempts < 3:
            _reconcile(db, celery_app)
    report = _reconcile(db, celery_app)
    assert report.crashed == [in_reconciler]
    job = _get(db, in_reconciler)
    assert (job.state, job.error_code) == ("failed", WORKER_CRASHED)
    assert "3 times" in (job.error_message or "")

    # A redelivered message of a job that already used its attempts fails it instead of running it.
    at_claim = _job(db, attempts=3)
    assert (
        claim_job(db.sessionmaker, at_claim, new_owner_id(), lease_s=60, max_attempts=3)
        is ClaimOutcome.EXHAUSTED
    )
    assert _get(db, at_claim).error_code == WORKER_CRASHED


def test_a_superseded_worker_never_overwrites_the_finished_result(
    db: Database, goha_s3_settings: dict[str, Any]
) -> None:
    settings = Settings(**goha_s3_settings)
    storage = make_storage(settings)
    storage.ensure_bucket()  # type: ignore[attr-defined]
    job_id = _job(db)
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        tenant_id, portrait_key = job.tenant_id, job.portrait_asset.storage_key
    storage.put_bytes(portrait_key, b"portrait bytes", content_type="image/png")

    slow = new_owner_id()
    assert claim_job(db.sessionmaker, job_id, slow, lease_s=60, max_attempts=3) is ClaimOutcome.CLAIMED
    _expire(db, job_id)
    assert run_reference_job(job_id, settings, db=db, storage=storage) == "succeeded"  # took it over
    finished = _get(db, job_id)
    assert finished.state == "succeeded" and finished.attempts == 2
    recorded = storage.get_bytes(finished.result_key or "")

    # The slow worker finally uploads its output and tries to record it.
    slow_key = output_key(tenant_id, job_id, result_object_name(slow))
    assert slow_key != finished.result_key
    storage.put_bytes(slow_key, b"stale output", content_type="video/mp4")
    with leased(db.sessionmaker, job_id, slow, lease_s=60), db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        with pytest.raises(IllegalTransition):
            transition(session, job, JobState.FAILED, error_code="internal_error")
    assert discard_unrecorded_result(db.sessionmaker, storage, job_id, slow)
    assert not storage.exists(slow_key)
    after = _get(db, job_id)
    assert (after.state, after.result_key, after.result_sha256) == (
        "succeeded",
        finished.result_key,
        finished.result_sha256,
    )
    assert storage.get_bytes(after.result_key or "") == recorded


def test_a_live_heartbeat_keeps_the_reconciler_away(db: Database, celery_app: Celery) -> None:
    job_id = _job(db)
    owner = new_owner_id()
    claim_job(db.sessionmaker, job_id, owner, lease_s=0.4, max_attempts=3)
    with leased(db.sessionmaker, job_id, owner, lease_s=0.4) as beat:
        time.sleep(1.0)  # 2.5 leases long: only the heartbeat keeps it alive
        report = _reconcile(db, celery_app)
        assert report.recovered == [] and not beat.lost.is_set()
    assert _get(db, job_id).owner_id == owner


def test_stuck_running_jobs_are_exported_for_the_alert(db: Database) -> None:
    job_id = _job(db)
    claim_job(db.sessionmaker, job_id, new_owner_id(), lease_s=60, max_attempts=3)
    collector = JobStateCollector(db.sessionmaker, min_interval_s=0)
    samples = {f.name: f.samples for f in collector.collect()}
    assert samples["goha_running_jobs_lease_expired"][0].value == 0
    _expire(db, job_id)
    samples = {f.name: f.samples for f in collector.collect()}
    assert samples["goha_running_jobs_lease_expired"][0].value == 1


def test_claim_is_a_compare_and_swap(db: Database) -> None:
    """Two claims racing on an expired lease: one takes the job over, the other is told it is busy."""
    job_id = _job(db)
    claim_job(db.sessionmaker, job_id, new_owner_id(), lease_s=60, max_attempts=3)
    _expire(db, job_id)
    with db.session() as first, db.session() as second:
        a, _ = claim(first, job_id, "a:1:aaaa", lease_s=60, max_attempts=5)
        first.commit()
        b, _ = claim(second, job_id, "b:1:bbbb", lease_s=60, max_attempts=5)
    assert (a, b) == (ClaimOutcome.TAKEN_OVER, ClaimOutcome.BUSY)
    assert _get(db, job_id).owner_id == "a:1:aaaa"


def test_a_redelivery_takes_over_at_once_from_a_dead_worker_process_of_this_host(db: Database) -> None:
    """A worker child killed mid-job (Celery redelivers its task at once): its lease is still alive,
    but its process is gone, so the redelivery takes the job over instead of leaving it idle until
    the lease runs out. A live owner, or one on another host, keeps the job."""
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead_owner = f"{socket.gethostname()[:64]}:{gone.pid}:deadbeef"
    live_owner = f"{socket.gethostname()[:64]}:{os.getpid()}:cafebabe"
    elsewhere = f"another-host:{gone.pid}:0badf00d"
    lease = utcnow() + dt.timedelta(seconds=600)
    for owner, expected in (
        (dead_owner, ClaimOutcome.TAKEN_OVER),
        (live_owner, ClaimOutcome.BUSY),
        (elsewhere, ClaimOutcome.BUSY),
    ):
        job_id = _job(db, state="running", owner_id=owner, lease_expires_at=lease, attempts=1)
        new_owner = new_owner_id()
        assert claim_job(db.session, job_id, new_owner, lease_s=120, max_attempts=3) is expected
        assert _get(db, job_id).owner_id == (new_owner if expected is ClaimOutcome.TAKEN_OVER else owner)
