"""Face alignment: a similarity crop of a fixed framing, and its inverse (paste back).

Convention. The crop is the similarity transform (rotation + uniform scale + translation) that
moves three anchor points of the detected 68 landmarks (the two eye centres and the mouth centre)
onto where the same anchors of the morphable model's MEAN shape project under
``cameras.frontal_camera()``. A crop of a real face is therefore framed like a synthetic render of
the model at the frontal camera, and landmarks in the crop can be fitted directly with the model's
normalised focal (``cameras.DEFAULT_FOCAL``, principal point at the crop centre).

Coordinates. ``matrix`` (2x3) maps source pixel-index coordinates (x = column, y = row, pixel
centres at integers, as dlib and ``cv2.warpAffine``) to crop pixel-index coordinates.
Normalised crop coordinates (those of ``cameras.project_points``) are ``u = (x + 0.5) / size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from shared.face.errors import ImageInvalidError
from shared.face.morphable import MorphableModel
from shared.model import cameras

# Anchor groups in iBUG-68 order: subject's right eye, left eye, outer lips.
ANCHOR_GROUPS: tuple[slice, ...] = (slice(36, 42), slice(42, 48), slice(48, 60))


def anchor_points(landmarks: np.ndarray) -> np.ndarray:
    """(3, 2) eye centres and mouth centre of (68, 2) landmarks."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    return np.stack([landmarks[group].mean(axis=0) for group in ANCHOR_GROUPS])


def estimate_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares 2D similarity (Umeyama, no reflection): 2x3 matrix with target ~ M @ [source; 1]."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    centred_s, centred_t = source - mean_s, target - mean_t
    variance_s = (centred_s**2).sum() / len(source)
    if variance_s < 1e-12:
        raise ImageInvalidError("degenerate landmarks: anchor points coincide")
    covariance = centred_t.T @ centred_s / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign) / variance_s)
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mean_t - scale * rotation @ mean_s
    return matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


@dataclass(frozen=True)
class AlignmentTemplate:
    """Where the three anchors land, in normalised crop coordinates [0, 1] (u right, v down)."""

    anchors: np.ndarray  # (3, 2)

    @classmethod
    def from_model(cls, model: MorphableModel, camera: torch.Tensor | None = None) -> AlignmentTemplate:
        """Project the model's mean-shape landmarks with the frontal camera (or ``camera``)."""
        camera = cameras.frontal_camera() if camera is None else camera
        alpha, beta = model.zero_coefficients(1)
        landmarks3d = model.landmarks(alpha, beta)
        uv, _ = cameras.project_points(landmarks3d, camera.reshape(1, 25))
        return cls(anchors=anchor_points(uv[0].numpy()))

    def pixel_anchors(self, size: int) -> np.ndarray:
        """Anchors in crop pixel-index coordinates of a ``size`` x ``size`` crop."""
        return self.anchors * size - 0.5


@dataclass(frozen=True)
class AlignedCrop:
    image: np.ndarray  # (size, size, 3) uint8 RGB
    matrix: np.ndarray  # (2, 3) source px -> crop px
    inverse_matrix: np.ndarray  # (2, 3) crop px -> source px
    size: int
    source_shape: tuple[int, int]  # (height, width) of the source image

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        return apply_affine(self.matrix, points)

    def to_source(self, points: np.ndarray) -> np.ndarray:
        return apply_affine(self.inverse_matrix, points)

    def to_normalized(self, crop_points: np.ndarray) -> np.ndarray:
        """Crop pixel-index coordinates -> normalised [0, 1] coordinates of the camera model."""
        return (np.asarray(crop_points, dtype=np.float64) + 0.5) / self.size

    def from_normalized(self, uv: np.ndarray) -> np.ndarray:
        return np.asarray(uv, dtype=np.float64) * self.size - 0.5

    @property
    def scale(self) -> float:
        """Crop pixels per source pixel."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of ``outer(inner(p))``."""
    outer, inner = np.asarray(outer, dtype=np.float64), np.asarray(inner, dtype=np.float64)
    return np.concatenate([outer[:, :2] @ inner[:, :2], outer[:, :2] @ inner[:, 2:] + outer[:, 2:]], axis=1)


def rescale_matrix(from_shape: tuple[int, int], to_shape: tuple[int, int]) -> np.ndarray:
    """2x3 map between the pixel-index grids of one image at two sizes, (height, width) each: pixel
    centres at integers, the image's outer edges onto each other (``cv2.resize``'s convention)."""
    fy, fx = to_shape[0] / from_shape[0], to_shape[1] / from_shape[1]
    return np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5]])


def resized_matrix(matrix: np.ndarray, from_size: int, to_size: int) -> np.ndarray:
    """Compose a source->crop matrix with the crop->crop' rescale between pixel-index grids: the map
    from source pixels to a ``to_size`` square image in the crop's framing (e.g. a rendered frame)."""
    return compose_affine(rescale_matrix((from_size, from_size), (to_size, to_size)), matrix)


_resized_matrix = resized_matrix  # the name it had before other modules reused it


class FaceAligner:
    """Crops faces to ``size`` x ``size`` with the template's framing."""

    def __init__(
        self, template: AlignmentTemplate, size: int, border_mode: int = cv2.BORDER_REPLICATE
    ) -> None:
        if size < 16:
            raise ValueError("crop size must be at least 16")
        self.template = template
        self.size = size
        self.border_mode = border_mode

    def matrix_for(self, landmarks: np.ndarray, *, keep_roll: bool = False) -> np.ndarray:
        """Source -> crop matrix for (68, 2) landmarks.

        ``keep_roll=True`` drops the similarity's rotation (scale + translation only), so in-plane
        head rotation stays in the crop and is fitted as camera roll: used for driving frames, whose
        roll must reach the output. Portraits are de-rolled (the canonical framing).
        """
        source = anchor_points(landmarks)
        target = self.template.pixel_anchors(self.size)
        matrix = estimate_similarity(source, target)
        if keep_roll:
            scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
            matrix = np.zeros((2, 3))
            matrix[:, :2] = scale * np.eye(2)
            matrix[:, 2] = target.mean(axis=0) - scale * source.mean(axis=0)
        return matrix

    def crop(self, image: np.ndarray, landmarks: np.ndarray, *, keep_roll: bool = False) -> AlignedCrop:
        matrix = self.matrix_for(landmarks, keep_roll=keep_roll)
        return self.crop_with_matrix(image, matrix)

    def crop_with_matrix(self, image: np.ndarray, matrix: np.ndarray) -> AlignedCrop:
        height, width = image.shape[:2]
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        source, warp = image, matrix
        # warpAffine samples bilinearly without a low-pass filter: shrinking a large face by more
        # than 2x aliases. Pre-shrink with area averaging so the warp itself scales by about 0.5-1.
        if scale < 0.5:
            pre = min(1.0, 2.0 * scale)
            pre_w, pre_h = max(1, round(width * pre)), max(1, round(height * pre))
            source = cv2.resize(image, (pre_w, pre_h), interpolation=cv2.INTER_AREA)
            to_small = np.array(
                [
                    [pre_w / width, 0.0, 0.5 * pre_w / width - 0.5],
                    [0.0, pre_h / height, 0.5 * pre_h / height - 0.5],
                ]
            )
            warp = matrix @ np.vstack([invert_affine(to_small), [0.0, 0.0, 1.0]])
        crop = cv2.warpAffine(
            source, warp, (self.size, self.size), flags=cv2.INTER_LINEAR, borderMode=self.border_mode
        )
        return AlignedCrop(
            image=crop,
            matrix=matrix,
            inverse_matrix=invert_affine(matrix),
            size=self.size,
            source_shape=(height, width),
        )


def feather_mask(size: int, feather: float) -> np.ndarray:
    """(size, size) float32 mask, 1 inside, ramping to 0 over ``feather`` x size at the edges."""
    ramp = max(feather * size, 1e-6)
    coords = np.arange(size, dtype=np.float32) + 0.5
    edge = np.minimum(coords, size - coords)
    one_d = np.clip(edge / ramp, 0.0, 1.0)
    return np.minimum(one_d[:, None], one_d[None, :])


def paste_back(
    frame: np.ndarray,
    crop: AlignedCrop,
    original_image: np.ndarray,
    *,
    feather: float = 0.08,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Place an output frame (rendered in the crop's framing, any square size) back into the original.

    ``frame``: (S, S, 3) uint8 or float in [0, 1]; ``mask``: optional (S, S) float in [0, 1]
    restricting what is pasted (e.g. a head matte); it is combined with a feathered border so the
    seam does not show. Returns an image like ``original_image`` (same shape and dtype).
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[0] != frame.shape[1] or frame.shape[2] != 3:
        raise ValueError(f"frame must be (S, S, 3), got {frame.shape}")
    height, width = original_image.shape[:2]
    if (height, width) != crop.source_shape:
        raise ValueError(f"original image is {width}x{height}, the crop came from {crop.source_shape[::-1]}")
    frame_size = frame.shape[0]
    to_frame = resized_matrix(crop.matrix, crop.size, frame_size)
    to_source = invert_affine(to_frame)
    alpha = feather_mask(frame_size, feather)
    if mask is not None:
        alpha = alpha * np.clip(np.asarray(mask, dtype=np.float32).reshape(frame_size, frame_size), 0.0, 1.0)
    frame_f = frame.astype(np.float32) / 255.0 if frame.dtype == np.uint8 else frame.astype(np.float32)
    warped = cv2.warpAffine(frame_f, to_source, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)
    warped_alpha = cv2.warpAffine(alpha, to_source, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)
    original_f = (
        original_image.astype(np.float32) / 255.0
        if original_image.dtype == np.uint8
        else original_image.astype(np.float32)
    )
    blended = original_f * (1.0 - warped_alpha[..., None]) + warped * warped_alpha[..., None]
    if original_image.dtype == np.uint8:
        return np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return blended.astype(original_image.dtype)
