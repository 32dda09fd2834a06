"""The default detector: MediaPipe face detection + 478-point attention mesh, with the 68 iBUG points
the alignment and the 3DMM fit use taken from mesh vertices.

Why: dlib's 68-point predictor was trained on iBUG 300-W (non-commercial only) and sees little of the
eyes and mouth; MediaPipe's models are Apache-2.0, ship in the ``mediapipe`` wheel (no download), and
the attention mesh refines eyelids, lips and irises, which is what blink and mouth tracking need.

Policy for one image (``MeshFaceDetector.detect``), the same contract as the dlib backend:

1. The image is validated (``as_rgb_uint8``) -> ``ImageInvalidError``.
2. The face graph runs in still-image mode: BlazeFace (short range, scores >=
   ``mesh_min_detection_score``) then the mesh for up to ``max_faces`` faces.
3. Nothing found: the detector alone runs on 2x2 overlapping half-size tiles (each face is then ~2x
   larger at the network's 128 px input), so a face too small for the mesh is reported as
   ``FaceTooSmallError``, not ``NoFaceError``. The best-scoring tile detection is taken (tiles cut
   through bodies and background, and larger false boxes there score lower).
4. Several faces: the largest detection box is used; ``DetectionReport`` lists all of them.
5. Box side < ``min_face_size`` -> ``FaceTooSmallError``; > ``max_box_outside_fraction`` of the box
   outside the image, or mesh landmarks outside it -> ``FaceAtBorderError`` (the mesh extrapolates
   the hidden part of a cut face, so this check sees a cut face that the box alone may not).

Video (``MeshTracker``): the graph in tracking mode: the next frame's region comes from the previous
frame's landmarks and BlazeFace runs only when the face-presence score falls below
``mesh_min_presence``. A graph per video stream (keyed by ``TrackerState.stream_id``); a few are kept.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict

import numpy as np

from shared.face.detection import (
    DetectionReport,
    DetectorConfig,
    FaceDetection,
    TrackedFace,
    TrackerState,
    as_rgb_uint8,
    check_box_inside,
    check_face_size,
    check_points_inside,
)
from shared.face.errors import NoFaceError
from shared.face.mediapipe_runtime import BoxDetection, FaceBoxGraph, FaceMeshGraph, MeshFace

# iBUG-68 order -> MediaPipe mesh vertex. Jaw 0-16 follow the mesh's face oval from the subject's
# right temple over the chin (152) to the left; brows 17-26 the upper brow line; nose 27-35; eyes
# 36-47 the refined eyelid contour (corners 33/133 and 362/263); lips 48-67 the outer and inner lip
# contours (corners 61/291, inner 78/308). Subject's right = image left in a frontal view, as iBUG.
MESH_TO_IBUG68 = np.array(
    [
        162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,  # jaw
        71, 63, 105, 66, 107,  # right brow
        336, 296, 334, 293, 301,  # left brow
        168, 197, 5, 4,  # nose bridge
        75, 97, 2, 326, 305,  # nose bottom
        33, 160, 158, 133, 153, 144,  # right eye
        362, 385, 387, 263, 373, 380,  # left eye
        61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips
        78, 82, 13, 312, 308, 317, 14, 87,  # inner lips
    ],
    dtype=np.int64,
)  # fmt: skip

# Mesh vertices for openness measures (upper, lower lid / lip pairs, and the corners for the width).
RIGHT_EYE_LIDS = ((159, 145), (158, 153), (160, 144))
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_LIDS = ((386, 374), (385, 380), (387, 373))
LEFT_EYE_CORNERS = (362, 263)
MOUTH_LIPS = ((13, 14), (82, 87), (312, 317))
MOUTH_CORNERS = (78, 308)
IRIS_RIGHT = slice(468, 473)  # centre first, then 4 on the rim
IRIS_LEFT = slice(473, 478)


DETECTOR_INPUT = 128  # BlazeFace short-range input side


def ibug68(mesh: np.ndarray) -> np.ndarray:
    """(478, 2) or (468, 2) mesh points -> (68, 2) float32 in iBUG order."""
    return np.asarray(mesh, dtype=np.float32)[MESH_TO_IBUG68]


def _openness(points: np.ndarray, pairs: tuple[tuple[int, int], ...], corners: tuple[int, int]) -> float:
    gaps = [np.linalg.norm(points[a] - points[b]) for a, b in pairs]
    width = np.linalg.norm(points[corners[0]] - points[corners[1]])
    return float(np.mean(gaps) / max(width, 1e-6))


def mouth_openness(mesh: np.ndarray) -> float:
    """Inner-lip gap over mouth width (scale and roll invariant): ~0 closed, ~0.5 wide open."""
    return _openness(np.asarray(mesh), MOUTH_LIPS, MOUTH_CORNERS)


def eye_openness(mesh: np.ndarray) -> float:
    """Mean lid gap over eye width of both eyes: ~0.3 open, ~0.05 closed."""
    points = np.asarray(mesh)
    return 0.5 * (
        _openness(points, RIGHT_EYE_LIDS, RIGHT_EYE_CORNERS)
        + _openness(points, LEFT_EYE_LIDS, LEFT_EYE_CORNERS)
    )


def _bounds(points: np.ndarray) -> np.ndarray:
    lo, hi = points.min(axis=0), points.max(axis=0)
    return np.array([lo[0], lo[1], hi[0], hi[1]], dtype=np.float64)


def _tiles(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """2x2 overlapping tiles (top, left, bottom, right), each ~62 % of each side."""
    tile_h, tile_w = int(np.ceil(0.625 * height)), int(np.ceil(0.625 * width))
    tops, lefts = (0, height - tile_h), (0, width - tile_w)
    return [(t, left, t + tile_h, left + tile_w) for t in tops for left in lefts]


class MeshFaceDetector:
    """``detect`` with the policy of the module docstring; ``tracker()`` for video."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._still = FaceMeshGraph(
            max_faces=self.config.max_faces,
            tracking=False,
            min_detection_score=self.config.mesh_min_detection_score,
            min_presence=self.config.mesh_min_presence,
        )
        self._boxes: FaceBoxGraph | None = None
        self._lock = threading.Lock()

    def _box_graph(self) -> FaceBoxGraph:
        with self._lock:
            if self._boxes is None:
                self._boxes = FaceBoxGraph(self.config.mesh_min_detection_score)
            return self._boxes

    def find_small_face(self, image: np.ndarray) -> BoxDetection | None:
        """The best-scoring face in overlapping tiles (faces too small for a whole-image search)."""
        found: list[BoxDetection] = []
        graph = self._box_graph()
        for top, left, bottom, right in _tiles(*image.shape[:2]):
            for detection in graph.process(image[top:bottom, left:right]):
                offset = np.array([left, top, left, top], dtype=np.float64)
                found.append(BoxDetection(box=detection.box + offset, score=detection.score))
        return max(found, key=lambda d: d.score) if found else None

    def mesh_faces(self, image: np.ndarray) -> tuple[list[MeshFace], list[BoxDetection]]:
        """Every face of a still image: meshes and detector boxes (not matched, not checked)."""
        return self._still.process(as_rgb_uint8(image))

    def detect(self, image: np.ndarray) -> FaceDetection:
        """The one face to use in ``image`` (largest if several) with its 68 landmarks and mesh.

        Raises ImageInvalidError, NoFaceError, FaceTooSmallError or FaceAtBorderError.
        """
        image = as_rgb_uint8(image)
        height, width = image.shape[:2]
        faces, detections = self._still.process(image)
        upsampled = False
        if not detections and faces:  # cannot happen in still mode; boxes from the meshes then
            detections = [BoxDetection(box=_bounds(f.points), score=1.0) for f in faces]
        if not faces and self.config.small_face_pass:
            small = self.find_small_face(image)
            if small is not None:
                detections, upsampled = [small], True
        if not detections:
            raise NoFaceError(
                "no face was found in the image; use a well-lit, frontal, unobstructed portrait",
                {"width": width, "height": height, "score_threshold": self.config.mesh_min_detection_score},
            )
        sizes = [float(np.sqrt((b.box[2] - b.box[0]) * (b.box[3] - b.box[1]))) for b in detections]
        chosen = int(np.argmax(sizes))
        box, face_size = detections[chosen].box, sizes[chosen]
        report = DetectionReport(
            num_faces=len(detections),
            chosen_index=chosen,
            boxes=tuple(tuple(float(v) for v in d.box) for d in detections),  # type: ignore[misc]
            scores=tuple(d.score for d in detections),
            face_size=face_size,
            upsampled=upsampled,
            # BlazeFace sees the image letterboxed to 128x128 (tiles: each tile at that size).
            detect_scale=min(
                1.0, DETECTOR_INPUT / (0.625 * max(height, width) if upsampled else max(height, width))
            ),
        )
        check_face_size(face_size, self.config, report)
        check_box_inside(box, height, width, self.config, report)
        if not faces:
            raise NoFaceError(
                "a face was detected but its landmarks could not be found; use a clearer portrait",
                report.to_dict(),
            )
        # The mesh whose centre is nearest the chosen box's centre.
        centre = (box[:2] + box[2:]) / 2
        mesh = min(faces, key=lambda f: float(np.linalg.norm(f.points.mean(axis=0) - centre))).points
        check_points_inside(mesh, height, width, face_size, self.config, report, what="face mesh points")
        return FaceDetection(
            box=box, score=detections[chosen].score, landmarks=ibug68(mesh), report=report, mesh=mesh
        )

    def tracker(self) -> MeshTracker:
        return MeshTracker(self.config)


class MeshTracker:
    """Per-frame mesh and 68 landmarks of a video with the graph's own tracking (see module doc).

    Returns None for frames where no face is found. ``TrackerState.detections_run`` counts the frames
    on which BlazeFace ran (the first, and every frame after the face was lost).
    """

    def __init__(self, config: DetectorConfig, max_streams: int = 4) -> None:
        self.config = config
        self.max_streams = max_streams
        # stream id -> (graph, frame_index of the last frame it saw)
        self._streams: OrderedDict[str, tuple[FaceMeshGraph, int]] = OrderedDict()
        self._lock = threading.Lock()

    def _graph_for(self, state: TrackerState) -> FaceMeshGraph:
        if state.stream_id is None:
            state.stream_id = uuid.uuid4().hex
        with self._lock:
            entry = self._streams.pop(state.stream_id, None)
            if entry is None:
                graph = FaceMeshGraph(
                    max_faces=1,
                    tracking=True,
                    min_detection_score=self.config.mesh_min_detection_score,
                    min_presence=self.config.mesh_min_presence,
                )
                while len(self._streams) >= self.max_streams:
                    _, (old, _) = self._streams.popitem(last=False)
                    old.close()
            else:
                graph, last_index = entry
                if last_index != state.frame_index:
                    graph.reset()  # the state moved on elsewhere or was rewound: start afresh
            self._streams[state.stream_id] = (graph, state.frame_index + 1)
            return graph

    def track(self, image: np.ndarray, state: TrackerState) -> TrackedFace | None:
        image = as_rgb_uint8(image)
        graph = self._graph_for(state)
        state.frame_index += 1
        faces, detections = graph.process(image)
        if detections:
            state.detections_run += 1
            state.frames_since_detection = 0
        else:
            state.frames_since_detection += 1
        if not faces:
            state.landmarks = None
            return None
        mesh = faces[0].points
        landmarks = ibug68(mesh)
        state.landmarks = landmarks
        return TrackedFace(landmarks=landmarks, box=_bounds(mesh), detected=bool(detections), mesh=mesh)
