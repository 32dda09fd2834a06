"""Every typed error derives from ``shared.errors.CodedError`` and keeps its wire behaviour.

For each class: the code, ``str()``, details and ``ValueError``-ness it had before the shared base, and
a pickle round trip (exceptions cross processes: multiprocessing, DDP spawn, Celery).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from services.inference.errors import (
    InferenceAuthError,
    InferenceError,
    InferenceInputError,
    InferenceServerError,
    InferenceServerStartError,
    InferenceUnavailable,
)
from services.worker.errors import JobFailure, TransientFailure
from shared.errors import CodedError
from shared.face.errors import (
    FaceAtBorderError,
    FaceError,
    FaceTooSmallError,
    FitFailedError,
    ImageInvalidError,
    NoFaceError,
)
from shared.face.morphable import MorphableModelError
from shared.face.rasterizer import RasterizerError
from shared.face.render import RenderError
from shared.media.errors import MediaError
from shared.model.errors import CheckpointError, ConfigError, ModelError, ModelInputError
from shared.platform.errors import (
    ConfigurationError,
    Conflict,
    IllegalTransition,
    InputRejected,
    NotFound,
    PlatformError,
)
from shared.training.errors import DataError, TrainingError, WeightsError


@dataclass(frozen=True)
class Case:
    make: Callable[[], CodedError]
    cls: type[CodedError]
    code: str
    text: str  # str(error)
    details: dict[str, Any]
    value_error: bool  # ``except ValueError`` sites must keep catching it


CASES = {
    # face: str() is the bare message; FaceError is not a ValueError, the geometry errors are.
    "FaceError": Case(
        lambda: FaceError("custom", "msg", {"k": 1}), FaceError, "custom", "msg", {"k": 1}, False
    ),
    "NoFaceError": Case(lambda: NoFaceError("none"), NoFaceError, "no_face", "none", {}, False),
    "FaceTooSmallError": Case(
        lambda: FaceTooSmallError("small", {"face_size": 30.0}),
        FaceTooSmallError,
        "face_too_small",
        "small",
        {"face_size": 30.0},
        False,
    ),
    "FaceAtBorderError": Case(
        lambda: FaceAtBorderError("border"), FaceAtBorderError, "face_at_border", "border", {}, False
    ),
    "ImageInvalidError": Case(
        lambda: ImageInvalidError("bad"), ImageInvalidError, "image_invalid", "bad", {}, False
    ),
    "FitFailedError": Case(lambda: FitFailedError("nan"), FitFailedError, "fit_failed", "nan", {}, False),
    "RenderError": Case(
        lambda: RenderError("bad_shading", "no such shading"),
        RenderError,
        "bad_shading",
        "no such shading",
        {},
        True,
    ),
    "RasterizerError": Case(
        lambda: RasterizerError("bad_faces", "out of range"),
        RasterizerError,
        "bad_faces",
        "out of range",
        {},
        True,
    ),
    "MorphableModelError": Case(
        lambda: MorphableModelError("bfm_missing_key", "no shapeMU"),
        MorphableModelError,
        "bfm_missing_key",
        "no shapeMU",
        {},
        True,
    ),
    # model: "[code] message", ValueError.
    "ModelError": Case(lambda: ModelError("model.x", "m"), ModelError, "model.x", "[model.x] m", {}, True),
    "ModelInputError": Case(
        lambda: ModelInputError("model.bad_input", "shape"),
        ModelInputError,
        "model.bad_input",
        "[model.bad_input] shape",
        {},
        True,
    ),
    "ConfigError": Case(
        lambda: ConfigError("config.unknown_profile", "huge"),
        ConfigError,
        "config.unknown_profile",
        "[config.unknown_profile] huge",
        {},
        True,
    ),
    "CheckpointError": Case(
        lambda: CheckpointError("model.avatar_mismatch", "other model"),
        CheckpointError,
        "model.avatar_mismatch",
        "[model.avatar_mismatch] other model",
        {},
        True,
    ),
    # platform: "[code] message", carries an HTTP status, not a ValueError.
    "PlatformError": Case(
        lambda: PlatformError("invalid_request", "bad", status=418, details={"field": "x"}),
        PlatformError,
        "invalid_request",
        "[invalid_request] bad",
        {"field": "x"},
        False,
    ),
    "InputRejected": Case(
        lambda: InputRejected("video_too_long", "too long", details={"duration_s": 412.0}),
        InputRejected,
        "video_too_long",
        "[video_too_long] too long",
        {"duration_s": 412.0},
        False,
    ),
    "NotFound": Case(lambda: NotFound("job"), NotFound, "not_found", "[not_found] job not found", {}, False),
    "Conflict": Case(
        lambda: Conflict("result_not_ready", "wait"),
        Conflict,
        "result_not_ready",
        "[result_not_ready] wait",
        {},
        False,
    ),
    "IllegalTransition": Case(
        lambda: IllegalTransition("j1", "succeeded", "running"),
        IllegalTransition,
        "illegal_transition",
        "[illegal_transition] job j1 cannot go from succeeded to running",
        {"job_id": "j1", "current": "succeeded", "requested": "running"},
        False,
    ),
    "ConfigurationError": Case(
        lambda: ConfigurationError("GOHA_X unset"),
        ConfigurationError,
        "configuration_error",
        "[configuration_error] GOHA_X unset",
        {},
        False,
    ),
    # training: bare message, ValueError.
    "TrainingError": Case(
        lambda: TrainingError("training.no_state", "nothing to resume"),
        TrainingError,
        "training.no_state",
        "nothing to resume",
        {},
        True,
    ),
    "DataError": Case(
        lambda: DataError("data.missing", "no shards"), DataError, "data.missing", "no shards", {}, True
    ),
    "WeightsError": Case(
        lambda: WeightsError("weights.mismatch", "lin0"),
        WeightsError,
        "weights.mismatch",
        "lin0",
        {},
        True,
    ),
    # media: "[code] message", not a ValueError.
    "MediaError": Case(
        lambda: MediaError("video_no_frames", "nothing decoded", {"path": "x.mp4"}),
        MediaError,
        "video_no_frames",
        "[video_no_frames] nothing decoded",
        {"path": "x.mp4"},
        False,
    ),
    # worker: "code: message".
    "JobFailure": Case(
        lambda: JobFailure("driving_no_face", "no face in frame 3"),
        JobFailure,
        "driving_no_face",
        "driving_no_face: no face in frame 3",
        {},
        False,
    ),
    "TransientFailure": Case(
        lambda: TransientFailure("storage_unavailable", "S3 down"),
        TransientFailure,
        "storage_unavailable",
        "storage_unavailable: S3 down",
        {},
        False,
    ),
    # inference: message first, ``code`` keyword defaulting to the class's; only the input error is a
    # ValueError.
    "InferenceError": Case(
        lambda: InferenceError("boom"), InferenceError, "inference_error", "[inference_error] boom", {}, False
    ),
    "InferenceError(code=)": Case(
        lambda: InferenceServerError("drift", code="inference_contract_mismatch"),
        InferenceServerError,
        "inference_contract_mismatch",
        "[inference_contract_mismatch] drift",
        {},
        False,
    ),
    "InferenceInputError": Case(
        lambda: InferenceInputError("shape", code="invalid_shape"),
        InferenceInputError,
        "invalid_shape",
        "[invalid_shape] shape",
        {},
        True,
    ),
    "InferenceUnavailable": Case(
        lambda: InferenceUnavailable("down"),
        InferenceUnavailable,
        "inference_unavailable",
        "[inference_unavailable] down",
        {},
        False,
    ),
    "InferenceAuthError": Case(
        lambda: InferenceAuthError("token"),
        InferenceAuthError,
        "inference_access_denied",
        "[inference_access_denied] token",
        {},
        False,
    ),
    "InferenceServerStartError": Case(
        lambda: InferenceServerStartError("died"),
        InferenceServerStartError,
        "inference_server_start_failed",
        "[inference_server_start_failed] died",
        {},
        False,
    ),
}


def _check(error: CodedError, case: Case) -> None:
    assert type(error) is case.cls
    assert isinstance(error, CodedError)
    assert isinstance(error, ValueError) is case.value_error
    assert error.code == case.code
    assert str(error) == case.text
    assert error.details == case.details
    assert error.args == (error.message,)
    assert case.text.endswith(error.message)
    assert repr(error) == f"{case.cls.__name__}(code={case.code!r}, message={error.message!r})"


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_error_keeps_code_text_details_and_bases(case: Case) -> None:
    _check(case.make(), case)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_error_survives_a_pickle_round_trip(case: Case, protocol: int) -> None:
    error = case.make()
    clone = pickle.loads(pickle.dumps(error, protocol=protocol))
    _check(clone, case)
    assert clone.message == error.message
    assert clone.to_dict() == error.to_dict()
    assert vars(clone) == vars(error)


def test_subclass_fields_survive_pickling() -> None:
    transition = pickle.loads(pickle.dumps(IllegalTransition("j1", "succeeded", "running")))
    assert (transition.job_id, transition.current, transition.requested) == ("j1", "succeeded", "running")
    assert transition.status == 409
    teapot = pickle.loads(pickle.dumps(PlatformError("invalid_request", "bad", status=418)))
    assert teapot.status == 418
    assert pickle.loads(pickle.dumps(ConfigurationError("x"))).status == 500
    assert pickle.loads(pickle.dumps(InferenceUnavailable("down"))).retryable is True


class _Timeout(CodedError):
    def __init__(self, seconds: float) -> None:
        super().__init__("timeout", f"timed out after {seconds} s", {"seconds": seconds})
        self.seconds = seconds


def test_a_subclass_with_its_own_signature_pickles_without_a_reduce() -> None:
    # The base rebuilds without calling __init__, so a new subclass needs no __reduce__ of its own.
    clone = pickle.loads(pickle.dumps(_Timeout(2.5)))
    assert type(clone) is _Timeout and clone.seconds == 2.5 and str(clone) == "timed out after 2.5 s"
    assert clone.details == {"seconds": 2.5}


def test_to_dict_keeps_each_family_wire_format() -> None:
    # Face and media errors always carry "details" (the worker stores them as they are) ...
    assert NoFaceError("none").to_dict() == {"code": "no_face", "message": "none", "details": {}}
    assert MediaError("video_unreadable", "x").to_dict() == {
        "code": "video_unreadable",
        "message": "x",
        "details": {},
    }
    # ... the gateway's error body leaves an empty "details" out.
    assert NotFound("job").to_dict() == {"code": "not_found", "message": "job not found"}
    assert NotFound("job", details={"id": "j1"}).to_dict() == {
        "code": "not_found",
        "message": "job not found",
        "details": {"id": "j1"},
    }


def test_details_are_copied_not_aliased() -> None:
    given = {"face_size": 30.0}
    error = FaceTooSmallError("small", given)
    given["face_size"] = 99.0
    assert error.details == {"face_size": 30.0}
