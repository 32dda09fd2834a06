"""Embedded mode: SQLite + Celery filesystem transport + local storage, nothing to install.
Also: a broker outage at submit time, healed by the reconciler; and the embedded worker thread the
rig runs leaves results joinable in the test process."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.reconciler.reconcile import reconcile_once
from services.worker.reference import register_reference_task
from shared.platform import admin
from shared.platform.db import Database
from shared.platform.models import Job
from shared.platform.queue import enqueue_job, make_celery
from shared.platform.settings import Settings
from tests.gateway.conftest import TenantKey, submit, wait_for_state
from tests.support.embedded_worker import embedded_worker


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[Settings, TestClient, TenantKey]]:
    settings = Settings(var_dir=tmp_path / "var", verifier="none")  # all defaults: the embedded mode
    app = create_app(settings)  # migrates the SQLite file on start
    db = Database(settings.database_url)
    tenant = admin.create_tenant(db, "solo")
    row, key = admin.create_key(db, tenant.id)
    db.dispose()
    with TestClient(app) as client:
        yield settings, client, TenantKey(tenant.id, key, row.prefix)


def test_embedded_round_trip_streams_the_result(
    embedded: tuple[Settings, TestClient, TenantKey], portrait_png: bytes, driving_mp4: bytes
) -> None:
    settings, client, tenant = embedded
    worker_app = make_celery(settings)
    register_reference_task(worker_app, settings)
    with embedded_worker(worker_app, stop_timeout_s=60):
        job = submit(client, tenant, portrait=portrait_png, driving=driving_mp4).json()
        done = wait_for_state(client, tenant, job["id"], {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    result = client.get(f"/v1/jobs/{job['id']}/result", headers=tenant.headers, follow_redirects=False)
    assert result.status_code == 200 and result.content == driving_mp4  # streamed, no presigned URL
    assert result.headers["x-content-sha256"] == hashlib.sha256(driving_mp4).hexdigest()
    assert (settings.var_dir / "goha.sqlite3").exists() and (settings.var_dir / "provenance.key").exists()
    assert client.get("/readyz").json()["status"] == "ready"


def test_broker_down_at_submit_then_reconciled(
    tmp_path: Path, portrait_png: bytes, driving_mp4: bytes
) -> None:
    down = Settings(
        var_dir=tmp_path / "var",
        broker_url="redis://127.0.0.1:1/0",
        broker_connect_timeout_s=0.5,
        verifier="none",
    )
    db = Database(down.database_url)
    with TestClient(create_app(down, db=db)) as client:
        tenant = admin.create_tenant(db, "t")
        row, key = admin.create_key(db, tenant.id)
        who = TenantKey(tenant.id, key, row.prefix)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("error")
        accepted = submit(client, who, portrait=portrait_png, driving=driving_mp4)
        assert accepted.status_code == 202  # the job is durable; publishing is retried later
        job_id = accepted.json()["id"]
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "queued" and job.enqueued_at is None

    healed = down.model_copy(update={"broker_url": "filesystem://"})
    app = make_celery(healed)
    report = reconcile_once(db, lambda j: enqueue_job(j, app), stale_after_s=300, max_enqueues=5)
    assert report.requeued == [job_id]
    register_reference_task(app, healed)
    with embedded_worker(app, stop_timeout_s=60):
        with TestClient(create_app(healed, db=db)) as client:
            assert wait_for_state(client, who, job_id, {"succeeded", "failed"})["state"] == "succeeded"
    db.dispose()


def test_results_can_be_joined_while_an_embedded_worker_runs(
    goha_redis_url: str, goha_queue_name: str
) -> None:
    """Building a Celery worker sets a process-wide "a join would block" flag (the solo pool's); left set,
    every later ``.get()`` in the test process raised "Never call result.get() within a task!" (seen in
    tests/observability once this package's session worker came from ``embedded_worker``)."""
    queue = f"{goha_queue_name}-join-{secrets.token_hex(3)}"
    app = Celery(f"join-{queue}", broker=goha_redis_url)
    app.conf.update(task_default_queue=queue, task_ignore_result=True, worker_hijack_root_logger=False)

    @app.task(name="goha.test.answer", shared=False)
    def answer() -> int:
        return 42

    with embedded_worker(app, stop_timeout_s=30):
        assert answer.apply().get() == 42  # what tests/observability does with the worker's task
    assert answer.apply().get() == 42
