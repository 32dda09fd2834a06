from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from shared.media.errors import MediaError
from shared.media.video import reencode
from shared.media.watermark import (
    PAYLOAD_BITS,
    RivaGanWatermarker,
    WatermarkConfig,
    agreeing_bits,
    bits_to_payload,
    detect_frame,
    detect_video,
    payload_for_job,
    payload_to_bits,
    sample_frames,
    vote_decided,
    vote_logits,
)
from tests.media.conftest import JOB_ID, WATERMARK_SECRET, MarkedClip, astronaut_motion_frames, write_av_clip

SECRET = b"0123456789abcdef-secret"


def test_payload_is_a_keyed_32_bit_hash() -> None:
    payload = payload_for_job("job-1", SECRET)
    assert 0 <= payload < 2**32
    assert payload == payload_for_job("job-1", SECRET)
    assert payload != payload_for_job("job-2", SECRET)
    assert payload != payload_for_job("job-1", SECRET + b"x")
    with pytest.raises(MediaError) as excinfo:
        payload_for_job("job-1", b"short")
    assert excinfo.value.code == "watermark_invalid_argument"
    with pytest.raises(MediaError):
        payload_for_job("", SECRET)


def test_bits_round_trip_msb_first() -> None:
    bits = payload_to_bits(0x80000001)
    assert bits[0] == 1 and bits[-1] == 1 and bits[1:-1].sum() == 0
    for value in (0, 1, 0xDEADBEEF, 2**32 - 1):
        assert bits_to_payload(payload_to_bits(value)) == value
    assert agreeing_bits(0xFFFFFFFF, 0xFFFFFFF0) == 28
    for bad in (-1, 2**32, 1.5, True):
        with pytest.raises(MediaError):
            payload_to_bits(bad)  # type: ignore[arg-type]


def _logits_for(payload: int, frames: int, magnitude: float) -> np.ndarray:
    signs = payload_to_bits(payload).astype(np.float32) * 2 - 1
    return np.tile(signs * magnitude, (frames, 1))


def test_the_vote_is_decided_early_only_when_the_rest_cannot_change_found() -> None:
    payload = 0x5A5A1234
    strong = _logits_for(payload, 8, 8.0)
    assert not vote_decided(strong[:5], 8)  # 3 contrary frames could still break the 0.75 agreement
    assert vote_decided(strong[:6], 8)  # 6 of 8 agree whatever the last two say, with margin on the mean
    assert vote_logits(strong[:6]).found
    weak = _logits_for(payload, 8, 2.5)
    assert not vote_decided(weak[:7], 8)  # one contrary frame of the same size would pull the mean under 2
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 3.0, (8, 32)).astype(np.float32)
    decided_at = next(k for k in range(1, 9) if vote_decided(noise[:k], 8))
    assert decided_at < 8 and not vote_logits(noise[:decided_at]).found  # unmarked: not found, early
    assert not vote_logits(noise).found  # and the full vote agrees
    assert vote_decided(noise, 8)  # everything read: decided


def test_vote_finds_a_consistent_confident_payload() -> None:
    payload = 0x5A5A1234
    logits = _logits_for(payload, 6, 8.0)
    logits[0, :3] *= -1  # one frame with 3 wrong bits is outvoted
    result = vote_logits(logits)
    assert result.found and result.payload == payload and result.confident_bits == 32
    assert result.frames_sampled == 6 and result.matches(payload) and result.score == 1.0


def test_vote_rejects_weak_or_inconsistent_evidence() -> None:
    payload = 0x0F0F0F0F
    weak = vote_logits(_logits_for(payload, 6, 1.0))  # consistent but low-confidence (like clean content)
    assert not weak.found and weak.confident_bits == 0 and weak.payload == payload
    rng = np.random.default_rng(0)
    noisy = vote_logits(rng.normal(0, 6, size=(8, PAYLOAD_BITS)))
    assert not noisy.found and noisy.confident_bits < 28
    # A tie between frames is broken by the mean logit.
    tie = np.array([[5.0] * PAYLOAD_BITS, [-3.0] * PAYLOAD_BITS])
    assert vote_logits(tie).payload == 2**32 - 1
    empty = vote_logits(np.zeros((0, PAYLOAD_BITS)))
    assert not empty.found and empty.payload is None and not empty.matches(0)
    with pytest.raises(MediaError):
        vote_logits(_logits_for(payload, 2, 8.0), threshold=33)


def test_threshold_counts_confident_bits() -> None:
    payload = 0x12345678
    logits = _logits_for(payload, 4, 8.0)
    logits[:, :5] = 0.5  # five bits with no confidence
    assert vote_logits(logits, threshold=27).found
    assert not vote_logits(logits, threshold=28).found


def test_embed_is_near_invisible_and_reads_back_uncompressed() -> None:
    frame = astronaut_motion_frames(1)[0]
    payload = payload_for_job("job-psnr", SECRET)
    watermarker = RivaGanWatermarker()
    marked = watermarker.embed_frame(frame, payload)
    assert marked.shape == frame.shape and marked.dtype == np.uint8
    assert 34.0 < cv2.PSNR(frame, marked) < 45.0
    assert np.array_equal(watermarker.detect_frame(marked), payload_to_bits(payload))
    assert np.array_equal(detect_frame(marked), payload_to_bits(payload))
    # The decoder's logits on the unmarked frame are far weaker: detection is not an artefact of content.
    assert (
        np.abs(watermarker.frame_logits(marked)).mean() > 2 * np.abs(watermarker.frame_logits(frame)).mean()
    )


def test_sessions_are_cached_per_process() -> None:
    first, second = RivaGanWatermarker(), RivaGanWatermarker()
    assert first._encoder is second._encoder and first._decoder is second._decoder


def test_non_square_and_small_frames() -> None:
    frame = cv2.resize(astronaut_motion_frames(1)[0], (400, 240), interpolation=cv2.INTER_AREA)
    payload = 0xA5A5A5A5
    watermarker = RivaGanWatermarker()
    assert np.array_equal(
        watermarker.detect_frame(watermarker.embed_frame(frame, payload)), payload_to_bits(payload)
    )
    with pytest.raises(MediaError) as excinfo:
        watermarker.embed_frame(np.zeros((48, 96, 3), np.uint8), payload)
    assert excinfo.value.code == "watermark_invalid_argument"
    with pytest.raises(MediaError):
        watermarker.embed_frame(np.zeros((128, 128), np.uint8), payload)
    with pytest.raises(MediaError):
        RivaGanWatermarker(WatermarkConfig(work_short_side=32))


@pytest.mark.slow
def test_watermark_survives_h264_crf28_and_075_resize(marked_clip: MarkedClip, tmp_path: Path) -> None:
    """The issue's requirement: still verifiable after re-encoding at CRF 28 and a 0.75x resize."""
    expected = payload_for_job(JOB_ID, WATERMARK_SECRET)
    direct = detect_video(marked_clip.path, max_samples=6, early_stop=False)
    assert direct.found and direct.payload == expected and direct.frames_sampled == 6
    early = detect_video(marked_clip.path, max_samples=6)  # stops once the vote is decided
    assert early.found and early.payload == expected and 1 <= early.frames_sampled <= 6

    attacked = tmp_path / "attacked.mp4"
    reencode(marked_clip.path, attacked, crf=28, scale=0.75)
    result = detect_video(attacked, max_samples=6)
    assert result.found, result.to_dict()
    assert result.matches(expected) and result.agreeing_bits(expected) >= 28
    # A different job's payload does not match.
    assert not result.matches(payload_for_job("another-job", WATERMARK_SECRET))


@pytest.mark.slow
def test_unmarked_clip_is_not_found(marked_clip: MarkedClip) -> None:
    result = detect_video(marked_clip.clean_path, max_samples=6)
    assert not result.found
    assert not result.matches(marked_clip.payload)


def test_long_clips_are_sampled_by_seeking(tmp_path: Path) -> None:
    clip = write_av_clip(tmp_path / "long.mp4", 60, width=96, height=64, audio_codec=None, gop=10)
    sequential = [float(frame.mean()) for frame in sample_frames(clip, 5)]
    assert len(sequential) == 5
    assert sequential == sorted(sequential)  # spread over the clip, in order
    # Seeking lands on keyframes (every 10th frame here): distinct, ordered, spread over the clip.
    seeking = [float(frame.mean()) for frame in sample_frames(clip, 5, sequential_max_frames=10)]
    assert len(seeking) == 5
    assert seeking == sorted(seeking) and len(set(np.round(seeking, 3))) == 5
    assert seeking[0] == pytest.approx(sequential[0], abs=0.5)
    with pytest.raises(MediaError):
        list(sample_frames(clip, 0))
