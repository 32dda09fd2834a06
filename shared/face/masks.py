"""Eye / brow / mouth masks ("keep" masks) for the canonical and appearance branches.

Convention (paper §3 / the released code): ``keep`` is 1 where the source image is kept and 0 over
brows, eyes, lips and mouth interior, so expression-specific pixels do not leak into the canonical
tri-planes; the eyes are dilated (the released code dilates the parsed eyes twice with a 7x7 kernel
at 512 px).

No face-parsing weights are available offline, so ``LandmarkFaceParser`` draws the regions from the
68 landmarks. A parsing network can replace it by implementing the ``FaceParser`` protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

_SUBPIXEL_BITS = 4  # cv2 drawing with 1/16 px precision
_SUBPIXEL = 1 << _SUBPIXEL_BITS


@runtime_checkable
class FaceParser(Protocol):
    """Anything that can produce a keep mask for an aligned crop."""

    def keep_mask(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(S, S, 3) crop + (68, 2) landmarks in crop pixel coordinates -> (S, S) float32 in {0, 1},
        1 = keep, 0 = eyes / brows / mouth."""
        ...


@dataclass(frozen=True)
class MaskConfig:
    # Eye dilation radius as a fraction of the crop side (two 7x7 dilations at 512 px ~ 6/512).
    eye_dilation: float = 6.0 / 512.0
    # Brow stroke thickness and mouth dilation as fractions of the inter-ocular distance.
    brow_thickness: float = 0.22
    mouth_dilation: float = 0.04
    include_brows: bool = True


def _points(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, dtype=np.float64) * _SUBPIXEL).astype(np.int32)


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    pixels = round(radius)
    if pixels <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask, kernel)


class LandmarkFaceParser:
    """Regions drawn from iBUG-68 landmarks."""

    def __init__(self, config: MaskConfig | None = None) -> None:
        self.config = config or MaskConfig()

    def regions(self, size: int | tuple[int, int], landmarks: np.ndarray) -> dict[str, np.ndarray]:
        """Binary uint8 masks {"eyes", "brows", "mouth"} of shape (H, W)."""
        height, width = (size, size) if isinstance(size, int) else size
        landmarks = np.asarray(landmarks, dtype=np.float64)
        if landmarks.shape != (68, 2):
            raise ValueError(f"expected (68, 2) landmarks, got {landmarks.shape}")
        inter_ocular = float(np.linalg.norm(landmarks[42:48].mean(0) - landmarks[36:42].mean(0)))

        eyes = np.zeros((height, width), np.uint8)
        for eye in (landmarks[36:42], landmarks[42:48]):
            cv2.fillPoly(eyes, [_points(eye)], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
        eyes = _dilate(eyes, self.config.eye_dilation * max(height, width))

        brows = np.zeros((height, width), np.uint8)
        if self.config.include_brows:
            thickness = max(1, round(self.config.brow_thickness * inter_ocular))
            for brow in (landmarks[17:22], landmarks[22:27]):
                cv2.polylines(brows, [_points(brow)], False, 1, thickness, cv2.LINE_8, _SUBPIXEL_BITS)

        mouth = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mouth, [_points(landmarks[48:60])], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
        mouth = _dilate(mouth, self.config.mouth_dilation * inter_ocular)
        return {"eyes": eyes, "brows": brows, "mouth": mouth}

    def keep_mask(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        parts = self.regions((height, width), landmarks)
        removed = parts["eyes"] | parts["brows"] | parts["mouth"]
        return (1 - removed).astype(np.float32)
