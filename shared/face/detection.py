"""What every face detector backend shares (``shared/face/detect.py``: dlib; ``shared/face/mesh.py``:
MediaPipe): the configuration, the results, the video tracking state, the input check and the
size/border checks that turn a detection into ``FaceTooSmallError`` / ``FaceAtBorderError``.

Both backends import this module and neither imports the other, so there is no import loop between
them; ``shared.face.detect.make_detector`` picks the backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from shared.face.errors import FaceAtBorderError, FaceTooSmallError, ImageInvalidError


@dataclass(frozen=True)
class DetectorConfig:
    # "mesh": MediaPipe detector + 478-point mesh (Apache-2.0, the default); "dlib": HOG + the
    # 68-point shape predictor (its iBUG 300-W training data is licensed non-commercial only).
    backend: Literal["mesh", "dlib"] = "mesh"
    # Mesh backend: BlazeFace score threshold, the landmark model's face-presence threshold (below
    # it a tracked face counts as lost), and how many faces a portrait search reports.
    mesh_min_detection_score: float = 0.5
    mesh_min_presence: float = 0.5
    max_faces: int = 4
    # dlib backend: detection runs on a copy whose longer side is at most this (HOG cost grows with area).
    detect_max_side: int = 640
    # dlib backend: HOG SVM score threshold; real faces score ~0.5-2, clutter mostly below 0.
    score_threshold: float = 0.3
    # Second pass when nothing is found (dlib: 2x upsampling; mesh: overlapping tiles), to report
    # small faces as such.
    small_face_pass: bool = True
    # Minimum face box side in original pixels.
    min_face_size: int = 64
    # Largest fraction of the detection box area allowed outside the image.
    max_box_outside_fraction: float = 0.1
    # Landmarks may fall this far outside the image (fraction of the face box side) before the face
    # counts as cut by the border.
    landmark_border_tolerance: float = 0.02
    landmark_model: str | None = None  # dlib backend: default face-recognition-models' 68-point model


@dataclass(frozen=True)
class DetectionReport:
    """What the detector saw, for logs and API responses."""

    num_faces: int
    chosen_index: int
    boxes: tuple[tuple[float, float, float, float], ...]  # (left, top, right, bottom), original px
    scores: tuple[float, ...]
    face_size: float  # side of the chosen box in original pixels
    upsampled: bool  # found only by the small-face pass
    detect_scale: float  # scale of the image HOG ran on relative to the original

    def to_dict(self) -> dict[str, object]:
        return {
            "num_faces": self.num_faces,
            "chosen_index": self.chosen_index,
            "boxes": [list(b) for b in self.boxes],
            "scores": list(self.scores),
            "face_size": self.face_size,
            "upsampled": self.upsampled,
            "detect_scale": self.detect_scale,
        }


@dataclass(frozen=True)
class FaceDetection:
    box: np.ndarray  # (4,) float (left, top, right, bottom) in original pixels
    score: float
    landmarks: np.ndarray  # (68, 2) float32 (x, y) pixel-index coordinates
    report: DetectionReport
    mesh: np.ndarray | None = None  # (478, 2) float32 with the mesh backend


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate an image and return it as contiguous (H, W, 3) uint8 RGB.

    Accepts (H, W) grey, (H, W, 3) RGB, (H, W, 4) RGBA; uint8, or float in [0, 1].
    Raises ``ImageInvalidError`` for anything else, for tiny or blank (constant) images.
    """
    if not isinstance(image, np.ndarray):
        raise ImageInvalidError(f"expected a numpy image array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageInvalidError(f"expected an (H, W, 3) RGB image, got shape {tuple(image.shape)}")
    height, width = image.shape[:2]
    if min(height, width) < 32:
        raise ImageInvalidError(
            f"image is {width}x{height} pixels; at least 32x32 is needed", {"width": width, "height": height}
        )
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise ImageInvalidError(f"unsupported image dtype {image.dtype}; use uint8 or float in [0, 1]")
        if not np.isfinite(image).all():
            raise ImageInvalidError("image contains NaN or infinite values")
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    # A constant image (all black/white/one colour) has no face and usually means a failed decode.
    if int(image.max()) - int(image.min()) < 8:
        raise ImageInvalidError(
            "image is blank (nearly constant)", {"range": int(image.max()) - int(image.min())}
        )
    return np.ascontiguousarray(image)


def box_outside_fraction(box: np.ndarray, height: int, width: int) -> float:
    left, top, right, bottom = box
    area = max(right - left, 1e-6) * max(bottom - top, 1e-6)
    inside_w = max(0.0, min(right, width) - max(left, 0.0))
    inside_h = max(0.0, min(bottom, height) - max(top, 0.0))
    return float(1.0 - inside_w * inside_h / area)


def check_face_size(face_size: float, config: DetectorConfig, report: DetectionReport) -> None:
    """``FaceTooSmallError`` when the chosen box's side is under ``config.min_face_size``."""
    if face_size < config.min_face_size:
        raise FaceTooSmallError(
            f"the face is about {face_size:.0f} pixels wide; at least {config.min_face_size} is needed",
            {"face_size": face_size, "min_face_size": config.min_face_size, **report.to_dict()},
        )


def check_box_inside(
    box: np.ndarray, height: int, width: int, config: DetectorConfig, report: DetectionReport
) -> None:
    """``FaceAtBorderError`` when more than ``config.max_box_outside_fraction`` of the box is outside."""
    outside = box_outside_fraction(box, height, width)
    if outside > config.max_box_outside_fraction:
        raise FaceAtBorderError(
            f"the face is cut by the image border ({outside:.0%} of it lies outside the image)",
            {"outside_fraction": outside, **report.to_dict()},
        )


def check_points_inside(
    points: np.ndarray,
    height: int,
    width: int,
    face_size: float,
    config: DetectorConfig,
    report: DetectionReport,
    *,
    what: str,
) -> None:
    """``FaceAtBorderError`` when any of ``points`` (``what``: how the message names them) lies outside
    the image by more than ``config.landmark_border_tolerance`` of the face size."""
    tolerance = config.landmark_border_tolerance * face_size
    out_of_frame = (
        (points[:, 0] < -tolerance)
        | (points[:, 1] < -tolerance)
        | (points[:, 0] > width - 1 + tolerance)
        | (points[:, 1] > height - 1 + tolerance)
    )
    if out_of_frame.any():
        raise FaceAtBorderError(
            f"{int(out_of_frame.sum())} {what} fall outside the image; the face is cut by the border",
            {"landmarks_outside": int(out_of_frame.sum()), **report.to_dict()},
        )


# dlib HOG box relative to its own landmarks' bounding box, measured on frontal faces; used until a
# detection in the current stream gives the real relation.
_DEFAULT_BOX_RELATION = np.array([0.0, -0.05, -0.05, -0.1])


@dataclass
class TrackerState:
    """Carried across chunks of one video."""

    frame_index: int = 0
    landmarks: np.ndarray | None = None  # last frame's landmarks, None when lost
    box_relation: np.ndarray = field(default_factory=lambda: _DEFAULT_BOX_RELATION.copy())
    frames_since_detection: int = 0
    detections_run: int = 0
    # Mesh backend: which tracking graph follows this video (graphs live in the process, keyed by
    # this id; a state unpickled elsewhere just starts a new one with a detection).
    stream_id: str | None = None


@dataclass(frozen=True)
class TrackedFace:
    landmarks: np.ndarray  # (68, 2) float32
    box: np.ndarray  # (4,)
    detected: bool  # True when a full detection ran on this frame
    mesh: np.ndarray | None = None  # (478, 2) with the mesh backend


class Tracker(Protocol):
    def track(self, image: np.ndarray, state: TrackerState) -> TrackedFace | None: ...
