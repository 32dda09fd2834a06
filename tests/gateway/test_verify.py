"""POST /v1/verify: honest `not_available` without a detector; with the media layer's detector, a
watermarked output is traced back to its job and provenance record."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from shared.platform.db import Database
from shared.platform.jobs import JobState, transition
from shared.platform.models import Job
from shared.platform.provenance import complete_provenance
from shared.platform.settings import Settings
from shared.platform.storage import ObjectStorage
from tests.gateway.conftest import TenantKey, submit

pytestmark = pytest.mark.integration


def test_without_a_detector_the_answer_is_not_available(
    idle_client: TestClient, tenant: TenantKey, driving_mp4: bytes
) -> None:
    response = idle_client.post(
        "/v1/verify", files={"video": ("x.mp4", driving_mp4, "video/mp4")}, headers=tenant.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "not_available" and body["watermark"] is None and body["job_id"] is None
    assert body["file_sha256"] == hashlib.sha256(driving_mp4).hexdigest()


def test_verify_refuses_non_videos(idle_client: TestClient, tenant: TenantKey, portrait_png: bytes) -> None:
    response = idle_client.post(
        "/v1/verify", files={"video": ("x.png", portrait_png, "image/png")}, headers=tenant.headers
    )
    assert response.status_code == 415 and response.json()["error"]["code"] == "wrong_media_kind"


@pytest.fixture
def verifying_client(gw_settings: Settings, db: Database, storage: ObjectStorage) -> Iterator[TestClient]:
    pytest.importorskip("shared.media.verify")
    settings = gw_settings.model_copy(
        update={"verifier": "auto", "queue_name": f"{gw_settings.queue_name}-idle"}
    )
    with TestClient(create_app(settings, db=db, storage=storage)) as client:
        yield client


def _clip(path: Path, frames: list[np.ndarray]) -> bytes:
    from shared.media.video import VideoWriter

    height, width = frames[0].shape[:2]
    with VideoWriter(path, fps=6, width=width, height=height) as writer:
        writer.write(frames)
    return path.read_bytes()


@pytest.mark.slow
def test_watermarked_output_is_traced_to_its_job(
    verifying_client: TestClient,
    tenant: TenantKey,
    portrait_png: bytes,
    driving_mp4: bytes,
    db: Database,
    gw_settings: Settings,
    tmp_path: Path,
) -> None:
    watermark = pytest.importorskip("shared.media.watermark")
    import cv2
    from skimage import data

    job_id = submit(verifying_client, tenant, portrait=portrait_png, driving=driving_mp4).json()["id"]
    payload = watermark.payload_for_job(job_id, b"watermark-secret-for-tests")
    base = cv2.resize(data.astronaut(), (320, 320))
    frames = [np.roll(base, 4 * i, axis=1) for i in range(4)]
    marked = _clip(tmp_path / "marked.mp4", watermark.embed(frames, payload))
    plain = _clip(tmp_path / "plain.mp4", frames)

    # What the worker does at the end of a job: record the output and its watermark payload.
    key = gw_settings.provenance_signing_key.get_secret_value().encode()  # type: ignore[union-attr]
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        transition(session, job, JobState.RUNNING)
        complete_provenance(
            session,
            job,
            key=key,
            output_sha256=hashlib.sha256(marked).hexdigest(),
            model_version="test",
            watermark_payload=payload,
        )
        transition(session, job, JobState.SUCCEEDED)

    response = verifying_client.post(
        "/v1/verify", files={"video": ("m.mp4", marked, "video/mp4")}, headers=tenant.headers
    )
    assert response.status_code == 200, response.text
    found = response.json()
    assert found["status"] == "checked" and found["detector"] == "shared.media.verify"
    assert found["watermark"]["found"] is True and found["job_id"] == job_id and found["same_tenant"] is True
    assert (
        found["checks"]["provenance_signature_valid"] is True
        and found["checks"]["file_is_exact_output"] is True
    )
    assert found["provenance"]["consent"]["subject_name"] == "Jane Doe"

    clean = verifying_client.post(
        "/v1/verify", files={"video": ("p.mp4", plain, "video/mp4")}, headers=tenant.headers
    ).json()
    assert clean["status"] == "checked" and clean["watermark"]["found"] is False and clean["job_id"] is None
