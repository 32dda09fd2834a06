import math
import pickle
from functools import lru_cache

import numpy as np
import pytest
import torch

from shared.face.fit import head_pose_angles, pose_from_angles
from shared.face.pipeline import AnalyzerConfig, FaceAnalyzer, FrameAnalysis
from shared.face.smoothing import OneEuroConfig, OneEuroFilter, OneEuroState, SmoothingConfig, frame_jitter
from tests.face.analysis_support import CROP_SIZE, analyzer, model, synthetic_landmarks

NUM_FRAMES = 60


def test_one_euro_keeps_constants_and_converges_after_a_step() -> None:
    filt = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=0.0), fps=25.0)
    state = OneEuroState()
    constant = filt.filter_sequence(np.full((10, 3), 2.5), state)
    assert np.allclose(constant, 2.5)
    stepped = filt.filter_sequence(np.full((50, 3), 3.5), state)
    assert 2.5 < stepped[0, 0] < 3.5  # lags the step ...
    assert abs(stepped[-1, 0] - 3.5) < 1e-3  # ... and converges
    # A higher beta follows fast motion with less lag.
    slow = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=0.0), 25.0).filter_sequence(
        np.arange(20.0), OneEuroState()
    )
    fast = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=1.0), 25.0).filter_sequence(
        np.arange(20.0), OneEuroState()
    )
    assert abs(fast[-1] - 19.0) < abs(slow[-1] - 19.0)


def test_disabled_filter_is_the_identity() -> None:
    values = np.random.default_rng(0).normal(size=(7, 4))
    out = OneEuroFilter(OneEuroConfig(enabled=False), 25.0).filter_sequence(values, OneEuroState())
    assert np.array_equal(out, values)
    with pytest.raises(ValueError):
        OneEuroConfig(min_cutoff=0.0)


@lru_cache(maxsize=1)
def noisy_sequence() -> tuple[torch.Tensor, list[np.ndarray], np.ndarray, np.ndarray]:
    """A smooth head turn and mouth opening with 1 px (at 128 px) landmark noise."""
    generator = torch.Generator().manual_seed(5)
    alpha = 0.7 * torch.randn(1, model().num_identity, generator=generator)
    time = np.arange(NUM_FRAMES)
    yaw = 15.0 * np.sin(2 * math.pi * time / 100.0)
    jaw = 0.4 + 0.3 * np.sin(2 * math.pi * time / 50.0)
    pairs = [pose_from_angles(float(y), 5.0, 0.0) for y in yaw]
    rotation = torch.stack([p[0] for p in pairs])
    translation = torch.stack([p[1] for p in pairs])
    beta = torch.zeros(NUM_FRAMES, model().num_expression)
    beta[:, model().expression_index("jaw_open")] = torch.from_numpy(jaw).float()
    uv = synthetic_landmarks(alpha, beta, rotation, translation, noise=1.0 / CROP_SIZE, seed=6)
    return alpha, [frame.numpy() for frame in uv], yaw, jaw


def tracks(frames: list[FrameAnalysis]) -> tuple[np.ndarray, np.ndarray]:
    yaw = head_pose_angles(torch.stack([f.rotation for f in frames]).double())[:, 0].numpy()
    jaw = torch.stack([f.beta for f in frames])[:, model().expression_index("jaw_open")].numpy()
    return yaw, jaw


@lru_cache(maxsize=1)
def unsmoothed_analyzer() -> FaceAnalyzer:
    config = AnalyzerConfig(smoothing=SmoothingConfig(enabled=False))
    return FaceAnalyzer(model(), CROP_SIZE, config, detector=analyzer().detector)


def test_smoothing_lowers_jitter_of_a_noisy_sequence() -> None:
    alpha, uv, true_yaw, true_jaw = noisy_sequence()
    raw_yaw, raw_jaw = tracks(unsmoothed_analyzer().analyze_landmarks(uv, identity=alpha))
    smooth_yaw, smooth_jaw = tracks(analyzer().analyze_landmarks(uv, identity=alpha))
    # Jitter of the error (estimate - truth): the noise, not the motion itself.
    yaw_factor = frame_jitter(raw_yaw - true_yaw) / frame_jitter(smooth_yaw - true_yaw)
    jaw_factor = frame_jitter(raw_jaw - true_jaw) / frame_jitter(smooth_jaw - true_jaw)
    print(f"jitter reduction: yaw x{yaw_factor:.1f}, jaw x{jaw_factor:.1f}")
    # Expression smoothing is deliberately light (a mouth opening must pass within one frame, see the
    # lag test below), so it removes less expression noise than the pose filters do.
    assert yaw_factor > 2.5 and jaw_factor > 1.4
    # ... without drifting from the truth (the filter opens its cutoff when the motion is fast).
    assert np.abs(smooth_yaw - true_yaw).mean() < 1.2
    assert np.abs(smooth_jaw - true_jaw).mean() < 0.07
    assert np.abs(raw_yaw - true_yaw).mean() < 1.2


def test_chunked_analysis_matches_one_pass() -> None:
    alpha, uv, _, _ = noisy_sequence()
    whole = analyzer().analyze_landmarks(uv, identity=alpha)
    state = analyzer().start_video(identity=alpha)
    chunked: list[FrameAnalysis] = []
    for start in range(0, NUM_FRAMES, 16):
        chunked += analyzer().analyze_landmarks(uv[start : start + 16], state=state)
        # A job may resume in another process: the state survives pickling.
        state = pickle.loads(pickle.dumps(state))
    assert [f.index for f in chunked] == list(range(NUM_FRAMES))
    for a, b in zip(whole, chunked):
        assert torch.allclose(a.rotation, b.rotation, atol=2e-3)
    # Warm starts differ between the two runs; weakly observed blendshapes (video frames use a weak
    # expression prior) may settle apart in a few frames (mouth_stretch by up to ~0.07), not overall.
    difference = (torch.stack([a.beta for a in whole]) - torch.stack([b.beta for b in chunked])).abs()
    assert difference.max() < 0.1 and difference.mean() < 5e-3


def test_frames_without_a_face_hold_the_last_pose_and_are_counted() -> None:
    alpha, uv, _, _ = noisy_sequence()
    items: list[np.ndarray | None] = [None, None] + list(uv[:5]) + [None, None, None] + list(uv[5:8])
    state = analyzer().start_video(identity=alpha)
    frames = analyzer().analyze_landmarks(items[:6], state=state) + analyzer().analyze_landmarks(
        items[6:], state=state
    )
    assert [f.face_found for f in frames] == [item is not None for item in items]
    assert state.frames_without_face == 5 and state.frames_seen == len(items)
    # Before any face: neutral expression, frontal head.
    assert torch.equal(frames[0].beta, torch.zeros(model().num_expression))
    assert head_pose_angles(frames[0].rotation.double()).abs().max() < 1e-6
    # Missing frames hold the last good (smoothed) values, across the chunk boundary too.
    for held in (7, 8, 9):
        assert torch.equal(frames[held].rotation, frames[6].rotation)
        assert torch.equal(frames[held].beta, frames[6].beta)
        assert torch.equal(frames[held].camera, frames[6].camera)
    assert frames[8].landmarks is None and frames[8].raw_beta is None


def test_expression_smoothing_does_not_lag_a_mouth_opening_by_more_than_one_frame() -> None:
    from shared.face.smoothing import OneEuroFilter, OneEuroState, SmoothingConfig

    config = SmoothingConfig()
    expression = OneEuroFilter(config.expression, config.fps)
    state = OneEuroState()
    rng = np.random.default_rng(0)
    closed = [expression.step(np.array([0.02 * rng.standard_normal()]), state)[0] for _ in range(20)]
    opened = [expression.step(np.array([0.8]), state)[0] for _ in range(3)]
    assert opened[0] >= 0.8 * 0.8  # most of the step on the frame it happens
    assert opened[1] >= 0.95 * 0.8  # and all but a trace one frame later
    # At rest the noise is still smoothed.
    assert np.std(closed[5:]) < 0.02
