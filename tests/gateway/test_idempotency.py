"""Idempotency-Key: same key + same body -> same job, exactly one row, even under concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shared.platform.db import Database
from shared.platform.models import Job
from tests.gateway.conftest import TenantKey, submit

pytestmark = pytest.mark.integration


def _job_count(db: Database, tenant: TenantKey) -> int:
    with db.session() as session:
        return int(
            session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.tenant_id))
            or 0
        )


def test_replay_returns_the_same_job(
    idle_client: TestClient, tenant: TenantKey, portrait_png: bytes, driving_mp4: bytes, db: Database
) -> None:
    headers = {"Idempotency-Key": "order-17"}
    first = submit(idle_client, tenant, portrait=portrait_png, driving=driving_mp4, headers=headers)
    again = submit(idle_client, tenant, portrait=portrait_png, driving=driving_mp4, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    # The same body given by asset ids instead of uploads is the same request.
    by_ids = submit(
        idle_client,
        tenant,
        data={
            "portrait_asset_id": first.json()["inputs"]["portrait_asset_id"],
            "driving_asset_id": first.json()["inputs"]["driving_asset_id"],
        },
        headers=headers,
    )
    assert by_ids.json()["id"] == first.json()["id"]
    assert _job_count(db, tenant) == 1

    different = submit(
        idle_client,
        tenant,
        portrait=portrait_png,
        driving=driving_mp4,
        data={"smoothing": "0.9"},
        headers=headers,
    )
    assert different.status_code == 409 and different.json()["error"]["code"] == "idempotency_key_reused"
    assert _job_count(db, tenant) == 1

    without_key = submit(idle_client, tenant, portrait=portrait_png, driving=driving_mp4)
    assert without_key.json()["id"] != first.json()["id"] and _job_count(db, tenant) == 2


def test_concurrent_replays_create_one_job(
    idle_client: TestClient, tenant: TenantKey, portrait_png: bytes, driving_mp4: bytes, db: Database
) -> None:
    headers = {"Idempotency-Key": "burst-1"}
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(
            pool.map(
                lambda _: submit(
                    idle_client, tenant, portrait=portrait_png, driving=driving_mp4, headers=headers
                ),
                range(8),
            )
        )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert _job_count(db, tenant) == 1
