"""The robustness bench's attacks and unmarked sets (``services.worker.bench_watermark``); the bench itself
runs the worker pipeline and is a Makefile target (``make bench-watermark``), not a test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.worker.bench_watermark import ATTACKS, attack, negative_sets
from shared.media.video import VideoWriter, iter_frames, probe_video
from tests.media.conftest import gradient_frame


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s at 25 fps, 96x64, a left-to-right gradient whose red channel differs from the green one."""
    path = tmp_path_factory.mktemp("bench") / "clip.mp4"
    with VideoWriter(path, fps=25, width=96, height=64) as writer:
        for index in range(50):
            frame = gradient_frame(index, 96, 64)
            frame[:, :, 0] = np.linspace(0, 250, 96, dtype=np.uint8)[None, :]
            writer.write(frame)
    return path


def test_every_attack_writes_a_readable_clip_of_the_expected_shape(clip: Path, tmp_path: Path) -> None:
    expected = {
        "scale075": (72, 48, 50),
        "scale050": (48, 32, 50),
        "crf28_scale075": (72, 48, 50),
        "crop8": (80, 54, 50),  # 8 % (8 and 5 px) cut from every side, even sizes
        "fps15": (96, 64, 30),
        "cut1s": (96, 64, 25),
    }
    for name in ATTACKS:
        info = probe_video(attack(clip, tmp_path / f"{name}.mp4", name))
        assert (info.width, info.height, info.frame_count) == expected.get(name, (96, 64, 50)), name


def test_grey_and_flip_do_what_they_say(clip: Path, tmp_path: Path) -> None:
    original = next(iter_frames(clip)).astype(np.int16)
    grey = next(iter_frames(attack(clip, tmp_path / "grey.mp4", "grey"))).astype(np.int16)
    assert (
        np.abs(grey[..., 0] - grey[..., 1]).mean() < 3
        and np.abs(original[..., 0] - original[..., 1]).mean() > 20
    )
    flipped = next(iter_frames(attack(clip, tmp_path / "flip.mp4", "flip"))).astype(np.int16)
    assert (
        np.abs(flipped[:, ::-1, 0] - original[..., 0]).mean()
        < 4
        < np.abs(flipped[..., 0] - original[..., 0]).mean()
    )


def test_unmarked_sets_are_eight_moving_frames_of_varied_content() -> None:
    sets = list(negative_sets(8, []))
    assert len(sets) == 8
    for frames in sets:
        assert len(frames) == 8 and all(
            f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in frames
        )
        assert np.abs(frames[0].astype(np.int16) - frames[4].astype(np.int16)).mean() > 0  # it moves
    means = [float(frames[0].mean()) for frames in sets]
    assert max(means) - min(means) > 20  # not one picture
