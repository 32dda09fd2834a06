import math

import numpy as np
import pytest
import torch

from shared.face.fit import (
    FitConfig,
    LandmarkFitter,
    axis_angle_to_matrix,
    compose_pose,
    head_pose_angles,
    invert_pose,
    matrix_to_axis_angle,
    pose_from_angles,
)
from shared.model import cameras
from tests.face.analysis_support import analyzer, model, synthetic_landmarks

ANGLES = [(10.0, -5.0, 3.0), (-25.0, 8.0, -6.0), (30.0, 0.0, 0.0), (0.0, 15.0, 0.0), (-8.0, -12.0, 10.0)]


def poses(angles: list[tuple[float, float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [
        pose_from_angles(*a, translation=(0.01 * i, -0.01 * i, 2.6 + 0.05 * i)) for i, a in enumerate(angles)
    ]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def rotation_error_degrees(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    relative = a.double() @ b.double().transpose(-1, -2)
    return torch.rad2deg(matrix_to_axis_angle(relative).norm(dim=-1))


def expressions(jaw: list[float], blink: list[float]) -> torch.Tensor:
    beta = torch.zeros(len(jaw), model().num_expression)
    beta[:, model().expression_index("jaw_open")] = torch.tensor(jaw)
    beta[:, model().expression_index("blink_left")] = torch.tensor(blink)
    return beta


def test_rotation_helpers_round_trip() -> None:
    vectors = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.0, 0.0], [1.0, 0.5, -1.2]], dtype=torch.float64)
    matrices = axis_angle_to_matrix(vectors)
    assert torch.allclose(
        matrices @ matrices.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    )
    assert torch.allclose(matrix_to_axis_angle(matrices), vectors, atol=1e-9)
    for yaw, pitch, roll in ANGLES:
        rotation, _ = pose_from_angles(yaw, pitch, roll)
        assert torch.allclose(
            head_pose_angles(rotation), torch.tensor([yaw, pitch, roll], dtype=torch.float64), atol=1e-6
        )


def test_pose_composition_and_inverse() -> None:
    a = pose_from_angles(20, -5, 3, (0.1, 0.0, 2.5))
    b = pose_from_angles(-7, 12, 1, (0.0, 0.2, 2.9))
    identity = compose_pose(invert_pose(*a), a)
    assert torch.allclose(identity[0], torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(identity[1], torch.zeros(3, dtype=torch.float64), atol=1e-12)
    point = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    r, t = compose_pose(a, b)
    assert torch.allclose(r @ point + t, a[0] @ (b[0] @ point + b[1]) + a[1])


def test_yaw_convention_through_the_camera_module() -> None:
    # Positive yaw turns the face toward the subject's left (+x): the nose tip moves to image right,
    # and in the head frame (EG3D cameras) the camera sits on the -x side.
    rotation, translation = pose_from_angles(20.0, 0.0, 0.0)
    camera = cameras.camera_from_head_pose(rotation.float(), translation.float())
    cam2world, _ = cameras.from_vector(camera)
    assert cam2world[0, 3] < 0  # seen from the head, the camera moved toward -x
    uv = synthetic_landmarks(
        torch.zeros(1, model().num_identity),
        torch.zeros(1, model().num_expression),
        rotation[None],
        translation[None],
    )
    assert uv[0, 30, 0] > 0.5  # the nose tip points to image right


def test_frame_fit_recovers_pose_and_expression_from_noisy_landmarks() -> None:
    generator = torch.Generator().manual_seed(1)
    alpha = 0.8 * torch.randn(1, model().num_identity, generator=generator)
    beta = expressions([0.0, 0.3, 0.6, 0.9, 0.45], [0.8, 0.0, 0.5, 0.2, 1.0])
    rotation, translation = poses(ANGLES)
    # 0.4 px of noise at a 128 px crop.
    observed = synthetic_landmarks(alpha, beta, rotation, translation, noise=0.003, seed=2)
    fit = analyzer().fitter.fit_frames(observed, alpha)
    assert (rotation_error_degrees(fit.rotation, rotation) < 2.0).all()
    jaw = model().expression_index("jaw_open")
    blink = model().expression_index("blink_left")
    assert torch.allclose(fit.beta[:, jaw], beta[:, jaw], atol=0.08)
    assert torch.allclose(fit.beta[:, blink], beta[:, blink], atol=0.15)
    assert torch.allclose(fit.translation.double(), translation, atol=0.1)
    assert (fit.rms_error < 0.006).all()
    assert (fit.beta >= 0).all() and (fit.beta <= 1).all()  # the procedural model's bounds


def test_portrait_fit_recovers_rotation_with_unknown_identity() -> None:
    generator = torch.Generator().manual_seed(3)
    alpha = 0.8 * torch.randn(1, model().num_identity, generator=generator)
    beta = expressions([0.5, 0.0, 0.2], [0.0, 0.9, 0.0])
    rotation, translation = poses(ANGLES[:3])
    observed = synthetic_landmarks(alpha, beta, rotation, translation, noise=0.002, seed=4)
    for i in range(3):
        fit = analyzer().fitter.fit_portrait(observed[i])
        assert rotation_error_degrees(fit.rotation, rotation[i : i + 1]).item() < 2.0
        assert abs(fit.beta[0, 0].item() - beta[i, 0].item()) < 0.15
    # Several views of one person share one identity.
    joint = analyzer().fitter.fit_portrait(observed)
    assert torch.equal(joint.alpha[0], joint.alpha[1])
    assert (rotation_error_degrees(joint.rotation, rotation) < 2.0).all()


def test_fitted_camera_reprojects_the_landmarks_on_the_crop() -> None:
    alpha = torch.zeros(1, model().num_identity)
    beta = expressions([0.2], [0.0])
    rotation, translation = poses([(12.0, -6.0, 2.0)])
    observed = synthetic_landmarks(alpha, beta, rotation, translation)
    fitter = LandmarkFitter(model(), FitConfig(camera_radius=None))
    fit = fitter.fit_frames(observed, alpha)
    uv, _ = cameras.project_points(model().landmarks(alpha, fit.beta), fit.camera)
    assert (uv.double() - observed).abs().max() < 2e-3
    # With EG3D's radius normalisation the camera sits at 2.7 from the head.
    cam2world, _ = cameras.from_vector(analyzer().fitter.camera(fit.rotation, fit.translation))
    assert cam2world[0, :3, 3].norm().item() == pytest.approx(cameras.DEFAULT_RADIUS, abs=1e-4)


def test_unbounded_expressions_for_pca_models() -> None:
    fitter = LandmarkFitter(model(), FitConfig(expression_bounds=None))
    assert fitter.expression_bounds is None
    alpha = torch.zeros(1, model().num_identity)
    beta = torch.zeros(1, model().num_expression)
    beta[0, model().expression_index("jaw_open")] = -0.3  # outside the blendshape range
    rotation, translation = poses([(0.0, 0.0, 0.0)])
    fit = fitter.fit_frames(synthetic_landmarks(alpha, beta, rotation, translation), alpha)
    assert fit.beta[0, 0].item() == pytest.approx(-0.3, abs=0.08)
    bounded = analyzer().fitter.fit_frames(synthetic_landmarks(alpha, beta, rotation, translation), alpha)
    assert bounded.beta[0, 0].item() == 0.0


def test_bad_landmarks_are_rejected() -> None:
    with pytest.raises(ValueError):
        analyzer().fitter.fit_frames(np.zeros((2, 5, 2)), torch.zeros(1, model().num_identity))
    bad = np.full((68, 2), 0.5)
    bad[3, 0] = math.nan
    with pytest.raises(ValueError):
        analyzer().fitter.fit_portrait(bad)
