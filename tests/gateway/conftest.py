"""Gateway test rig: real PostgreSQL, Redis and SeaweedFS S3; a Celery worker thread running the
reference ``goha.reenact`` task; two gateway instances on the same state — one whose queue has that
worker, one whose queue has none (for jobs that must stay queued).

Worker threads come from ``tests.support.embedded_worker``, not Celery's ``start_worker``: the
session worker here stays up while other packages (tests/web, tests/observability) start their own, and
``start_worker`` shares kombu's current event loop, the default app, the process-wide stop flag and
logging set-up with every other worker in the process (docs/web.md)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.worker.reference import register_reference_task
from shared.media.synthetic import make_image_bytes, make_video_bytes
from shared.platform import admin
from shared.platform.db import Database
from shared.platform.queue import make_celery
from shared.platform.settings import Settings
from shared.platform.storage import ObjectStorage, make_storage
from tests.support.embedded_worker import embedded_worker

CONSENT = {
    "consent_subject": "Jane Doe",
    "consent_method": "written_release",
    "consent_obtained_at": "2026-11-01T10:00:00Z",
    "consent_reference": "release-42",
}
MiB = 1024 * 1024


@dataclass(frozen=True)
class TenantKey:
    tenant_id: str
    key: str
    prefix: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="session")
def gw_settings(
    goha_postgres_url: str,
    goha_redis_url: str,
    goha_queue_name: str,
    goha_s3_settings: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    return Settings(
        embedded=False,
        var_dir=tmp_path_factory.mktemp("gateway-var"),
        database_url=goha_postgres_url,
        broker_url=goha_redis_url,
        result_backend=goha_redis_url,
        queue_name=goha_queue_name,
        provenance_signing_key="gateway-tests-signing-key-0123456789",
        max_upload_bytes=1 * MiB,
        max_image_pixels=1_000_000,
        max_video_seconds=3.0,
        max_video_width=320,
        max_video_height=320,
        max_video_frames=120,
        rate_limit_per_minute=100_000,
        verifier="none",
        **goha_s3_settings,
    )


@pytest.fixture(scope="session")
def db(gw_settings: Settings) -> Iterator[Database]:
    database = Database.from_settings(gw_settings)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def storage(gw_settings: Settings) -> ObjectStorage:
    return make_storage(gw_settings)


@pytest.fixture(scope="session")
def celery_app(gw_settings: Settings) -> Celery:
    app = make_celery(gw_settings)
    register_reference_task(app, gw_settings)
    return app


@pytest.fixture(scope="session")
def client(
    gw_settings: Settings, db: Database, storage: ObjectStorage, celery_app: Celery
) -> Iterator[TestClient]:
    with TestClient(create_app(gw_settings, db=db, storage=storage, celery_app=celery_app)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def idle_client(gw_settings: Settings, db: Database, storage: ObjectStorage) -> Iterator[TestClient]:
    """Same database and storage, but its queue has no consumer: its jobs stay queued."""
    idle = gw_settings.model_copy(update={"queue_name": f"{gw_settings.queue_name}-idle"})
    with TestClient(create_app(idle, db=db, storage=storage)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def worker(celery_app: Celery) -> Iterator[None]:
    with embedded_worker(celery_app, stop_timeout_s=60):
        yield


@pytest.fixture
def tenant_factory(db: Database) -> Callable[..., TenantKey]:
    def make(rate_limit_per_minute: int | None = None) -> TenantKey:
        tenant = admin.create_tenant(db, f"tenant-{secrets.token_hex(4)}")
        row, key = admin.create_key(db, tenant.id, label="tests", rate_limit_per_minute=rate_limit_per_minute)
        return TenantKey(tenant.id, key, row.prefix)

    return make


@pytest.fixture
def tenant(tenant_factory: Callable[..., TenantKey]) -> TenantKey:
    return tenant_factory()


@pytest.fixture(scope="session")
def portrait_png() -> bytes:
    return make_image_bytes((128, 128), "PNG", seed=1)


@pytest.fixture(scope="session")
def driving_mp4() -> bytes:
    return make_video_bytes(".mp4", frames=8, fps=8, size=(64, 64))


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


def submit(
    client: TestClient,
    who: TenantKey,
    *,
    portrait: bytes | None = None,
    driving: bytes | None = None,
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    consent: bool = True,
) -> httpx.Response:
    files = {}
    if portrait is not None:
        files["portrait"] = ("portrait.png", portrait, "image/png")
    if driving is not None:
        files["driving_video"] = ("driving.mp4", driving, "video/mp4")
    form = {**(CONSENT if consent else {}), **(data or {})}
    return client.post("/v1/jobs", files=files or None, data=form, headers={**who.headers, **(headers or {})})


def wait_for_state(
    client: TestClient, who: TenantKey, job_id: str, states: set[str], timeout_s: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get(f"/v1/jobs/{job_id}", headers=who.headers).json()
        if body["state"] in states:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stayed {body['state']} for {timeout_s} s")
        time.sleep(0.05)
