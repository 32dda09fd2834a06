"""POST /v1/verify: honest `not_available` without a detector; with the media layer's detector, a
watermarked output is traced back to its job and provenance record, also when a weakly read bit of the
watermark came out wrong."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
from shared.platform.verify import MAX_FLIPPED_BITS, MediaVerifier, likely_payloads, register_verifier
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


# -- a watermark read with bit errors --------------------------------------------------------------------
def _bit(payload: int, index: int) -> int:
    return (payload >> (31 - index)) & 1


def test_likely_payloads_flips_only_the_least_reliable_bits_cheapest_first() -> None:
    payload = 0x8000_0000  # bit 2 (from the most significant) is 0...
    read = payload | 1 << 29  # ...but was read as 1
    margins = {2: 0.4, 7: 1.0, 9: 2.5, 20: 3.0}  # every other bit: 6.0
    logits = [margins.get(i, 6.0) * (1 if _bit(read, i) else -1) for i in range(32)]
    readings = likely_payloads(read, logits, MAX_FLIPPED_BITS)
    assert len(readings) == 2**MAX_FLIPPED_BITS == len(set(readings))
    assert readings[0] == read and readings[1] == payload  # flipping the weakest bit is the next guess
    assert readings[2] == read ^ 1 << (31 - 7) and readings[-1] == read ^ sum(1 << (31 - i) for i in margins)
    flipped = {i for value in readings for i in range(32) if _bit(value, i) != _bit(read, i)}
    assert flipped == set(margins)  # never a bit read with a margin of 6
    assert likely_payloads(read, logits, 0) == (read,) and likely_payloads(read, [], 4) == (read,)


@pytest.fixture
def registered_verifier() -> Iterator[Callable[[Any], None]]:
    """Install a MediaVerifier (the production adapter) whose file reading is replaced by a fixed report."""
    from shared.media.c2pa_sign import ManifestReport
    from shared.media.verify import VerifyReport

    def install(watermark: Any) -> None:
        report = VerifyReport(watermark=watermark, manifest=ManifestReport(present=False))
        register_verifier(MediaVerifier(lambda path, trust_anchors=None: report))

    yield install
    register_verifier(None)


def _completed_job(
    client: TestClient, who: TenantKey, portrait: bytes, driving: bytes, db: Database, payload: int
) -> str:
    job_id: str = submit(client, who, portrait=portrait, driving=driving).json()["id"]
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        transition(session, job, JobState.RUNNING)
        complete_provenance(
            session, job, key=b"k" * 32, output_sha256="0" * 64, model_version="t", watermark_payload=payload
        )
        transition(session, job, JobState.SUCCEEDED)
    return job_id


@pytest.mark.parametrize("weak_bits", [(), (5,), (5, 17, 30)])
def test_a_weakly_read_wrong_bit_still_names_the_job(
    verifying_client: TestClient,
    tenant: TenantKey,
    portrait_png: bytes,
    driving_mp4: bytes,
    db: Database,
    registered_verifier: Callable[[Any], None],
    weak_bits: tuple[int, ...],
) -> None:
    """Bits whose frames disagree are read wrong (as seen on a real clip: 5 in 100 reads had one bit
    wrong, mean logit 0.1-1.3 on the wrong side, 31 confident bits): the detector still finds the mark
    and its matcher accepts the stored payload, so the job must be named."""
    from shared.media.watermark import vote_logits

    payload = int.from_bytes(secrets.token_bytes(4), "big")
    job_id = _completed_job(verifying_client, tenant, portrait_png, driving_mp4, db, payload)
    frames = np.array([[4.0 if _bit(payload, i) else -4.0 for i in range(32)] for _ in range(4)])
    for index in weak_bits:  # 3 of 4 frames read the wrong value, weakly
        wrong = 1.0 if not _bit(payload, index) else -1.0
        frames[:, index] = [wrong, wrong, wrong, -0.5 * wrong]
    watermark = vote_logits(frames)
    assert watermark.found and bin(watermark.payload ^ payload).count("1") == len(weak_bits)
    registered_verifier(watermark)

    found = verifying_client.post(
        "/v1/verify", files={"video": ("m.mp4", driving_mp4, "video/mp4")}, headers=tenant.headers
    ).json()
    assert found["watermark"]["found"] is True and found["watermark"]["payload"] == watermark.payload
    assert found["job_id"] == job_id, found["message"]
    if weak_bits:
        assert f"{len(weak_bits)} of 32 watermark bits read differently" in found["message"]


def test_a_job_whose_data_were_deleted_is_still_named(
    verifying_client: TestClient,
    tenant: TenantKey,
    portrait_png: bytes,
    driving_mp4: bytes,
    db: Database,
    registered_verifier: Callable[[Any], None],
) -> None:
    """Erasure keeps the guardrail: a copy of the video still names its job, and says the data are gone."""
    from shared.media.watermark import vote_logits

    payload = int.from_bytes(secrets.token_bytes(4), "big")
    job_id = _completed_job(verifying_client, tenant, portrait_png, driving_mp4, db, payload)
    assert verifying_client.delete(f"/v1/jobs/{job_id}", headers=tenant.headers).status_code == 200
    registered_verifier(vote_logits(np.array([[4.0 if _bit(payload, i) else -4.0 for i in range(32)]] * 4)))

    found = verifying_client.post(
        "/v1/verify", files={"video": ("m.mp4", driving_mp4, "video/mp4")}, headers=tenant.headers
    ).json()
    assert found["job_id"] == job_id
    assert found["provenance"]["media_deleted_at"] is not None
    assert "its result and inputs were deleted on" in found["message"]


def test_a_wrong_bit_read_with_confidence_names_no_job(
    verifying_client: TestClient,
    tenant: TenantKey,
    portrait_png: bytes,
    driving_mp4: bytes,
    db: Database,
    registered_verifier: Callable[[Any], None],
) -> None:
    """Only weakly read bits are second-guessed: a reading off in a bit every frame agrees on is a
    different payload, and naming a job for it would widen the chance of a false attribution."""
    from shared.media.watermark import vote_logits

    payload = int.from_bytes(secrets.token_bytes(4), "big")
    _completed_job(verifying_client, tenant, portrait_png, driving_mp4, db, payload)
    frames = np.array([[4.0 if _bit(payload, i) else -4.0 for i in range(32)] for _ in range(4)])
    frames[:, 11] = -1.5 * frames[:, 11]  # every frame reads bit 11 wrong, strongly
    for index in (3, 4):  # two bits read right but weakly (frames split): the first ones second-guessed
        frames[:, index] = [0.3, -0.2, 0.3, -0.2] if _bit(payload, index) else [-0.3, 0.2, -0.3, 0.2]
    watermark = vote_logits(frames)
    assert watermark.found and watermark.matches(payload)  # the matcher alone would accept it
    registered_verifier(watermark)

    found = verifying_client.post(
        "/v1/verify", files={"video": ("m.mp4", driving_mp4, "video/mp4")}, headers=tenant.headers
    ).json()
    assert found["watermark"]["found"] is True and found["job_id"] is None
    assert found["message"] == "a watermark was detected but it names no job known to this platform"
