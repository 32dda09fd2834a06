"""The worker's view of the job options: paste-back defaults on, and a bad value fails typed."""

from __future__ import annotations

import pytest

from services.worker.errors import JobFailure
from services.worker.options import JobOptions


def test_paste_back_is_on_unless_the_job_turns_it_off() -> None:
    assert JobOptions.from_job("reenact", {}).paste_back is True
    assert JobOptions.from_job("reenact", {"paste_back": None}).paste_back is True
    assert JobOptions.from_job("reenact", {"paste_back": False}).paste_back is False
    assert JobOptions.from_job("orbit", {"paste_back": True}).paste_back is True
    # A hand-written row may hold strings.
    assert JobOptions.from_job("reenact", {"paste_back": "false"}).paste_back is False
    assert JobOptions.from_job("reenact", {"paste_back": "1"}).paste_back is True


def test_an_unreadable_paste_back_value_fails_with_invalid_options() -> None:
    with pytest.raises(JobFailure) as info:
        JobOptions.from_job("reenact", {"paste_back": "sometimes"})
    assert info.value.code == "invalid_options"


@pytest.mark.parametrize("fps", [0.001, 0.5, 0.999, 1.0, 24.0, 60.0, 60.5, 120.0])
def test_the_gateway_accepts_exactly_the_output_fps_the_worker_can_honour(fps: float) -> None:
    """Issue 16: output_fps in (0, 1) passed the gateway's schema and failed in the worker."""
    from pydantic import ValidationError

    from services.gateway.schemas import JobOptions as RequestOptions

    try:
        RequestOptions(output_fps=fps)
        gateway_accepts = True
    except ValidationError:
        gateway_accepts = False
    try:
        JobOptions.from_job("reenact", {"output_fps": fps})
        worker_accepts = True
    except JobFailure as exc:
        assert exc.code == "invalid_options"
        worker_accepts = False
    assert gateway_accepts == worker_accepts == (1.0 <= fps <= 60.0)


def test_a_sub_one_output_fps_also_gets_the_workers_code_from_an_old_row() -> None:
    with pytest.raises(JobFailure) as info:
        JobOptions.from_job("orbit", {"output_fps": 0.5})
    assert info.value.code == "invalid_options" and "between 1 and 60" in info.value.message


def test_a_clip_with_a_disallowed_audio_codec_gives_a_silent_result(tmp_path: object) -> None:
    """Defence in depth for clips admitted before the audio allow-list: their audio is not decoded."""
    from pathlib import Path

    from services.worker.pipeline import PipelineConfig, audio_source_for

    clip, allowed = Path("clip.avi"), PipelineConfig().allowed_audio_codecs
    assert audio_source_for(clip, "aac", allowed) == clip
    assert audio_source_for(clip, None, allowed) == clip
    assert audio_source_for(clip, "adpcm_ima_wav", allowed) is None
