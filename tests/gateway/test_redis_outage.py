"""Issue 16, item 10: with the rate limiter's Redis down, authenticated requests are still answered
(limited per process, logged and counted), and polling works on PostgreSQL alone. Real PostgreSQL and
SeaweedFS; the outage is a real Redis URL nobody listens on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from services.gateway.app import create_app
from shared.platform.db import Database
from shared.platform.processes import free_ports
from shared.platform.settings import Settings
from shared.platform.storage import ObjectStorage
from tests.gateway.conftest import TenantKey, submit

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_down_client(gw_settings: Settings, db: Database, storage: ObjectStorage) -> Iterator[TestClient]:
    dead = f"redis://127.0.0.1:{free_ports(1)[0]}/0"
    settings = gw_settings.model_copy(
        update={
            "queue_name": f"{gw_settings.queue_name}-idle",
            "rate_limit_backend": "redis",
            "rate_limit_redis_url": dead,
            "rate_limit_per_minute": 3,
        }
    )
    with TestClient(create_app(settings, db=db, storage=storage)) as client:
        yield client


def _fallbacks() -> float:
    return REGISTRY.get_sample_value("goha_rate_limiter_fallbacks_total") or 0.0


def test_polling_and_submitting_survive_a_redis_outage(
    redis_down_client: TestClient, tenant: TenantKey, portrait_png: bytes, driving_mp4: bytes
) -> None:
    before = _fallbacks()
    job = submit(redis_down_client, tenant, portrait=portrait_png, driving=driving_mp4)
    assert job.status_code == 202, job.text
    polled = redis_down_client.get(f"/v1/jobs/{job.json()['id']}", headers=tenant.headers)
    assert polled.status_code == 200 and polled.json()["state"] == "queued"
    assert _fallbacks() >= before + 2
    # Still limited (3 a minute, per process while Redis is away), not open to abuse.
    codes = [redis_down_client.get("/v1/jobs", headers=tenant.headers).status_code for _ in range(3)]
    assert codes[-1] == 429
