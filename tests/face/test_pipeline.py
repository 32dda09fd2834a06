import dataclasses

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from shared.face.errors import FaceTooSmallError, ImageInvalidError, NoFaceError
from shared.face.fit import head_pose_angles, pose_from_angles
from shared.face.pipeline import AnalyzerConfig, FaceAnalyzer, MotionRetargeter
from shared.face.smoothing import SmoothingConfig
from shared.model import cameras
from tests.face.analysis_support import (
    CROP_SIZE,
    analyzer,
    astronaut,
    astronaut_portrait,
    model,
    moved_astronaut,
    roll_of,
    synthetic_landmarks,
)


def test_astronaut_portrait_is_near_frontal_and_complete() -> None:
    portrait = astronaut_portrait()
    yaw, pitch, roll = portrait.head_angles
    assert abs(yaw) < 15 and abs(pitch) < 15 and abs(roll) < 10
    assert portrait.detection.num_faces == 1
    assert portrait.camera.shape == (25,) and portrait.alpha.shape == (model().num_identity,)
    assert portrait.beta.shape == (model().num_expression,)
    assert portrait.keep_mask.shape == (CROP_SIZE, CROP_SIZE)
    assert portrait.rms_error < 0.02  # ~2.5 px at 128: real landmarks vs the procedural model's
    # She smiles: the fit says so.
    smile = max(
        portrait.beta[model().expression_index(name)].item() for name in ("smile_left", "smile_right")
    )
    assert smile > 0.3
    # The camera looks at the head from the front at EG3D's radius.
    cam2world, _ = cameras.from_vector(portrait.camera)
    assert cam2world[2, 3] > 2.5 and cam2world[:3, 3].norm().item() == pytest.approx(2.7, abs=1e-3)


def test_portrait_camera_applies_to_the_crop_directly() -> None:
    # The fitted model's landmarks, projected with the portrait's EG3D camera (radius-normalised),
    # land on the detected landmarks in the crop: the camera needs no other crop bookkeeping.
    portrait = astronaut_portrait()
    landmarks3d = model().landmarks(portrait.alpha[None], portrait.beta[None])
    uv, _ = cameras.project_points(landmarks3d, portrait.camera[None])
    projected_px = uv[0].numpy() * CROP_SIZE - 0.5
    errors = np.linalg.norm(projected_px - portrait.landmarks, axis=1)
    assert np.median(errors[17:]) < 2.0  # inner face, pixels at 128
    assert errors[17:].max() < 6.0


def test_large_portrait_is_detected_downscaled_and_fits_alike() -> None:
    large = cv2.resize(astronaut(), (1536, 1536), interpolation=cv2.INTER_CUBIC)
    portrait = analyzer().analyze_portrait(large)
    assert portrait.detection.detect_scale < 0.5  # the detector ran on a downscaled copy
    reference = astronaut_portrait()
    assert np.allclose(portrait.head_angles, reference.head_angles, atol=2.0)
    # Same framing: the crops of the 1x and 3x images are nearly the same picture.
    assert np.abs(portrait.crop.astype(int) - reference.crop.astype(int)).mean() < 8.0


def test_portrait_analysis_is_reproducible() -> None:
    again = analyzer().analyze_portrait(astronaut())
    reference = astronaut_portrait()
    assert np.array_equal(again.crop, reference.crop)
    assert torch.allclose(again.camera, reference.camera, atol=1e-6)
    assert torch.allclose(again.beta, reference.beta, atol=1e-6)


@pytest.mark.parametrize(
    ("image", "error"),
    [
        (np.full((300, 300, 3), 255, np.uint8), ImageInvalidError),
        (data.coffee(), NoFaceError),
        (
            np.pad(
                cv2.resize(data.astronaut(), (200, 200)), ((150, 150), (150, 150), (0, 0)), constant_values=90
            ),
            FaceTooSmallError,
        ),
    ],
    ids=["blank", "coffee", "tiny-face"],
)
def test_bad_portraits_raise_typed_errors(image: np.ndarray, error: type) -> None:
    with pytest.raises(error):
        analyzer().analyze_portrait(image)


def test_video_frames_follow_the_head_and_hold_through_a_blank_frame() -> None:
    raw = FaceAnalyzer(
        model(),
        CROP_SIZE,
        AnalyzerConfig(smoothing=SmoothingConfig(enabled=False)),
        detector=analyzer().detector,
    )
    state = raw.start_video()
    frames = [moved_astronaut(i) for i in range(10)]
    frames[6] = np.zeros_like(frames[6])  # a black frame in the middle of the clip
    results = raw.analyze_frames(frames[:5], state=state) + raw.analyze_frames(frames[5:], state=state)
    assert state.identity is not None and state.identity.shape == (model().num_identity,)
    assert [r.face_found for r in results] == [i != 6 for i in range(10)]
    assert state.frames_without_face == 1 and state.frames_seen == 10
    assert torch.equal(results[6].rotation, results[5].rotation)
    # In-plane rotation of the frame shows up as head roll (crops of driving frames keep roll).
    rolls = head_pose_angles(torch.stack([r.rotation for r in results]).double())[:, 2].numpy()
    for i in range(10):
        if i != 6:
            assert rolls[i] - rolls[0] == pytest.approx(roll_of(i) - roll_of(0), abs=2.0)
    assert all(r.landmarks is not None and r.crop_matrix is not None for r in results if r.face_found)


def test_invalid_driving_frames_raise() -> None:
    with pytest.raises(ImageInvalidError):
        analyzer().analyze_frames([np.zeros((64, 64), np.uint8)])
    with pytest.raises(ImageInvalidError):
        analyzer().analyze_frames([np.zeros((64, 64, 3), np.float32)])


def driver_sequence() -> list[np.ndarray]:
    """A different person: neutral and frontal first, then the mouth opens and the head turns."""
    generator = torch.Generator().manual_seed(11)
    alpha = 0.8 * torch.randn(1, model().num_identity, generator=generator)
    beta = torch.zeros(6, model().num_expression)
    beta[:, model().expression_index("jaw_open")] = torch.tensor([0.0, 0.0, 0.2, 0.4, 0.6, 0.6])
    pairs = [pose_from_angles(y, 0.0, 0.0) for y in (0.0, 0.0, 5.0, 10.0, 15.0, 15.0)]
    uv = synthetic_landmarks(
        alpha, beta, torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), noise=0.001
    )
    return [frame.numpy() for frame in uv]


def expected_openings(portrait_jaw: float, driver_jaws: list[float], scale: float = 1.0) -> list[float]:
    """MotionRetargeter's rule for an opening coefficient, written out independently:
    max(portrait + s * (driver - least driver value so far), s * driver), clamped to [0, 1]."""
    out, rest = [], driver_jaws[0]
    for value in driver_jaws:
        rest = min(rest, value)
        out.append(min(1.0, max(portrait_jaw + scale * (value - rest), scale * value)))
    return out


def test_relative_mode_maps_the_drivers_neutral_start_to_the_portraits_own_state() -> None:
    portrait = astronaut_portrait()
    driver_frames = analyzer().analyze_landmarks(driver_sequence())
    retargeter = analyzer().retargeter(portrait, mode="relative")
    out = retargeter.retarget(driver_frames)
    jaw = model().expression_index("jaw_open")
    others = [k for k in range(model().num_expression) if k != jaw]
    assert torch.allclose(out[0].beta[others], portrait.beta.clamp(0, 1)[others], atol=1e-6)
    assert torch.allclose(out[0].rotation, portrait.rotation, atol=1e-6)
    assert torch.allclose(out[0].camera, portrait.camera, atol=1e-5)
    # The mouth opens by as much as the driver's opens beyond its rest (the least it has shown so
    # far; never less than the portrait's own or the driver's), the other expressions and the head
    # turn by the driver's change since its first frame.
    driver_jaws = [frame.beta[jaw].item() for frame in driver_frames]
    expected = expected_openings(portrait.beta[jaw].item(), driver_jaws)
    assert [result.beta[jaw].item() for result in out] == pytest.approx(expected, abs=1e-5)
    assert driver_jaws[-1] - driver_jaws[0] > 0.3
    # The smiling portrait's mouth (jaw_open 0.22) opens by the driver's whole opening.
    assert (out[-1].beta[jaw] - out[0].beta[jaw]).item() == pytest.approx(
        driver_jaws[-1] - min(driver_jaws), abs=1e-5
    )
    turned = head_pose_angles(out[-1].rotation.double())[0].item() - portrait.head_angles[0]
    driver_turn = (
        head_pose_angles(driver_frames[-1].rotation.double())[0]
        - head_pose_angles(driver_frames[0].rotation.double())[0]
    )
    assert turned == pytest.approx(driver_turn.item(), abs=1.5)
    # Expression scale halves the transferred expression change.
    half = analyzer().retargeter(portrait, mode="relative", expression_scale=0.5).retarget(driver_frames)
    expected = portrait.beta + 0.5 * (driver_frames[-1].beta - driver_frames[0].beta)
    expected[jaw] = expected_openings(portrait.beta[jaw].item(), driver_jaws, scale=0.5)[-1]
    assert torch.allclose(half[-1].beta, expected.clamp(0, 1), atol=1e-6)


def test_relative_mode_opens_the_mouth_with_a_driver_that_starts_mid_sentence() -> None:
    """A driver whose first frame has the mouth open: relative to that frame, every less-open frame
    shut the portrait's mouth below its own and the open ones opened it only by the difference."""
    portrait = astronaut_portrait()
    frames = analyzer().analyze_landmarks(driver_sequence())
    jaw = model().expression_index("jaw_open")
    opened = max(frames, key=lambda f: f.beta[jaw].item())
    closed = min(frames, key=lambda f: f.beta[jaw].item())
    sentence = [opened, closed, opened]  # starts open, closes, opens again
    retargeter = analyzer().retargeter(portrait, mode="relative")
    # Two chunks: the driver's rest carries over (the worker retargets chunk by chunk).
    out = retargeter.retarget(sentence[:2]) + retargeter.retarget(sentence[2:])
    portrait_jaw = portrait.beta[jaw].item()
    open_jaw, closed_jaw = opened.beta[jaw].item(), closed.beta[jaw].item()
    # Before the driver has closed its mouth: as far as the driver's, never below the portrait's.
    assert out[0].beta[jaw].item() == pytest.approx(min(1.0, max(portrait_jaw, open_jaw)), abs=1e-5)
    assert out[1].beta[jaw].item() == pytest.approx(max(portrait_jaw, closed_jaw), abs=1e-5)
    # Once it has: the portrait's mouth opens by the driver's whole opening.
    assert out[2].beta[jaw].item() == pytest.approx(min(1.0, portrait_jaw + open_jaw - closed_jaw), abs=1e-5)
    assert out[2].beta[jaw] > out[1].beta[jaw] + 0.3
    others = [k for k in range(model().num_expression) if k != jaw]
    assert torch.equal(out[0].beta[others], out[2].beta[others])
    # A frame without a face (held values) tells nothing about the rest.
    held = dataclasses.replace(closed, face_found=False)
    again = analyzer().retargeter(portrait, mode="relative").retarget([opened, held, opened])
    assert again[2].beta[jaw].item() == pytest.approx(again[0].beta[jaw].item(), abs=1e-6)
    # Bodies without a jaw coefficient (BFM) keep the plain relative rule.
    plain = MotionRetargeter(portrait, mode="relative").retarget(sentence)
    assert plain[1].beta[jaw].item() == pytest.approx(
        portrait_jaw + closed.beta[jaw].item() - opened.beta[jaw].item(), abs=1e-5
    )


def test_absolute_mode_uses_the_drivers_own_expression_and_camera() -> None:
    driver_frames = analyzer().analyze_landmarks(driver_sequence())
    out = (
        analyzer()
        .retargeter(astronaut_portrait(), mode="absolute", expression_scale=1.0)
        .retarget(driver_frames)
    )
    for frame, result in zip(driver_frames, out):
        assert torch.allclose(result.beta, frame.beta)
        assert torch.allclose(result.camera, frame.camera, atol=1e-6)
    with pytest.raises(ValueError):
        MotionRetargeter(astronaut_portrait(), mode="sideways")  # type: ignore[arg-type]


def test_relative_mode_before_the_driver_shows_a_face() -> None:
    state = analyzer().start_video()
    empty = analyzer().analyze_landmarks([None, None], state=state)
    retargeter = analyzer().retargeter(astronaut_portrait())
    out = retargeter.retarget(empty)
    assert retargeter.reference is None
    assert torch.allclose(out[0].camera, astronaut_portrait().camera, atol=1e-5)
