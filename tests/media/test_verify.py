"""End to end over the media layer: label + watermark -> H.264 with audio -> C2PA -> verify, and after an
attacker's re-encode."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.media.c2pa_sign import ProvenanceClaim, SigningChain, sign_video
from shared.media.hashing import sha256_file
from shared.media.verify import verify_video
from shared.media.video import reencode
from tests.media.conftest import JOB_ID, MarkedClip


@pytest.mark.slow
def test_verify_signed_watermarked_output_and_its_reencode(
    marked_clip: MarkedClip, source_clip: Path, dev_chain: SigningChain, tmp_path: Path
) -> None:
    signed = tmp_path / "final.mp4"
    claim = ProvenanceClaim(
        job_id=JOB_ID,
        model_version="goha-tiny@test",
        portrait_sha256=sha256_file(marked_clip.clean_path),
        driving_sha256=sha256_file(source_clip),
        watermark_payload=marked_clip.payload,
    )
    sign_video(marked_clip.path, signed, claim, dev_chain)

    report = verify_video(signed, trust_anchors=dev_chain.trust_anchor_pem, max_samples=4)
    assert report.watermark.found and report.watermark.payload == marked_clip.payload
    assert report.manifest.valid and report.manifest.trusted and report.manifest.ai_generated
    assert report.manifest_payload == marked_clip.payload and report.payload_consistent is True
    assert report.ai_generated_evidence
    as_dict = report.to_dict()
    assert as_dict["manifest"]["claim"]["job_id"] == JOB_ID and as_dict["watermark"]["found"] is True

    attacked = tmp_path / "attacked.mp4"
    reencode(signed, attacked, crf=28, scale=0.75)
    after = verify_video(attacked, trust_anchors=dev_chain.trust_anchor_pem, max_samples=4)
    assert not after.manifest.present and after.payload_consistent is None
    assert after.watermark.found and after.watermark.matches(marked_clip.payload)
    assert after.ai_generated_evidence


@pytest.mark.slow
def test_verify_unmarked_video(marked_clip: MarkedClip) -> None:
    report = verify_video(marked_clip.clean_path, max_samples=4)
    assert not report.watermark.found and not report.manifest.present
    assert not report.ai_generated_evidence and report.payload_consistent is None
