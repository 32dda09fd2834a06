"""Portrait matte: a soft alpha of the person (head, hair, neck, shoulders) for one portrait.

Why: the paper reconstructs from portraits whose background is removed (our synthetic training
heads are rendered on black), and paste-back must put the animated head over the original without
dragging the portrait's old background along. This module only computes the alpha; blacking out and
compositing belong to their callers.

How: MediaPipe's selfie segmentation (Apache-2.0, in the ``mediapipe`` wheel; 256x256 input) gives a
coarse person probability. Its edges are a few pixels off at portrait resolution and blurred by the
network's upsampling, so they are refined with a guided filter (He, Sun, Tang, ECCV 2010) steered by
the image: the alpha becomes locally a linear function of the image intensity, which snaps it to the
real hair/skin/background edges while keeping it soft where the image itself is soft (hair strands).
A final contrast stretch (``MatteConfig.stretch``) removes the faint haze the filter leaves in flat
regions. Everything runs at most at ``working_side`` px (cost ~10-20 ms) and the result is resized to
the image.

Limits (measured): on the astronaut the head-and-hair region agrees with a hand-drawn mask with IoU
0.97 (everything above the ears plus the head below them; tests/face/test_matte.py). On floating
synthetic heads on black the head agrees with the known coverage the same way (0.97-0.995), but the
network paints a neck and shoulders below the ears (its training data always has a body); on such
renders that area is black anyway. The guided filter moves a misplaced edge onto the image edge; it
does not recover detail the 256x256 network missed (thin strands come out as a soft fringe).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from shared.face.align import AlignedCrop
from shared.face.detection import as_rgb_uint8
from shared.face.mediapipe_runtime import SegmentationGraph


@dataclass(frozen=True)
class MatteConfig:
    # Segmentation and refinement run on a copy whose longer side is at most this many pixels.
    working_side: int = 512
    # Guided filter window radius as a fraction of the working image's longer side, and its
    # regulariser (guide intensities in [0, 1]): smaller eps follows image edges more closely.
    guided_radius: float = 0.012
    guided_eps: float = 1e-3
    # Linear stretch of the refined alpha: values <= low -> 0, >= high -> 1.
    stretch: tuple[float, float] = (0.1, 0.9)


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Grey-guide guided filter: (H, W) guide in [0, 1], (H, W) source -> (H, W) float32.

    Per window, ``q = a * I + b`` with ``a = cov(I, p) / (var(I) + eps)``, ``b = mean(p) - a mean(I)``;
    ``a`` and ``b`` are then averaged over the windows covering each pixel (box filters, O(1) per
    pixel whatever the radius).
    """
    guide = guide.astype(np.float32)
    source = source.astype(np.float32)
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide), box(source)
    cov_ip = box(guide * source) - mean_i * mean_p
    var_i = box(guide * guide) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


class PortraitMatter:
    """``source_matte(image)`` -> (H, W) float32 alpha in [0, 1]; ``crop_matte`` for an aligned crop."""

    def __init__(self, config: MatteConfig | None = None, segmenter: SegmentationGraph | None = None) -> None:
        self.config = config or MatteConfig()
        self._segmenter = segmenter

    @property
    def segmenter(self) -> SegmentationGraph:
        if self._segmenter is None:  # created on first use: the graph costs ~20 ms to build
            self._segmenter = SegmentationGraph()
        return self._segmenter

    def source_matte(self, image: np.ndarray) -> np.ndarray:
        """Soft alpha of the person in ``image`` ((H, W[, 3/4]) uint8 or float in [0, 1])."""
        image = as_rgb_uint8(image)
        height, width = image.shape[:2]
        scale = min(1.0, self.config.working_side / max(height, width))
        work = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            work = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        coarse = np.clip(self.segmenter.process(work), 0.0, 1.0)
        guide = cv2.cvtColor(work, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        radius = max(2, round(self.config.guided_radius * max(work.shape[:2])))
        refined = guided_filter(guide, coarse, radius, self.config.guided_eps)
        low, high = self.config.stretch
        alpha = np.clip((refined - low) / max(high - low, 1e-6), 0.0, 1.0)
        if work is not image:
            alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(alpha, dtype=np.float32)

    @staticmethod
    def crop_matte(source_matte: np.ndarray, crop: AlignedCrop) -> np.ndarray:
        """The matte in ``crop``'s framing ((S, S) float32), sampled like the crop's pixels (the crop
        replicates the image border outward, so does this)."""
        alpha = cv2.warpAffine(
            np.asarray(source_matte, dtype=np.float32),
            crop.matrix,
            (crop.size, crop.size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return np.clip(alpha, 0.0, 1.0)
