"""Image and face metrics of the evaluation (paper §4.2), written in the project.

Images are float arrays/tensors in [0, 1], (B, 3, H, W). SSIM follows Wang et al. 2004 with an
11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, 'valid' borders (the scikit-image
``gaussian_weights=True, use_sample_covariance=False`` convention).

Face metrics use dlib (``face-recognition-models`` files):
- AKD: mean distance between the 68 dlib landmarks of the output and of the reference image;
- CSIM: cosine similarity of dlib's 128-d face-recognition descriptors. This is NOT ArcFace (the
  paper's CSIM uses ArcFace); values are not comparable with published tables.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image mean absolute error (B,)."""
    return (pred - target).abs().flatten(1).mean(1)


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB (B,); identical images give +inf."""
    mse = (pred - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def ssim(
    pred: Tensor, target: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5
) -> Tensor:
    """Per-image SSIM (B,), channels averaged. Images smaller than the window use the largest odd
    window that fits."""
    window = min(window, pred.shape[-1], pred.shape[-2])
    window -= 1 - window % 2
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum()).to(pred.dtype)
    channels = pred.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, window, window).contiguous()

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, kernel, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_p, mu_t = blur(pred), blur(target)
    var_p = blur(pred * pred) - mu_p**2
    var_t = blur(target * target) - mu_t**2
    cov = blur(pred * target) - mu_p * mu_t
    value = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return value.flatten(1).mean(1)


def keypoint_distance(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean Euclidean distance between corresponding keypoints (N, 2)."""
    return float(
        np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(target, np.float64), axis=-1).mean()
    )


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


class DlibFaceMetrics:
    """68 landmarks in a given box and 128-d dlib face descriptors (not ArcFace)."""

    _lock = threading.Lock()

    def __init__(self) -> None:
        import dlib

        from shared.face.detect import face_models_dir, landmark_model_path

        self._dlib = dlib
        self.predictor = _predictor(str(landmark_model_path()))
        self.recogniser = _recogniser(str(face_models_dir() / "dlib_face_recognition_resnet_model_v1.dat"))

    def _shape(self, image: np.ndarray, box: np.ndarray):  # type: ignore[no-untyped-def]
        left, top, right, bottom = (int(round(float(v))) for v in box)
        return self.predictor(image, self._dlib.rectangle(left, top, right, bottom))

    def landmarks(self, image_uint8: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(68, 2) landmarks of an (H, W, 3) uint8 image inside box (left, top, right, bottom)."""
        with self._lock:
            shape = self._shape(np.ascontiguousarray(image_uint8), box)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def descriptor(self, image_uint8: np.ndarray, box: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(image_uint8)
        with self._lock:
            shape = self._shape(image, box)
            return np.array(self.recogniser.compute_face_descriptor(image, shape), dtype=np.float32)


@lru_cache(maxsize=2)
def _predictor(path: str):  # type: ignore[no-untyped-def]
    import dlib

    return dlib.shape_predictor(path)


@lru_cache(maxsize=1)
def _recogniser(path: str):  # type: ignore[no-untyped-def]
    import dlib

    return dlib.face_recognition_model_v1(path)


def box_from_landmarks(landmarks: np.ndarray, margin: float = 0.15) -> np.ndarray:
    """A face box around (68, 2) landmarks, enlarged by ``margin`` of its size on each side."""
    lo, hi = landmarks.min(0), landmarks.max(0)
    size = hi - lo
    lo, hi = lo - margin * size, hi + margin * size
    return np.array([lo[0], lo[1], hi[0], hi[1]], dtype=np.float64)
