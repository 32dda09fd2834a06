"""make bench-quality: its metric functions on inputs with known answers, and one slow smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.worker import bench_quality as bq


def _face(*, gap: float = 10.0, height: float = 100.0, nose_x: float = 0.0, iod: float = 60.0) -> np.ndarray:
    """(68, 2) landmarks with a chosen inner-lip gap, face height, nose offset and eye distance."""
    lm = np.zeros((68, 2))
    lm[27] = (0.0, 0.0)
    lm[8] = (0.0, height)
    lm[36:42] = (-iod / 2, 0.0)
    lm[42:48] = (iod / 2, 0.0)
    lm[30] = (nose_x, 20.0)
    lm[[61, 62, 63], 1] = 50.0
    lm[[67, 66, 65], 1] = 50.0 + gap
    return lm


def test_inner_lip_gap_is_the_mean_pair_distance_over_the_face_height() -> None:
    assert bq.inner_lip_gap(_face(gap=10.0, height=100.0)) == pytest.approx(0.1)
    lm = _face(gap=0.0)
    lm[67, 1], lm[66, 1], lm[65, 1] = 55.0, 60.0, 65.0  # pairs (61,67), (62,66), (63,65): 5, 10, 15
    assert bq.inner_lip_gap(lm) == pytest.approx(10.0 / 100.0)
    # The outer lips (48-59) and the other inner points (60, 64) do not count.
    lm[48:60, 1] = 500.0
    lm[[60, 64], 1] = -500.0
    assert bq.inner_lip_gap(lm) == pytest.approx(0.1)
    assert bq.inner_lip_gap(_face(gap=20.0, height=200.0)) == pytest.approx(0.1)  # scale-free


def test_nose_yaw_is_the_nose_offset_from_the_eyes_centre_over_the_eye_distance() -> None:
    assert bq.nose_yaw(_face(nose_x=6.0, iod=60.0)) == pytest.approx(0.1)
    assert bq.nose_yaw(_face(nose_x=-12.0, iod=60.0)) == pytest.approx(-0.2)
    shifted = _face(nose_x=6.0) + np.array([100.0, 40.0])  # translation-free
    assert bq.nose_yaw(shifted) == pytest.approx(0.1)


def test_pearson_on_known_series() -> None:
    x = [0.0, 1.0, 2.0, 3.0]
    assert bq.pearson(x, [1.0, 3.0, 5.0, 7.0]) == pytest.approx(1.0)
    assert bq.pearson(x, [3.0, 2.0, 1.0, 0.0]) == pytest.approx(-1.0)
    assert bq.pearson(x, [1.0, 1.0, 1.0, 1.0]) is None  # constant
    assert bq.pearson([0.0, 1.0], [0.0, 1.0]) is None  # too few pairs
    assert bq.pearson([0.0, 1.0, float("nan"), 2.0, 3.0], [0.0, 1.0, 5.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_sample_indices_are_even_unique_and_cover_the_clip() -> None:
    indices = bq.sample_indices(100, 30)
    assert len(indices) == 30 and indices[0] == 0 and indices[-1] == 99
    assert np.all(np.diff(indices) >= 3)
    assert bq.sample_indices(10, 30) == list(range(10))
    assert bq.sample_indices(0, 30) == []
    assert bq.descriptor_distance(np.array([0.0, 0.0]), np.array([3.0, 4.0])) == pytest.approx(5.0)


class _FakeMeasure:
    """Faces keyed by the image's first pixel: value -> (landmarks, descriptor) or no face."""

    def __init__(self, faces: dict[int, tuple[np.ndarray, np.ndarray] | None]) -> None:
        self.faces = faces

    def face(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        return self.faces[int(image[0, 0, 0])]


def _image(tag: int) -> np.ndarray:
    image = np.zeros((8, 8, 3), np.uint8)
    image[0, 0, 0] = tag
    return image


def test_video_metrics_pair_driver_and_output_frames() -> None:
    portrait = (_face(), np.zeros(128))
    faces: dict[int, tuple[np.ndarray, np.ndarray] | None] = {0: portrait}
    drivers, outputs = [], []
    for i in range(6):
        # The output opens its mouth and turns with the driver (scaled), except frame 5 has no face.
        faces[10 + i] = (_face(gap=2.0 * i, nose_x=3.0 * i), np.zeros(128))
        faces[100 + i] = None if i == 5 else (_face(gap=1.0 * i + 1, nose_x=-1.0 * i), np.full(128, 0.05))
        drivers.append(_image(10 + i))
        outputs.append(_image(100 + i))
    result = bq.video_metrics(_image(0), drivers, outputs, measure=_FakeMeasure(faces))  # type: ignore[arg-type]
    assert result["face_rate"] == pytest.approx(5 / 6)
    assert result["id_dist"] == pytest.approx(0.05 * np.sqrt(128))
    assert result["mouth_corr"] == pytest.approx(1.0)
    assert result["yaw_corr"] == pytest.approx(-1.0)  # the output turns the other way
    assert result["paired_faces"] == 5


def test_video_metrics_without_any_output_face() -> None:
    faces = {0: (_face(), np.zeros(128)), 1: (_face(), np.zeros(128)), 2: None}
    result = bq.video_metrics(_image(0), [_image(1)] * 3, [_image(2)] * 3, measure=_FakeMeasure(faces))  # type: ignore[arg-type]
    assert result["face_rate"] == 0.0 and result["id_dist"] is None
    assert result["mouth_corr"] is None and result["yaw_corr"] is None


def test_side_by_side_puts_the_three_images_in_a_row() -> None:
    row = bq.side_by_side(
        np.zeros((512, 512, 3), np.uint8),
        np.zeros((256, 256, 3), np.uint8),
        np.zeros((384, 512, 3), np.uint8),
    )
    assert row.shape == (256, 256 + 4 + 256 + 4 + 341, 3)


@pytest.mark.slow
def test_bench_quality_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole bench on a random-weight checkpoint, short: its last stdout line is the JSON."""
    frames_dir = tmp_path / "frames"
    code = bq.main(
        [
            "--checkpoint",
            str(tmp_path / "missing.pt"),  # -> random weights, as make bench-e2e does
            "--frames-dir",
            str(frames_dir),
            "--seconds",
            "1",
            "--samples",
            "25",
            "--holdout-identities",
            "1",
            "--holdout-pairs-per-identity",
            "2",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        "face_rate",
        "id_dist",
        "mouth_corr",
        "yaw_corr",
        "recon_psnr",
        "reenact_psnr",
        "copy_source_psnr",
        "animate_ms_per_frame",
    ):
        assert key in result
    # Two drivers (the astronaut's talking clip, the synthetic person turning), 25 frames each.
    assert result["samples"] == 50 and 0.0 <= result["face_rate"] <= 1.0
    assert result["random_weights"] is True and result["frames"] == 50
    assert set(result["drivers"]) == {"astronaut_talking", "synthetic_turning"}
    assert all(driver["samples"] == 25 for driver in result["drivers"].values())
    assert result["copy_source_psnr"] > 5 and result["animate_ms_per_frame"] > 0
    assert result["output_size"] == [512, 512]  # the astronaut's own framing, pasted back
    assert len(list(frames_dir.glob("astronaut_talking_*.png"))) == 4
    assert len(list(frames_dir.glob("synthetic_turning_*.png"))) == 4


def test_summarise_pools_the_clips_frames() -> None:
    """Two clips' frames pooled: face_rate over all sampled frames, correlations over all pairs."""
    a = {
        "found": [True, True, False],
        "distances": [0.4, 0.6],
        "mouth_driver": [0.0, 1.0],
        "mouth_output": [0.1, 0.9],
        "yaw_driver": [0.0, 0.1],
        "yaw_output": [0.0, 0.1],
        "portrait_face_found": [True],
    }
    b = {
        "found": [True],
        "distances": [0.5],
        "mouth_driver": [2.0],
        "mouth_output": [2.2],
        "yaw_driver": [0.3],
        "yaw_output": [0.25],
        "portrait_face_found": [True],
    }
    result = bq.summarise([a, b])
    assert result["samples"] == 4 and result["face_rate"] == 0.75
    assert abs(result["id_dist"] - 0.5) < 1e-9
    assert result["mouth_corr"] > 0.99 and result["yaw_corr"] > 0.95 and result["paired_faces"] == 3


def test_synthetic_driver_turns_talks_and_shows_a_face() -> None:
    """The second driver turns its head and opens its mouth, and dlib finds its face."""
    frames = [bq.synthetic_driver_frame(i, 25, 256) for i in (0, 10, 20)]
    measure = bq.FaceMeasure()
    faces = [measure.face(f) for f in frames]
    assert all(f is not None for f in faces)
    yaws = [bq.nose_yaw(f[0]) for f in faces]  # type: ignore[index]
    mouths = [bq.inner_lip_gap(f[0]) for f in faces]  # type: ignore[index]
    assert max(yaws) - min(yaws) > 0.1
    assert mouths[2] > mouths[0] + 0.05
