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


def test_the_report_says_which_edits_the_watermark_may_not_survive(monkeypatch) -> None:
    from shared.media import verify

    monkeypatch.setattr(verify, "ATTACK_FOUND_RATES", {"crf28": 1.0, "crf35": 0.5, "flip": 0.0})
    limits = verify.watermark_limits()
    assert limits["survives"] == ["H.264 re-encode at CRF 28"]
    assert limits["may_not_survive"] == ["H.264 re-encode at CRF 35", "horizontal flip"]
    assert limits["found_rates"] == {"crf28": 1.0, "crf35": 0.5, "flip": 0.0}
    # Every measured attack is named (the bench's keys are the report's).
    assert set(verify.ATTACK_FOUND_RATES) <= set(verify.ATTACKS)


def test_the_platform_says_so_when_no_watermark_is_found() -> None:
    from shared.platform.verify import DetectorReport, verify_upload

    report = DetectorReport(watermark_found=False, watermark_may_not_survive=("horizontal flip", "greyscale"))
    outcome = verify_upload(
        None,  # type: ignore[arg-type]  # nothing is looked up when nothing was found
        lambda _path: report,  # type: ignore[arg-type]
        "unused.mp4",
        file_sha256="0" * 64,
        tenant_id="t",
        signing_key=b"k" * 32,
    )
    assert outcome.job_id is None and outcome.watermark is not None
    assert outcome.watermark["may_not_survive"] == ["horizontal flip", "greyscale"]
    assert "may not survive horizontal flip, greyscale" in outcome.message
