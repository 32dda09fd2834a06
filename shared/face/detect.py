"""Face detection and 68-point landmarks: the backend switch and the dlib backend (the types and checks
both backends share are in ``shared/face/detection.py``).

Two backends implement the same ``detect`` / tracker contract (``make_detector(DetectorConfig)``):

* ``"mesh"`` (the default): MediaPipe's short-range face detector + 478-point attention mesh, both
  Apache-2.0 and shipped inside the ``mediapipe==0.10.21`` wheel; the 68 iBUG points are mesh
  vertices (``shared/face/mesh.py``).
* ``"dlib"`` (option): dlib HOG + the 68-point shape predictor, described below. dlib is imported only
  when this backend is chosen, so the default stack never loads it or its model files.

Licence note (dlib backend): the 68-landmark model shipped by ``face-recognition-models``
(``shape_predictor_68_face_landmarks.dat``) was trained on the iBUG 300-W data set, whose licence
allows **non-commercial use only**. Anyone deploying this commercially must replace it with a
landmark model trained on commercially usable data (the API here does not depend on which).

Coordinates: pixel-index coordinates of the image given (pixel (row i, col j) has its centre at
x = j, y = i), the convention of dlib and OpenCV's ``warpAffine``.

Policy for one image (``FaceDetector.detect``):

1. The image is validated (shape, dtype, not blank) -> ``ImageInvalidError``.
2. HOG runs on a copy downscaled to at most ``detect_max_side`` (speed), without upsampling.
   Detections scoring below ``score_threshold`` are dropped: HOG also fires on non-faces.
3. If nothing is found, a second pass with 2x upsampling looks for small faces, so that a face too
   small to use is reported as ``FaceTooSmallError`` rather than ``NoFaceError``.
4. With several faces the largest is used; all boxes and scores are reported.
5. Faces whose box side is below ``min_face_size`` original pixels -> ``FaceTooSmallError``; faces
   cut by the image border (box partly outside or landmarks outside) -> ``FaceAtBorderError``.

Video (``FaceTracker``, dlib backend): a detection every ``detect_every`` frames, searched first in a region
around the last face at the scale where it is ~100 px (~3-5 ms; the whole frame only if that
fails), and in between landmarks are re-estimated from a box derived from the previous frame's
landmarks (the shape predictor costs ~1 ms where a full-frame HOG costs ~20 ms at 512 px).
"""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from shared.face.detection import (
    DetectionReport,
    DetectorConfig,
    FaceDetection,
    TrackedFace,
    Tracker,
    TrackerState,
    as_rgb_uint8,
    check_box_inside,
    check_face_size,
    check_points_inside,
)
from shared.face.errors import NoFaceError

NUM_LANDMARKS = 68

# iBUG-68 index groups.
JAW = slice(0, 17)
RIGHT_BROW = slice(17, 22)  # subject's right = image left in a frontal view
LEFT_BROW = slice(22, 27)
NOSE_BRIDGE = slice(27, 31)
NOSE_BOTTOM = slice(31, 36)
RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
OUTER_LIPS = slice(48, 60)
INNER_LIPS = slice(60, 68)


def face_models_dir() -> Path:
    """Folder of the model files shipped by ``face-recognition-models`` (without importing it:
    its ``__init__`` needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face-recognition-models is not installed (pip install face-recognition-models)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def landmark_model_path() -> Path:
    return face_models_dir() / "shape_predictor_68_face_landmarks.dat"


if TYPE_CHECKING:
    from shared.face.mesh import MeshFaceDetector


@lru_cache(maxsize=4)
def _load_shape_predictor(path: str) -> Any:
    import dlib

    return dlib.shape_predictor(path)


@lru_cache(maxsize=1)
def _load_hog_detector() -> Any:
    import dlib

    return dlib.get_frontal_face_detector()


class FaceDetector:
    """The dlib backend: HOG face detector + 68-point shape predictor with the policy in the module docstring.

    dlib objects are not documented as thread-safe; calls are serialised with a lock so one instance
    can be shared by a worker's threads.
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._hog = _load_hog_detector()
        self._predictor = _load_shape_predictor(str(self.config.landmark_model or landmark_model_path()))
        self._lock = threading.Lock()

    # --- detection -------------------------------------------------------------------------
    def _run_hog(
        self, image: np.ndarray, upsample: int, scale: float | None = None
    ) -> tuple[list[np.ndarray], list[float], float]:
        """Boxes (original px) and scores above threshold."""
        height, width = image.shape[:2]
        if scale is None:
            scale = min(1.0, self.config.detect_max_side / max(height, width))
        small, scale_x, scale_y = image, 1.0, 1.0
        if scale != 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
            small = cv2.resize(image, size, interpolation=interpolation)
            scale_x, scale_y = size[0] / width, size[1] / height
        with self._lock:
            rects, scores, _ = self._hog.run(small, upsample, self.config.score_threshold)
        # Box edges (right/bottom exclusive) scale linearly between the two images.
        unscale = np.array([scale_x, scale_y, scale_x, scale_y])
        boxes = [
            np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], dtype=np.float64) / unscale
            for r in rects
        ]
        return boxes, [float(s) for s in scores], scale

    def find_faces(self, image: np.ndarray) -> tuple[list[np.ndarray], list[float], bool, float]:
        """All faces above the score threshold: (boxes, scores, found_by_upsampled_pass, scale)."""
        boxes, scores, scale = self._run_hog(image, 0)
        upsampled = False
        if not boxes and self.config.small_face_pass:
            boxes, scores, scale = self._run_hog(image, 1)
            upsampled = bool(boxes)
        return boxes, scores, upsampled, scale

    def find_faces_near(
        self, image: np.ndarray, box: np.ndarray, *, context: float = 0.5, face_size: float = 100.0
    ) -> tuple[list[np.ndarray], list[float]]:
        """Faces in a region around ``box`` (expanded by ``context`` box sides on each side), searched
        at the scale where the face is about ``face_size`` px (HOG's window is 80 px): for video, where
        the previous frame says where and how big the face is, this is several times cheaper than a
        full-frame search on large frames."""
        height, width = image.shape[:2]
        side = float(max(box[2] - box[0], box[3] - box[1]))
        left = int(max(0, np.floor(box[0] - context * side)))
        top = int(max(0, np.floor(box[1] - context * side)))
        right = int(min(width, np.ceil(box[2] + context * side)))
        bottom = int(min(height, np.ceil(box[3] + context * side)))
        if right - left < 32 or bottom - top < 32:
            return [], []
        # Small faces are searched in an enlarged region (cheap: the region is small) rather than with
        # dlib's whole-image upsampling.
        scale = float(np.clip(face_size / max(side, 1.0), 0.1, 2.5))
        region = np.ascontiguousarray(image[top:bottom, left:right])
        boxes, scores, _ = self._run_hog(region, 0, scale)
        offset = np.array([left, top, left, top], dtype=np.float64)
        return [b + offset for b in boxes], scores

    def landmarks_in_box(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 landmarks (68, 2) float32 for a face box (left, top, right, bottom) in original px."""
        left, top, right, bottom = (round(float(v)) for v in box)
        import dlib

        rect = dlib.rectangle(left, top, right - 1, bottom - 1)
        with self._lock:
            shape = self._predictor(image, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def detect(self, image: np.ndarray) -> FaceDetection:
        """The one face to use in ``image`` (largest if several) with its 68 landmarks.

        Raises ImageInvalidError, NoFaceError, FaceTooSmallError or FaceAtBorderError.
        """
        image = as_rgb_uint8(image)
        height, width = image.shape[:2]
        boxes, scores, upsampled, scale = self.find_faces(image)
        if not boxes:
            raise NoFaceError(
                "no face was found in the image; use a well-lit, frontal, unobstructed portrait",
                {"width": width, "height": height, "score_threshold": self.config.score_threshold},
            )
        sizes = [float(np.sqrt((b[2] - b[0]) * (b[3] - b[1]))) for b in boxes]
        chosen = int(np.argmax(sizes))
        box, face_size = boxes[chosen], sizes[chosen]
        report = DetectionReport(
            num_faces=len(boxes),
            chosen_index=chosen,
            boxes=tuple(tuple(float(v) for v in b) for b in boxes),  # type: ignore[misc]
            scores=tuple(scores),
            face_size=face_size,
            upsampled=upsampled,
            detect_scale=scale,
        )
        check_face_size(face_size, self.config, report)
        check_box_inside(box, height, width, self.config, report)
        landmarks = self.landmarks_in_box(image, box)
        check_points_inside(landmarks, height, width, face_size, self.config, report, what="facial landmarks")
        return FaceDetection(box=box, score=scores[chosen], landmarks=landmarks, report=report)


# --- tracking --------------------------------------------------------------------------------
def _landmark_bounds(landmarks: np.ndarray) -> np.ndarray:
    lo = landmarks.min(axis=0)
    hi = landmarks.max(axis=0)
    return np.array([lo[0], lo[1], hi[0], hi[1]], dtype=np.float64)


def _box_relative_to_bounds(box: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Express a detector box relative to a landmark bounding box (offsets in bound sizes)."""
    size = np.maximum(bounds[2:] - bounds[:2], 1e-6)
    return np.concatenate([(box[:2] - bounds[:2]) / size, (box[2:] - bounds[2:]) / size])


def _box_from_bounds(relation: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    size = np.maximum(bounds[2:] - bounds[:2], 1e-6)
    return np.concatenate([bounds[:2] + relation[:2] * size, bounds[2:] + relation[2:] * size])


class FaceTracker:
    """Per-frame landmarks for a video: detect every ``detect_every`` frames, track in between.

    Returns None for frames where no usable face is found (callers count them and hold the last
    good pose). A tracked frame whose landmark box jumps or collapses forces a detection.
    """

    def __init__(self, detector: FaceDetector, detect_every: int = 3) -> None:
        if detect_every < 1:
            raise ValueError("detect_every must be >= 1")
        self.detector = detector
        self.detect_every = detect_every

    def _full_detection(self, image: np.ndarray, state: TrackerState) -> TrackedFace | None:
        state.detections_run += 1
        state.frames_since_detection = 0
        boxes: list[np.ndarray] = []
        if state.landmarks is not None:
            # Search near the tracked face first; the whole frame only if it is not there.
            previous_box = _box_from_bounds(state.box_relation, _landmark_bounds(state.landmarks))
            boxes, _ = self.detector.find_faces_near(image, previous_box)
        if not boxes:
            boxes, _, _, _ = self.detector.find_faces(image)
        if not boxes:
            state.landmarks = None
            return None
        sizes = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        box = boxes[int(np.argmax(sizes))]
        landmarks = self.detector.landmarks_in_box(image, box)
        state.box_relation = _box_relative_to_bounds(box, _landmark_bounds(landmarks))
        state.landmarks = landmarks
        return TrackedFace(landmarks=landmarks, box=box, detected=True)

    def track(self, image: np.ndarray, state: TrackerState) -> TrackedFace | None:
        image = as_rgb_uint8(image)
        state.frame_index += 1
        due = state.landmarks is None or state.frames_since_detection + 1 >= self.detect_every
        if due:
            return self._full_detection(image, state)
        previous_bounds = _landmark_bounds(state.landmarks)
        box = _box_from_bounds(state.box_relation, previous_bounds)
        landmarks = self.detector.landmarks_in_box(image, box)
        bounds = _landmark_bounds(landmarks)
        previous_size = float(np.linalg.norm(previous_bounds[2:] - previous_bounds[:2]))
        size = float(np.linalg.norm(bounds[2:] - bounds[:2]))
        shift = float(
            np.linalg.norm((bounds[:2] + bounds[2:]) / 2 - (previous_bounds[:2] + previous_bounds[2:]) / 2)
        )
        # The shape predictor always returns a shape, even on background: a sudden change of size or a
        # jump larger than a third of the face means the track is unreliable, so detect instead.
        if not (0.75 < size / max(previous_size, 1e-6) < 1.33) or shift > previous_size / 3:
            return self._full_detection(image, state)
        state.frames_since_detection += 1
        state.landmarks = landmarks
        return TrackedFace(landmarks=landmarks, box=box, detected=False)


# --- backend switch --------------------------------------------------------------------------
def make_detector(config: DetectorConfig | None = None) -> FaceDetector | MeshFaceDetector:
    """The detector of ``config.backend`` (mesh by default)."""
    config = config or DetectorConfig()
    if config.backend == "dlib":
        return FaceDetector(config)
    if config.backend == "mesh":
        from shared.face.mesh import MeshFaceDetector

        return MeshFaceDetector(config)
    raise ValueError(f"unknown detector backend {config.backend!r}; use 'mesh' or 'dlib'")


def make_tracker(detector: FaceDetector | MeshFaceDetector, detect_every: int = 3) -> Tracker:
    """The video tracker that goes with ``detector`` (``detect_every`` applies to dlib only: the mesh
    graph re-detects by itself when its face-presence score drops)."""
    if isinstance(detector, FaceDetector):
        return FaceTracker(detector, detect_every)
    return detector.tracker()
