"""The MediaPipe graphs this project runs, loaded from the files inside the ``mediapipe`` wheel.

Why a module of its own: ``mediapipe==0.10.21`` is installed with ``--no-deps`` (its metadata asks
for protobuf<5, jax, opencv-contrib-python, sounddevice..., which clash with our pins or are not
needed), so importing it is the one fragile step; everything that touches the package goes through
here and fails with one clear error.

Models (all Apache-2.0, shipped in the wheel under ``mediapipe/modules/``; nothing is downloaded):

* ``face_detection/face_detection_short_range.tflite`` (BlazeFace, faces within ~2 m),
* ``face_landmark/face_landmark_with_attention.tflite`` (478 points: the 468-point mesh with
  refined eyes and lips, plus 10 iris points), run by the ``face_landmark_front_cpu`` graph,
* ``selfie_segmentation/selfie_segmentation.tflite`` (person / background, 256x256 input).

The graphs are the wheel's own ``.binarypb`` files run through ``SolutionBase``; we ask the face graph
for two of its outputs (``multi_face_landmarks`` and ``face_detections``) so the detector's boxes and
scores come with the landmarks. Importing mediapipe 0.10.21 beside protobuf 6 prints one
``AttributeError: 'MessageFactory' object has no attribute 'GetPrototype'`` (from a symbol-database
shim the solutions do not use); it does not affect any result.
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

MEDIAPIPE_VERSION = "0.10.21"
FACE_GRAPH = "mediapipe/modules/face_landmark/face_landmark_front_cpu.binarypb"
MODEL_FILES = (
    "modules/face_detection/face_detection_short_range.tflite",
    "modules/face_landmark/face_landmark_with_attention.tflite",
    "modules/selfie_segmentation/selfie_segmentation.tflite",
)
NUM_MESH_POINTS = 478


class MediaPipeUnavailableError(RuntimeError):
    """mediapipe is missing or not the version whose bundled models this module uses."""


def mediapipe_dir() -> Path:
    """The installed ``mediapipe`` package folder (found without importing it)."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise MediaPipeUnavailableError(
            f"mediapipe is not installed; run: pip install --no-deps mediapipe=={MEDIAPIPE_VERSION}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def model_paths() -> dict[str, Path]:
    """The three .tflite files the default face stack runs (all must exist in the wheel)."""
    root = mediapipe_dir()
    paths = {Path(name).stem: root / name for name in MODEL_FILES}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise MediaPipeUnavailableError(
            f"mediapipe's bundled models are missing ({missing}); mediapipe 1.x ships none: "
            f"install mediapipe=={MEDIAPIPE_VERSION}"
        )
    return paths


@lru_cache(maxsize=1)
def _solution_base() -> Any:
    model_paths()
    try:
        from mediapipe.python.solution_base import SolutionBase
    except ImportError as error:  # a missing runtime dependency of the --no-deps install
        raise MediaPipeUnavailableError(f"mediapipe {MEDIAPIPE_VERSION} failed to import: {error}") from error
    return SolutionBase


def _quietly(build: Callable[[], Any]) -> Any:
    """Build a graph without mediapipe's protobuf DeprecationWarning (``label()``) on every instance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return build()


@dataclass(frozen=True)
class MeshFace:
    """One face from the face graph, in pixel-index coordinates of the image given."""

    points: np.ndarray  # (478, 2) float32 (x, y); pixel centres at integers
    depth: np.ndarray  # (478,) float32 relative depth, in the same scale as x


@dataclass(frozen=True)
class BoxDetection:
    box: np.ndarray  # (4,) float64 (left, top, right, bottom) pixel edges
    score: float


def _boxes(detections: Any, width: int, height: int) -> list[BoxDetection]:
    out = []
    for detection in detections or []:
        rel = detection.location_data.relative_bounding_box
        left, top = rel.xmin * width, rel.ymin * height
        box = np.array([left, top, left + rel.width * width, top + rel.height * height], dtype=np.float64)
        out.append(BoxDetection(box=box, score=float(detection.score[0]) if detection.score else 0.0))
    return out


class FaceMeshGraph:
    """The face graph (short-range detection + 478-point attention mesh) on RGB uint8 frames.

    ``tracking=False``: every call detects (portraits, unrelated images). ``tracking=True``: the graph
    takes the next frame's region from the previous landmarks and detects only when the face is lost
    (video); frames must then come in order. Calls are serialised (one graph, one lock).
    """

    def __init__(
        self, *, max_faces: int, tracking: bool, min_detection_score: float, min_presence: float
    ) -> None:
        solution_base = _solution_base()
        self.tracking = tracking
        self._graph = _quietly(
            lambda: solution_base(
                binary_graph_path=FACE_GRAPH,
                side_inputs={
                    "num_faces": max_faces,
                    "with_attention": True,
                    "use_prev_landmarks": tracking,
                },
                calculator_params={
                    "facedetectionshortrangecpu__facedetectionshortrange__facedetection__"
                    "TensorsToDetectionsCalculator.min_score_thresh": min_detection_score,
                    "facelandmarkcpu__ThresholdingCalculator.threshold": min_presence,
                },
                outputs=["multi_face_landmarks", "face_detections"],
            )
        )
        self._lock = threading.Lock()

    def process(self, image: np.ndarray) -> tuple[list[MeshFace], list[BoxDetection]]:
        """(faces, detections of this call; detections are empty on tracked frames)."""
        height, width = image.shape[:2]
        with self._lock:
            result = self._graph.process({"image": np.ascontiguousarray(image)})
        faces = []
        for face in result.multi_face_landmarks or []:
            values = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32)
            points = np.stack([values[:, 0] * width - 0.5, values[:, 1] * height - 0.5], axis=1)
            faces.append(MeshFace(points=points.astype(np.float32), depth=values[:, 2] * width))
        return faces, _boxes(result.face_detections, width, height)

    def reset(self) -> None:
        with self._lock:
            _quietly(self._graph.reset)

    def close(self) -> None:
        with self._lock:
            self._graph.close()


class FaceBoxGraph:
    """Face detection alone (short range): boxes and scores, used to find faces too small for the mesh."""

    def __init__(self, min_score: float) -> None:
        _solution_base()
        from mediapipe.python.solutions.face_detection import FaceDetection

        self._graph = _quietly(lambda: FaceDetection(model_selection=0, min_detection_confidence=min_score))
        self._lock = threading.Lock()

    def process(self, image: np.ndarray) -> list[BoxDetection]:
        height, width = image.shape[:2]
        with self._lock:
            result = self._graph.process(np.ascontiguousarray(image))
        return _boxes(result.detections, width, height)


class SegmentationGraph:
    """Selfie segmentation: (H, W) float32 person probability for an RGB uint8 image."""

    def __init__(self) -> None:
        _solution_base()
        from mediapipe.python.solutions.selfie_segmentation import SelfieSegmentation

        # model_selection=0: the general 256x256 model (the landscape one is 144x256, for video calls).
        self._graph = _quietly(lambda: SelfieSegmentation(model_selection=0))
        self._lock = threading.Lock()

    def process(self, image: np.ndarray) -> np.ndarray:
        with self._lock:
            # A portrait is a still image: reset so the graph's temporal smoothing of the mask (it
            # blends with the previous frame's) never mixes two portraits.
            _quietly(self._graph.reset)
            result = self._graph.process(np.ascontiguousarray(image))
        return np.asarray(result.segmentation_mask, dtype=np.float32)
