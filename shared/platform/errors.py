"""Typed errors of the platform layer.

Each error carries a stable machine-readable ``code``, a human ``message`` and the HTTP status the
gateway answers with; the gateway renders every one as ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from shared.errors import CodedError

# -- codes (stable: clients match on them) -------------------------------------------------------------
UNAUTHENTICATED = "unauthenticated"
NOT_FOUND = "not_found"
RATE_LIMITED = "rate_limited"
TOO_MANY_ACTIVE_JOBS = "too_many_active_jobs"
PAYLOAD_TOO_LARGE = "payload_too_large"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
WRONG_MEDIA_KIND = "wrong_media_kind"
CORRUPT_MEDIA = "corrupt_media"
IMAGE_TOO_LARGE = "image_too_large"  # pixel count over the limit (decompression bomb guard)
IMAGE_TOO_SMALL = "image_too_small"
VIDEO_TOO_LONG = "video_too_long"
VIDEO_TOO_LARGE = "video_too_large"  # resolution over the limit
VIDEO_FPS_TOO_HIGH = "video_fps_too_high"
VIDEO_TOO_MANY_FRAMES = "video_too_many_frames"
VIDEO_CODEC_NOT_ALLOWED = "video_codec_not_allowed"  # any video stream, not only the first
AUDIO_CODEC_NOT_ALLOWED = "audio_codec_not_allowed"  # any audio stream (audio is decoded to re-encode it)
EMPTY_UPLOAD = "empty_upload"
MISSING_INPUT = "missing_input"
CONSENT_REQUIRED = "consent_required"
INVALID_REQUEST = "invalid_request"
JOB_ID_TOO_SHORT = "job_id_too_short"  # GET /v1/jobs?id_prefix= under MIN_JOB_ID_PREFIX characters
AMBIGUOUS_JOB_ID = "ambiguous_job_id"  # GET /v1/jobs?id_prefix= matching several of the tenant's jobs
INVALID_OPTIONS = "invalid_options"
INVALID_CALLBACK_URL = "invalid_callback_url"
IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
ILLEGAL_TRANSITION = "illegal_transition"
JOB_NOT_CANCELLABLE = "job_not_cancellable"
RESULT_NOT_READY = "result_not_ready"
RESULT_DELETED = "result_deleted"  # the job's data were erased (by its owner or the retention period)
ASSET_DELETED = "asset_deleted"
ASSET_IN_USE = "asset_in_use"
JOB_NOT_FINISHED = "job_not_finished"
PROVENANCE_NOT_AVAILABLE = "provenance_not_available"
CONFIGURATION_ERROR = "configuration_error"
STORAGE_KEY_INVALID = "storage_key_invalid"
OBJECT_NOT_FOUND = "object_not_found"


class PlatformError(CodedError):
    """Base of platform errors: ``PlatformError(code, message, status=400, details=None)``."""

    status: int = 400
    str_template: ClassVar[str] = "[{code}] {message}"
    omit_empty_details: ClassVar[bool] = True  # the gateway's error body has no empty "details"

    def __init__(
        self, code: str, message: str, *, status: int | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(code, message, details)
        if status is not None:
            self.status = status


class InputRejected(PlatformError):
    """An upload or form field refused before anything was stored."""

    status = 422


class NotFound(PlatformError):
    status = 404

    def __init__(self, what: str = "resource", *, details: dict[str, Any] | None = None) -> None:
        super().__init__(NOT_FOUND, f"{what} not found", details=details)


class Conflict(PlatformError):
    status = 409


class IllegalTransition(Conflict):
    """A job state change the state machine does not allow (or another process moved the job first)."""

    def __init__(self, job_id: str, current: str, requested: str) -> None:
        super().__init__(
            ILLEGAL_TRANSITION,
            f"job {job_id} cannot go from {current} to {requested}",
            details={"job_id": job_id, "current": current, "requested": requested},
        )
        self.job_id = job_id
        self.current = current
        self.requested = requested


class ConfigurationError(PlatformError):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(CONFIGURATION_ERROR, message)
