"""Landmark fitting: 68 landmarks -> identity alpha, expression beta, head pose (R, t) -> EG3D camera.

The fit runs in the normalised coordinates of an aligned crop (``shared/face/align.py``) with the
fixed normalised focal of the camera model (``cameras.DEFAULT_FOCAL``, principal point at the crop
centre), so the fitted camera applies to the crop as is.

Model: ``x_cam = R (mean + A alpha + E beta) + t``; ``u = f x/z + 0.5``, ``v = f y/z + 0.5``.
``R`` maps the head (world) frame into OpenCV camera axes; a frontal head has
``R = diag(1, -1, -1)`` and ``t = (0, 0, 2.7)``.

Solver: batched Levenberg-Marquardt with analytic Jacobians (the problem is tiny: 68 points,
6 pose + K_exp parameters per frame, K_id shared). Identity shared by several frames is solved
with a Schur complement, so the cost stays linear in the number of frames. Robustness: per-landmark
weights (the jaw contour low: 3DMM contour vertices do not follow the silhouette when the head
turns, and dlib's contour placement differs from the model's) and a Huber loss. Priors: Gaussian
on alpha (unit variance by construction of the bases), L2 on beta, and optional box bounds on beta
(the procedural model's blendshapes are meaningful in [0, 1]; PCA expression bases have none).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from shared.face.errors import FitFailedError
from shared.face.morphable import MorphableModel
from shared.model import cameras

# Rotation of a frontal head (world -> OpenCV camera axes): x stays, y and z flip.
FRONTAL_ROTATION = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))


def default_landmark_weights(jaw: float = 0.2, brows: float = 0.6, inner_lips: float = 1.0) -> Tensor:
    weights = torch.ones(68, dtype=torch.float64)
    weights[0:17] = jaw
    weights[17:27] = brows
    weights[60:68] = inner_lips
    return weights


def expression_bounds_for(model: MorphableModel) -> tuple[float, float] | None:
    """Blendshape models (procedural) are bounded to [0, 1]; PCA expression models are not."""
    return (0.0, 1.0) if model.name.startswith("procedural") else None


@dataclass(frozen=True)
class FitConfig:
    focal: float = cameras.DEFAULT_FOCAL
    initial_distance: float = cameras.DEFAULT_RADIUS
    # Radius the EG3D camera centre is rescaled to (EG3D's preprocessing); None keeps the fitted one.
    camera_radius: float | None = cameras.DEFAULT_RADIUS
    # Landmark noise scale in normalised crop units: residuals are divided by it, so the priors below
    # read as "this many standard deviations".
    landmark_sigma: float = 0.01
    identity_prior: float = 1.0  # alpha ~ N(0, 1 / identity_prior)
    expression_prior: float = 0.5
    # Video frames (fit_frames): weaker, because the mesh's refined eyelids and lips move only ~1 px
    # at 128 px for a blink and 0.5 swallowed half of it (synthetic renders: eye_corr_fit 0.66 ->
    # 0.88, mouth_corr_fit 0.91 -> 0.99). Portraits keep 0.5: with an unknown identity a weak prior
    # lets expressions absorb head rotation (5 deg instead of < 2 on the rotation test).
    frame_expression_prior: float = 0.1
    # "auto": from the model (see expression_bounds_for); None: unbounded; or (low, high).
    expression_bounds: tuple[float, float] | None | str = "auto"
    jaw_weight: float = 0.2
    brow_weight: float = 0.6
    huber_delta: float = 2.5  # in units of landmark_sigma
    portrait_pose_iterations: int = 8
    portrait_iterations: int = 40
    frame_iterations: int = 8
    initial_damping: float = 1e-3


@dataclass(frozen=True)
class FitResult:
    """Batched fit output (float32 tensors)."""

    alpha: Tensor  # (B, K_id)
    beta: Tensor  # (B, K_exp)
    rotation: Tensor  # (B, 3, 3) head -> camera
    translation: Tensor  # (B, 3)
    camera: Tensor  # (B, 25) EG3D vectors
    rms_error: Tensor  # (B,) RMS landmark error in normalised crop units (weighted landmarks only)

    def __len__(self) -> int:
        return int(self.beta.shape[0])


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch ops on one intra-op thread, restoring the setting after.

    The fit is hundreds of tiny ops (68 points, matrices of ~20x20): a second thread only adds
    barrier waits, and on a loaded 2-core machine those waits dominate (16 frames: ~40 ms on one
    thread vs 0.3-2 s on two, measured). ``torch.set_num_threads`` is process-wide, so a caller
    running a network in another Python thread at the same moment would see one thread too.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- rotation helpers ------------------------------------------------------------------------
def skew(vectors: Tensor) -> Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices."""
    x, y, z = vectors.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*vectors.shape, 3)


def axis_angle_to_matrix(vectors: Tensor) -> Tensor:
    """Rodrigues: (..., 3) rotation vectors -> (..., 3, 3)."""
    angle = vectors.norm(dim=-1, keepdim=True).unsqueeze(-1)
    k = skew(vectors)
    small = angle < 1e-8
    safe = torch.where(small, torch.ones_like(angle), angle)
    sin_term = torch.where(small, 1.0 - angle**2 / 6.0, torch.sin(safe) / safe)
    cos_term = torch.where(small, 0.5 - angle**2 / 24.0, (1.0 - torch.cos(safe)) / safe**2)
    eye = torch.eye(3, dtype=vectors.dtype, device=vectors.device).expand_as(k)
    return eye + sin_term * k + cos_term * (k @ k)


def matrix_to_axis_angle(matrices: Tensor) -> Tensor:
    """(..., 3, 3) rotations -> (..., 3) rotation vectors (angle < pi)."""
    trace = matrices[..., 0, 0] + matrices[..., 1, 1] + matrices[..., 2, 2]
    cos = ((trace - 1.0) / 2.0).clamp(-1.0, 1.0)
    angle = torch.acos(cos)
    axis = torch.stack(
        [
            matrices[..., 2, 1] - matrices[..., 1, 2],
            matrices[..., 0, 2] - matrices[..., 2, 0],
            matrices[..., 1, 0] - matrices[..., 0, 1],
        ],
        dim=-1,
    )
    sin = torch.sin(angle)
    small = sin.abs() < 1e-6
    scale = torch.where(small, torch.full_like(angle, 0.5), angle / (2.0 * torch.where(small, 1.0, sin)))
    return axis * scale.unsqueeze(-1)


def head_rotation(rotation: Tensor) -> Tensor:
    """Head rotation in world axes as seen from the frontal camera: ``rotation = F @ head``."""
    return FRONTAL_ROTATION.to(rotation) @ rotation


def rotation_from_head(head: Tensor) -> Tensor:
    return FRONTAL_ROTATION.to(head) @ head


def head_pose_angles(rotation: Tensor) -> Tensor:
    """(..., 3, 3) camera rotations -> (..., 3) (yaw, pitch, roll) in degrees.

    World-axis Euler decomposition ``head = Ry(yaw) Rx(pitch) Rz(roll)``: yaw turns the face toward
    the subject's left (+x), pitch about +x (positive turns the face down), roll about +z.
    """
    head = head_rotation(rotation)
    yaw = torch.atan2(head[..., 0, 2], head[..., 2, 2])
    pitch = torch.asin((-head[..., 1, 2]).clamp(-1.0, 1.0))
    roll = torch.atan2(head[..., 1, 0], head[..., 1, 1])
    return torch.rad2deg(torch.stack([yaw, pitch, roll], dim=-1))


def pose_from_angles(
    yaw_deg: float,
    pitch_deg: float,
    roll_deg: float = 0.0,
    translation: tuple[float, float, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """(rotation (3, 3), translation (3,)) float64 of a head with the given angles (inverse of
    ``head_pose_angles``), by default at the frontal camera's distance."""
    yaw, pitch, roll = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    ry = torch.tensor(
        [[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]],
        dtype=torch.float64,
    )
    rx = torch.tensor(
        [[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]],
        dtype=torch.float64,
    )
    rz = torch.tensor(
        [[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]],
        dtype=torch.float64,
    )
    head = ry @ rx @ rz
    t = torch.tensor(translation or (0.0, 0.0, cameras.DEFAULT_RADIUS), dtype=torch.float64)
    return rotation_from_head(head), t


def invert_pose(rotation: Tensor, translation: Tensor) -> tuple[Tensor, Tensor]:
    rot_t = rotation.transpose(-1, -2)
    return rot_t, -(rot_t @ translation.unsqueeze(-1)).squeeze(-1)


def compose_pose(first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``first ∘ second``: apply ``second`` then ``first`` (x -> R1 (R2 x + t2) + t1)."""
    r1, t1 = first
    r2, t2 = second
    return r1 @ r2, (r1 @ t2.unsqueeze(-1)).squeeze(-1) + t1


# --- the fitter ------------------------------------------------------------------------------
@dataclass
class _Problem:
    """Landmark rows of the model in float64."""

    mean: Tensor  # (68, 3)
    identity: Tensor  # (K_id, 68, 3)
    expression: Tensor  # (K_exp, 68, 3)
    weights: Tensor  # (68,)
    bounds: tuple[float, float] | None

    def __post_init__(self) -> None:
        self.identity_flat = self.identity.reshape(self.identity.shape[0], -1)  # (K_id, 204)
        self.expression_flat = self.expression.reshape(self.expression.shape[0], -1)
        self.identity_columns = self.identity.permute(1, 2, 0).contiguous()  # (68, 3, K_id)
        self.expression_columns = self.expression.permute(1, 2, 0).contiguous()


class LandmarkFitter:
    """Fits a morphable model to 68 landmarks given in normalised crop coordinates."""

    def __init__(self, model: MorphableModel, config: FitConfig | None = None) -> None:
        self.model = model
        self.config = config or FitConfig()
        idx = model.landmark_indices
        bounds = self.config.expression_bounds
        if bounds == "auto":
            bounds = expression_bounds_for(model)
        self.problem = _Problem(
            mean=model.mean_shape[idx].to(torch.float64),
            identity=model.id_basis[:, idx].to(torch.float64),
            expression=model.exp_basis[:, idx].to(torch.float64),
            weights=default_landmark_weights(self.config.jaw_weight, self.config.brow_weight),
            bounds=bounds,  # type: ignore[arg-type]
        )

    @property
    def expression_bounds(self) -> tuple[float, float] | None:
        return self.problem.bounds

    # --- public API --------------------------------------------------------------------------
    def fit_portrait(self, landmarks_uv: Tensor | np.ndarray) -> FitResult:
        """Identity, expression and pose of one or several views of the SAME person (shared alpha).

        ``landmarks_uv``: (B, 68, 2) or (68, 2) normalised crop coordinates.
        """
        observed = _as_landmarks(landmarks_uv)
        batch = observed.shape[0]
        alpha = torch.zeros(1, self.model.num_identity, dtype=torch.float64)
        beta = torch.zeros(batch, self.model.num_expression, dtype=torch.float64)
        rotation = FRONTAL_ROTATION.expand(batch, 3, 3).clone()
        translation = torch.tensor([0.0, 0.0, self.config.initial_distance], dtype=torch.float64).repeat(
            batch, 1
        )
        # Pose first (the mean face is a good enough shape to find the head), then everything.
        with single_threaded():
            return self._fit_portrait(observed, alpha, beta, rotation, translation)

    def _fit_portrait(
        self, observed: Tensor, alpha: Tensor, beta: Tensor, rotation: Tensor, translation: Tensor
    ) -> FitResult:
        state = (alpha, beta, rotation, translation)
        state = self._solve(
            observed, *state, self.config.portrait_pose_iterations, fit_alpha=False, fit_beta=False
        )
        state = self._solve(observed, *state, self.config.portrait_iterations, fit_alpha=True, fit_beta=True)
        return self._result(observed, *state)

    def fit_frames(
        self,
        landmarks_uv: Tensor | np.ndarray,
        alpha: Tensor,
        *,
        initial_rotation: Tensor | None = None,
        initial_translation: Tensor | None = None,
        initial_beta: Tensor | None = None,
        iterations: int | None = None,
    ) -> FitResult:
        """Expression and pose per frame with identity ``alpha`` (1 or B, K_id) held fixed.

        Frames are independent and solved as one batch; warm starts (e.g. the previous frame's
        solution, (3, 3)/(B, 3, 3) etc.) cut the iterations needed.
        """
        observed = _as_landmarks(landmarks_uv)
        batch = observed.shape[0]
        alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, self.model.num_identity)
        rotation = (
            FRONTAL_ROTATION.expand(batch, 3, 3).clone()
            if initial_rotation is None
            else torch.as_tensor(initial_rotation, dtype=torch.float64).expand(batch, 3, 3).clone()
        )
        translation = (
            torch.tensor([0.0, 0.0, self.config.initial_distance], dtype=torch.float64).repeat(batch, 1)
            if initial_translation is None
            else torch.as_tensor(initial_translation, dtype=torch.float64).expand(batch, 3).clone()
        )
        beta = (
            torch.zeros(batch, self.model.num_expression, dtype=torch.float64)
            if initial_beta is None
            else torch.as_tensor(initial_beta, dtype=torch.float64).expand(batch, -1).clone()
        )
        with single_threaded():
            state = self._solve(
                observed,
                alpha,
                beta,
                rotation,
                translation,
                iterations or self.config.frame_iterations,
                fit_alpha=False,
                fit_beta=True,
                expression_prior=self.config.frame_expression_prior,
            )
            return self._result(observed, *state)

    def camera(self, rotation: Tensor, translation: Tensor) -> Tensor:
        return cameras.camera_from_head_pose(
            rotation.to(torch.float32),
            translation.to(torch.float32),
            radius=self.config.camera_radius,
            focal=self.config.focal,
        )

    def project(self, alpha: Tensor, beta: Tensor, rotation: Tensor, translation: Tensor) -> Tensor:
        """(B, 68, 2) normalised coordinates of the model's landmarks under a pose (this fitter's focal)."""
        points = self._landmarks3d(
            torch.as_tensor(alpha, dtype=torch.float64), torch.as_tensor(beta, dtype=torch.float64)
        )
        uv, _, _ = self._project(
            points,
            torch.as_tensor(rotation, dtype=torch.float64),
            torch.as_tensor(translation, dtype=torch.float64),
        )
        return uv

    # --- internals ---------------------------------------------------------------------------
    def _landmarks3d(self, alpha: Tensor, beta: Tensor) -> Tensor:
        p = self.problem
        # Plain matmuls on flattened bases: einsum picks slow paths for these tiny float64 shapes.
        offsets = alpha @ p.identity_flat + beta @ p.expression_flat
        return p.mean + offsets.reshape(-1, 68, 3)

    def _project(
        self, points: Tensor, rotation: Tensor, translation: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        rotated = points @ rotation.transpose(-1, -2)
        cam = rotated + translation.unsqueeze(-2)
        depth = cam[..., 2:3].clamp_min(1e-3)
        uv = self.config.focal * cam[..., :2] / depth + 0.5
        return uv, cam, rotated

    def _robust_cost(self, residual: Tensor) -> Tensor:
        """Per-frame Huber cost of (B, 68, 2) residuals in sigma units, landmark-weighted."""
        norm = residual.norm(dim=-1)
        delta = self.config.huber_delta
        rho = torch.where(norm <= delta, 0.5 * norm**2, delta * (norm - 0.5 * delta))
        return (rho * self.problem.weights).sum(-1)

    def _prior_cost(
        self, alpha: Tensor, beta: Tensor, fit_alpha: bool, expression_prior: float
    ) -> tuple[Tensor, Tensor]:
        """(per-frame beta prior (B,), shared alpha prior scalar)."""
        beta_cost = 0.5 * expression_prior * (beta**2).sum(-1)
        alpha_cost = (
            0.5 * self.config.identity_prior * (alpha**2).sum()
            if fit_alpha
            else torch.zeros((), dtype=alpha.dtype)
        )
        return beta_cost, alpha_cost

    def _clamp_beta(self, beta: Tensor) -> Tensor:
        if self.problem.bounds is None:
            return beta
        low, high = self.problem.bounds
        return beta.clamp(low, high)

    def _solve(
        self,
        observed: Tensor,
        alpha: Tensor,
        beta: Tensor,
        rotation: Tensor,
        translation: Tensor,
        iterations: int,
        *,
        fit_alpha: bool,
        fit_beta: bool,
        expression_prior: float | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Levenberg-Marquardt. With ``fit_alpha`` the (1, K_id) alpha is shared by all frames."""
        p = self.problem
        cfg = self.config
        prior = cfg.expression_prior if expression_prior is None else expression_prior
        batch = observed.shape[0]
        num_beta = beta.shape[1] if fit_beta else 0
        num_frame = 6 + num_beta
        num_alpha = alpha.shape[1] if fit_alpha else 0
        inv_sigma = 1.0 / cfg.landmark_sigma
        # Per-frame damping; a shared alpha couples all frames so they then accept or reject together.
        damping = torch.full((batch,), cfg.initial_damping, dtype=torch.float64)
        eye_frame = torch.eye(num_frame, dtype=torch.float64)

        def total_cost(a: Tensor, b: Tensor, r: Tensor, t: Tensor) -> Tensor:
            a_full = a.expand(batch, -1)
            uv, _, _ = self._project(self._landmarks3d(a_full, b), r, t)
            data = self._robust_cost((uv - observed) * inv_sigma)
            beta_cost, alpha_cost = self._prior_cost(a, b, fit_alpha, prior)
            cost = data + (beta_cost if fit_beta else 0.0)
            return cost.sum().expand(batch) + alpha_cost if fit_alpha else cost

        cost = total_cost(alpha, beta, rotation, translation)
        for _ in range(iterations):
            alpha_full = alpha.expand(batch, -1)
            points = self._landmarks3d(alpha_full, beta)
            uv, cam, rotated = self._project(points, rotation, translation)
            residual = (uv - observed) * inv_sigma  # (B, 68, 2)
            # IRLS weights of the Huber loss times the landmark weights.
            norm = residual.norm(dim=-1).clamp_min(1e-12)
            irls = torch.where(norm <= cfg.huber_delta, torch.ones_like(norm), cfg.huber_delta / norm)
            weight = (irls * p.weights).unsqueeze(-1).expand(-1, -1, 2).reshape(batch, -1)  # (B, 136)

            # d(uv)/d(cam) (B, 68, 2, 3), scaled to sigma units.
            z = cam[..., 2].clamp_min(1e-3)
            fz = cfg.focal * inv_sigma / z
            zero = torch.zeros_like(z)
            j_cam = torch.stack(
                [fz, zero, -fz * cam[..., 0] / z, zero, fz, -fz * cam[..., 1] / z], dim=-1
            ).reshape(batch, 68, 2, 3)
            blocks = [j_cam @ -skew(rotated), j_cam]  # rotation (left-multiplied increment), translation
            if fit_beta:
                rotated_exp = rotation.unsqueeze(1) @ p.expression_columns  # (B, 68, 3, K_exp)
                blocks.append(j_cam @ rotated_exp)
            j_frame = torch.cat(blocks, dim=-1).reshape(batch, 136, num_frame)
            r_flat = residual.reshape(batch, 136)
            jw = j_frame * weight.unsqueeze(-1)
            h_ff = jw.transpose(1, 2) @ j_frame  # (B, P, P)
            g_f = (jw.transpose(1, 2) @ r_flat.unsqueeze(-1)).squeeze(-1)  # (B, P)
            if fit_beta:
                h_ff[:, 6:, 6:] += prior * torch.eye(num_beta, dtype=torch.float64)
                g_f[:, 6:] += prior * beta
                if p.bounds is not None:
                    # Active set: a coefficient on its bound whose gradient pushes it further out is
                    # held this iteration (decoupled from the rest), so the free ones get an exact
                    # Gauss-Newton step instead of a clamped, skewed one.
                    low, high = p.bounds
                    held = ((beta <= low + 1e-9) & (g_f[:, 6:] > 0)) | (
                        (beta >= high - 1e-9) & (g_f[:, 6:] < 0)
                    )
                    held_full = torch.cat([torch.zeros(batch, 6, dtype=torch.bool), held], dim=1)
                    couple = held_full.unsqueeze(1) | held_full.unsqueeze(2)
                    h_ff = torch.where(couple, torch.zeros_like(h_ff), h_ff)
                    h_ff = h_ff + torch.diag_embed(held_full.to(h_ff.dtype))
                    g_f = torch.where(held_full, torch.zeros_like(g_f), g_f)

            diag_f = torch.diagonal(h_ff, dim1=1, dim2=2)
            h_ff_damped = h_ff + damping.view(-1, 1, 1) * (torch.diag_embed(diag_f) + 1e-6 * eye_frame)
            if fit_alpha:
                rotated_id = rotation.unsqueeze(1) @ p.identity_columns  # (B, 68, 3, K_id)
                j_alpha = (j_cam @ rotated_id).reshape(batch, 136, num_alpha)
                jaw_ = j_alpha * weight.unsqueeze(-1)
                h_aa = (jaw_.transpose(1, 2) @ j_alpha).sum(0) + cfg.identity_prior * torch.eye(
                    num_alpha, dtype=torch.float64
                )
                g_a = (jaw_.transpose(1, 2) @ r_flat.unsqueeze(-1)).squeeze(-1).sum(
                    0
                ) + cfg.identity_prior * alpha[0]
                h_af = jaw_.transpose(1, 2) @ j_frame  # (B, K_id, P)
                mu = damping[0]
                h_aa_damped = h_aa + mu * (
                    torch.diag_embed(torch.diagonal(h_aa)) + 1e-6 * torch.eye(num_alpha, dtype=torch.float64)
                )
                # Schur complement on the shared block.
                solved = torch.linalg.solve(
                    h_ff_damped, torch.cat([h_af.transpose(1, 2), g_f.unsqueeze(-1)], dim=-1)
                )
                ff_inv_fa, ff_inv_g = solved[..., :num_alpha], solved[..., num_alpha:]
                schur = h_aa_damped - (h_af @ ff_inv_fa).sum(0)
                rhs = -g_a + (h_af @ ff_inv_g).sum(0).squeeze(-1)
                delta_alpha = torch.linalg.solve(schur, rhs)
                delta_frame = -(ff_inv_g.squeeze(-1) + (ff_inv_fa @ delta_alpha))
                new_alpha = alpha + delta_alpha.unsqueeze(0)
            else:
                delta_frame = -torch.linalg.solve(h_ff_damped, g_f)
                new_alpha = alpha

            new_rotation = axis_angle_to_matrix(delta_frame[:, :3]) @ rotation
            new_translation = translation + delta_frame[:, 3:6]
            new_beta = self._clamp_beta(beta + delta_frame[:, 6:]) if fit_beta else beta
            new_cost = total_cost(new_alpha, new_beta, new_rotation, new_translation)
            finite = torch.isfinite(new_cost)
            accept = finite & (new_cost < cost)
            if fit_alpha:
                accept = accept.all().expand(batch)
                if bool(accept[0]):
                    alpha = new_alpha
            keep = accept.view(-1, 1)
            rotation = torch.where(keep.unsqueeze(-1), new_rotation, rotation)
            translation = torch.where(keep, new_translation, translation)
            beta = torch.where(keep, new_beta, beta)
            cost = torch.where(accept, new_cost, cost)
            damping = torch.where(accept, (damping * 0.3).clamp_min(1e-7), (damping * 10.0).clamp_max(1e6))
        return alpha, beta, rotation, translation

    def _result(
        self, observed: Tensor, alpha: Tensor, beta: Tensor, rotation: Tensor, translation: Tensor
    ) -> FitResult:
        batch = observed.shape[0]
        alpha_full = alpha.expand(batch, -1)
        if not (
            torch.isfinite(alpha).all() and torch.isfinite(beta).all() and torch.isfinite(rotation).all()
        ) or bool((translation[:, 2] <= 0).any()):
            raise FitFailedError("the landmark fit diverged; the landmarks may be wrong")
        uv, _, _ = self._project(self._landmarks3d(alpha_full, beta), rotation, translation)
        weights = (self.problem.weights > 0.5).to(uv.dtype)
        squared = ((uv - observed) ** 2).sum(-1)
        rms = torch.sqrt((squared * weights).sum(-1) / weights.sum())
        return FitResult(
            alpha=alpha_full.to(torch.float32).clone(),
            beta=beta.to(torch.float32),
            rotation=rotation.to(torch.float32),
            translation=translation.to(torch.float32),
            camera=self.camera(rotation, translation),
            rms_error=rms.to(torch.float32),
        )


def _as_landmarks(landmarks_uv: Tensor | np.ndarray) -> Tensor:
    observed = torch.as_tensor(
        np.asarray(landmarks_uv) if not isinstance(landmarks_uv, Tensor) else landmarks_uv
    )
    observed = observed.to(torch.float64)
    if observed.ndim == 2:
        observed = observed.unsqueeze(0)
    if observed.ndim != 3 or observed.shape[1:] != (68, 2):
        raise ValueError(f"expected (B, 68, 2) landmarks, got {tuple(observed.shape)}")
    if not torch.isfinite(observed).all():
        raise ValueError("landmarks contain NaN or infinite values")
    return observed
