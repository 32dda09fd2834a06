import pickle
from functools import lru_cache

import cv2
import numpy as np
import pytest
from skimage import data

from shared.face.detect import (
    DetectorConfig,
    FaceDetector,
    FaceTracker,
    TrackerState,
    as_rgb_uint8,
    landmark_model_path,
    make_detector,
)
from shared.face.errors import (
    FaceAtBorderError,
    FaceError,
    FaceTooSmallError,
    ImageInvalidError,
    NoFaceError,
)
from shared.face.mesh import MeshFaceDetector
from tests.face.analysis_support import analyzer, astronaut, moved_astronaut


def detector() -> MeshFaceDetector:
    """The default (mesh) detector."""
    found = analyzer().detector
    assert isinstance(found, MeshFaceDetector)
    return found


@lru_cache(maxsize=1)
def dlib_detector() -> FaceDetector:
    return FaceDetector(DetectorConfig(backend="dlib"))


def test_landmark_model_is_found_without_importing_the_package() -> None:
    path = landmark_model_path()
    assert path.name == "shape_predictor_68_face_landmarks.dat" and path.is_file()


def test_astronaut_has_one_face_with_landmarks_inside_the_box() -> None:
    detection = detector().detect(astronaut())
    assert detection.report.num_faces == 1 and detection.report.chosen_index == 0
    assert detection.score > 0.5
    left, top, right, bottom = detection.box
    assert 60 < right - left < 140  # the astronaut's face is ~90 px wide
    lm = detection.landmarks
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    margin = 0.15 * (right - left)
    inside = (
        (lm[:, 0] > left - margin)
        & (lm[:, 0] < right + margin)
        & (lm[:, 1] > top - margin)
        & (lm[:, 1] < bottom + margin)
    )
    assert inside.all()
    # iBUG layout: the subject's right eye (36-41) is on the image left, the nose between the eyes.
    right_eye, left_eye = lm[36:42].mean(0), lm[42:48].mean(0)
    assert right_eye[0] < lm[30, 0] < left_eye[0]
    assert lm[30, 1] > right_eye[1] and lm[57, 1] > lm[30, 1]


def test_several_faces_picks_the_largest_and_reports_all() -> None:
    face = astronaut()[40:230, 130:320]
    canvas = np.full((300, 600, 3), 200, np.uint8)
    canvas[50:240, 10:200] = face  # ~90 px face
    canvas[20:292, 300:572] = cv2.resize(face, (272, 272))  # ~130 px face
    detection = detector().detect(canvas)
    assert detection.report.num_faces == 2
    sizes = [b[2] - b[0] for b in detection.report.boxes]
    assert detection.report.chosen_index == int(np.argmax(sizes))
    assert detection.box[0] > 290  # the big one, on the right


def test_blank_image_is_invalid() -> None:
    with pytest.raises(ImageInvalidError) as info:
        detector().detect(np.zeros((256, 256, 3), np.uint8))
    assert info.value.code == "image_invalid"


@pytest.mark.parametrize(
    "image",
    [np.zeros((10, 10, 3), np.uint8), np.zeros((64, 64, 2), np.uint8), np.zeros((64, 64, 3), np.int32)],
    ids=["tiny", "two-channels", "int32"],
)
def test_malformed_images_are_invalid(image: np.ndarray) -> None:
    with pytest.raises(ImageInvalidError):
        detector().detect(image)


def test_non_face_image_has_no_face() -> None:
    with pytest.raises(NoFaceError) as info:
        detector().detect(data.coffee())
    assert info.value.code == "no_face" and "face" in info.value.message


def test_tiny_face_is_too_small() -> None:
    canvas = np.full((512, 512, 3), 120, np.uint8)
    canvas[100:300, 100:300] = cv2.resize(astronaut(), (200, 200), interpolation=cv2.INTER_AREA)
    with pytest.raises(FaceTooSmallError) as info:
        detector().detect(canvas)
    assert info.value.code == "face_too_small"
    assert info.value.details["face_size"] < 64


def test_face_cut_by_the_border() -> None:
    with pytest.raises(FaceAtBorderError) as info:
        detector().detect(astronaut()[:, 200:])
    assert info.value.code == "face_at_border"
    assert info.value.details["outside_fraction"] > 0.1


def test_grey_and_float_inputs_are_accepted() -> None:
    grey = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2GRAY)
    assert as_rgb_uint8(grey).shape == (512, 512, 3)
    as_float = astronaut().astype(np.float32) / 255.0
    detection = detector().detect(as_float)
    reference = detector().detect(astronaut())
    assert np.abs(detection.landmarks - reference.landmarks).max() <= 1.0


def test_errors_carry_codes_and_survive_pickling() -> None:
    error = FaceTooSmallError("too small", {"face_size": 30.0})
    clone = pickle.loads(pickle.dumps(error))
    assert isinstance(clone, FaceTooSmallError) and isinstance(clone, FaceError)
    assert clone.to_dict() == {
        "code": "face_too_small",
        "message": "too small",
        "details": {"face_size": 30.0},
    }
    generic = pickle.loads(pickle.dumps(FaceError("custom", "msg")))
    assert generic.code == "custom" and str(generic) == "msg"


def test_min_face_size_is_configurable() -> None:
    for backend in ("mesh", "dlib"):
        strict = make_detector(DetectorConfig(backend=backend, min_face_size=120))  # type: ignore[arg-type]
        with pytest.raises(FaceTooSmallError):
            strict.detect(astronaut())


def test_dlib_tracker_detects_every_k_frames_and_follows_the_face() -> None:
    tracker = FaceTracker(dlib_detector(), detect_every=4)
    state = TrackerState()
    errors = []
    for index in range(12):
        frame = moved_astronaut(index)
        tracked = tracker.track(frame, state)
        assert tracked is not None
        reference = dlib_detector().detect(frame).landmarks
        errors.append(float(np.abs(tracked.landmarks - reference).mean()))
    assert state.detections_run == 3  # frames 0, 4, 8
    # Landmarks from the previous frame's box agree with a fresh detection to a few pixels.
    assert max(errors) < 3.0


def test_dlib_tracker_reports_lost_face_and_recovers() -> None:
    tracker = FaceTracker(dlib_detector(), detect_every=1)
    state = TrackerState()
    assert tracker.track(moved_astronaut(0), state) is not None
    background = cv2.resize(data.coffee(), (512, 512))
    assert tracker.track(background, state) is None
    assert state.landmarks is None
    # The next frame with a face is found again by a full detection.
    runs = state.detections_run
    assert tracker.track(moved_astronaut(1), state) is not None
    assert state.detections_run == runs + 1


def test_mesh_tracker_detects_once_and_follows_the_face() -> None:
    tracker = detector().tracker()
    state = TrackerState()
    errors = []
    for index in range(12):
        frame = moved_astronaut(index)
        tracked = tracker.track(frame, state)
        assert tracked is not None and tracked.mesh is not None and tracked.mesh.shape == (478, 2)
        reference = detector().detect(frame).landmarks
        errors.append(float(np.abs(tracked.landmarks - reference).mean()))
    # BlazeFace runs on the first frame only; the mesh follows from its own landmarks after that.
    assert state.detections_run == 1
    assert max(errors) < 2.0


def test_mesh_tracker_reports_lost_face_and_recovers() -> None:
    tracker = detector().tracker()
    state = TrackerState()
    assert tracker.track(moved_astronaut(0), state) is not None
    background = cv2.resize(data.coffee(), (512, 512))
    assert tracker.track(background, state) is None
    assert state.landmarks is None
    runs = state.detections_run
    assert tracker.track(moved_astronaut(1), state) is not None
    assert state.detections_run == runs + 1


def test_mesh_tracker_state_survives_pickling_and_restarts_its_graph() -> None:
    tracker = detector().tracker()
    state = TrackerState()
    for index in range(3):
        tracker.track(moved_astronaut(index), state)
    resumed = pickle.loads(pickle.dumps(state))
    # A fresh tracker (another process) does not know the stream: it starts with a detection.
    fresh = detector().tracker()
    assert fresh.track(moved_astronaut(3), resumed) is not None
    assert resumed.detections_run == state.detections_run + 1


def test_mesh_landmarks_follow_the_ibug_layout_on_the_astronaut() -> None:
    detection = detector().detect(astronaut())
    lm, mesh = detection.landmarks, detection.mesh
    assert mesh is not None and mesh.shape == (478, 2) and lm.shape == (68, 2)
    assert 70 < detection.report.face_size < 130
    right_eye, left_eye = lm[36:42].mean(0), lm[42:48].mean(0)
    assert right_eye[0] < lm[30, 0] < left_eye[0]
    assert lm[30, 1] > right_eye[1] and lm[57, 1] > lm[30, 1] and lm[8, 1] > lm[57, 1]
    # Eye corners on the eye line, chin below the mouth, jaw ends on either side.
    assert lm[0, 0] < lm[36, 0] and lm[16, 0] > lm[45, 0]
    # The dlib backend, an independent model, puts the eye and mouth anchors within a few pixels.
    reference = dlib_detector().detect(astronaut()).landmarks
    for group in (slice(36, 42), slice(42, 48), slice(48, 60)):
        assert np.linalg.norm(lm[group].mean(0) - reference[group].mean(0)) < 4.0


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError):
        make_detector(DetectorConfig(backend="nope"))  # type: ignore[arg-type]
