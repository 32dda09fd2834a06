"""The Celery task's retry budget (``Settings.worker_retries``): a transient failure that outlasts
it fails the job with the failure's code instead of retrying forever or failing at once. And the
task leaves job-finished webhooks to the dispatcher.

The object store is a dead endpoint (nothing listens on the port), so every attempt fails the way an
S3 outage does; the task runs eagerly (``apply``), which replays Celery's retries in-process.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from services.inference.server import free_port
from services.worker.pipeline import ReenactmentPipeline
from shared.platform.db import Database
from shared.platform.models import Job
from shared.platform.settings import Settings, get_settings
from shared.platform.storage import S3Storage
from tests.support.factories import make_job_for_tests


def test_retry_delay_doubles_up_to_the_cap() -> None:
    from services.worker.tasks import retry_delay

    assert [retry_delay(attempt, 60.0) for attempt in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert retry_delay(10_000, 5.0) == 5.0  # no overflow on absurd budgets


@pytest.mark.slow  # builds the worker's context (torch, the tiny network, a dev C2PA chain)
@pytest.mark.parametrize("retries", [0, 2])
def test_a_storage_outage_is_retried_until_the_budget_then_fails_the_job(
    worker_env: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, retries: int
) -> None:
    import services.worker.tasks as tasks

    monkeypatch.setenv("GOHA_WORKER_RETRIES", str(retries))
    get_settings.cache_clear()
    dead_s3 = S3Storage(f"127.0.0.1:{free_port()}", "key", "secret", "goha")
    outage = ReenactmentPipeline(dataclasses.replace(tasks.get_pipeline().ctx, storage=dead_s3))
    monkeypatch.setattr(tasks, "_pipeline", outage)
    db = Database.from_settings(get_settings())
    try:
        with db.session() as session:
            job_id = make_job_for_tests(session).id

        with caplog.at_level(logging.WARNING, logger="goha.worker"):
            state = tasks.reenact.apply(args=[job_id]).get()

        assert state == "failed"
        with db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None and job.state == "failed"
            assert job.error_code == "storage_unavailable"
            assert job.error_message.startswith(f"gave up after {retries} retries: ")
        retried = [r for r in caplog.records if r.getMessage() == "transient failure, retrying"]
        assert [r.retry for r in retried] == list(range(1, retries + 1))
    finally:
        db.dispose()


@pytest.mark.slow  # builds the worker's context
def test_the_task_never_calls_the_webhook_the_dispatcher_does(worker_env: Settings) -> None:
    """A job that fails at its first stage (the portrait is not an image): the worker's task finishes
    without calling the receiver (issue 16, item 5: no receiver can hold a worker); the dispatcher's
    pass (reconciler, goha up) delivers it."""
    import json

    import services.worker.tasks as tasks
    from shared.platform import repository, webhooks
    from shared.platform.models import Tenant
    from shared.platform.storage import LocalStorage
    from tests.webhook_receiver import webhook_receiver

    db = Database.from_settings(get_settings())
    try:
        with webhook_receiver() as receiver:
            with db.session() as session:
                job = make_job_for_tests(session)
                row, _ = repository.create_api_key(session, session.get(Tenant, job.tenant_id))
                job.api_key_id, job.callback_url = row.id, receiver.url
                job_id, key = job.id, job.portrait_asset.storage_key
            LocalStorage(worker_env.local_storage_dir).put_bytes(key, b"these bytes are not an image")

            assert tasks.reenact.apply(args=[job_id]).get() == "failed"
            assert receiver.requests == []
            assert webhooks.deliver_pending(db.sessionmaker, worker_env).delivered == [job_id]

        (request,) = receiver.requests
        body = json.loads(request.body)
        assert body["job_id"] == job_id and body["state"] == "failed"
        assert body["error"]["code"] == "image_unreadable"
        with db.session() as session:
            stored = session.get(Job, job_id)
            assert stored is not None and stored.callback_delivered_at is not None
    finally:
        db.dispose()
