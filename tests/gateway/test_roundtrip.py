"""Submit -> queue -> worker -> result -> provenance, through real PostgreSQL, Redis and S3."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shared.platform.db import Database
from shared.platform.models import AuditLog, JobEvent
from tests.gateway.conftest import TenantKey, submit, wait_for_state

pytestmark = pytest.mark.integration


def test_full_round_trip(
    client: TestClient, worker: None, tenant: TenantKey, portrait_png: bytes, driving_mp4: bytes, db: Database
) -> None:
    response = submit(
        client,
        tenant,
        portrait=portrait_png,
        driving=driving_mp4,
        data={"motion_mode": "absolute", "expression_scale": "1.2"},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] in {"queued", "running", "succeeded"}
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}" == job["links"]["self"]
    assert job["options"]["motion_mode"] == "absolute" and job["options"]["expression_scale"] == 1.2
    assert job["job_type"] == "reenact"

    done = wait_for_state(client, tenant, job["id"], {"succeeded", "failed", "cancelled"})
    assert done["state"] == "succeeded", done
    assert done["progress"] == {
        "frames_done": 8,
        "frames_total": 8,
        "fraction": 1.0,
        "stage": "succeeded",
        "stage_text": "succeeded",
        "eta_s": None,
    }
    assert done["error"] is None and done["attempts"] == 1
    assert {"queued_s", "running_s", "total_s"} <= set(done["timings"])
    assert done["links"]["result"] == f"/v1/jobs/{job['id']}/result"

    redirect = client.get(done["links"]["result"], headers=tenant.headers, follow_redirects=False)
    assert redirect.status_code == 307
    presigned = redirect.headers["location"]
    assert "X-Amz-Signature=" in presigned and "X-Amz-Expires=" in presigned
    downloaded = httpx.get(presigned)  # straight from the S3 server, no API key
    assert (
        downloaded.status_code == 200 and downloaded.content == driving_mp4
    )  # the stand-in copies its input

    as_url = client.get(done["links"]["result"], params={"mode": "url"}, headers=tenant.headers).json()
    assert as_url["sha256"] == hashlib.sha256(driving_mp4).hexdigest() and as_url["media_type"] == "video/mp4"

    provenance = client.get(done["links"]["provenance"], headers=tenant.headers).json()
    assert provenance["complete"] is True and provenance["signature_valid"] is True
    document = provenance["document"]
    assert document["output_sha256"] == hashlib.sha256(driving_mp4).hexdigest()
    assert document["inputs"]["portrait_sha256"] == hashlib.sha256(portrait_png).hexdigest()
    assert (
        document["consent"]["subject_name"] == "Jane Doe"
        and document["consent"]["method"] == "written_release"
    )
    assert document["consent"]["attested_via_api_key"] == tenant.prefix

    with db.session() as session:
        events = [
            (e.from_state, e.to_state)
            for e in session.scalars(
                select(JobEvent).where(JobEvent.job_id == job["id"]).order_by(JobEvent.id)
            )
        ]
        actions = set(session.scalars(select(AuditLog.action).where(AuditLog.tenant_id == tenant.tenant_id)))
    assert events == [(None, "queued"), ("queued", "running"), ("running", "succeeded")]
    assert {"job.create", "job.result"} <= actions

    metrics = client.get("/metrics").text
    assert 'goha_jobs_submitted_total{job_type="reenact"}' in metrics
    assert 'goha_http_requests_total{method="POST",route="/v1/jobs",status="202"}' in metrics


def test_readiness_checks_every_dependency(client: TestClient) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}
    assert client.get("/healthz").json()["status"] == "ok"


def test_orbit_job_needs_no_driving_video(
    client: TestClient, worker: None, tenant: TenantKey, portrait_png: bytes
) -> None:
    response = submit(client, tenant, portrait=portrait_png, data={"job_type": "orbit", "frame_limit": "24"})
    assert response.status_code == 202, response.text
    done = wait_for_state(client, tenant, response.json()["id"], {"succeeded", "failed"})
    assert done["state"] == "succeeded" and done["inputs"]["driving_asset_id"] is None
