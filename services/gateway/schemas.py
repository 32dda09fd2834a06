"""Request and response models of REST API v1 (they are what the OpenAPI document shows)."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.platform.jobs import OUTPUT_FPS_MAX, OUTPUT_FPS_MIN, JobState, JobType

# -- inputs ----------------------------------------------------------------------------------------------


class MotionMode(enum.StrEnum):
    RELATIVE = "relative"  # driver's motion relative to its first frame, applied to the portrait's pose
    ABSOLUTE = "absolute"  # driver's head pose copied as is


class LabelCorner(enum.StrEnum):
    BOTTOM_RIGHT = "bottom-right"
    BOTTOM_LEFT = "bottom-left"
    TOP_RIGHT = "top-right"
    TOP_LEFT = "top-left"


class JobOptions(BaseModel):
    """How to render. Unknown fields are refused (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid")

    motion_mode: MotionMode = MotionMode.RELATIVE
    expression_scale: float = Field(1.0, ge=0.0, le=3.0, description="multiplier on the driver's expression")
    smoothing: float = Field(0.5, ge=0.0, le=1.0, description="temporal smoothing of fitted motion, 0 = none")
    output_size: int = Field(
        512,
        ge=64,
        le=2048,
        multiple_of=2,
        description="square output side in pixels (even: H.264 4:2:0) with paste_back=false",
    )
    output_fps: float | None = Field(
        None,
        ge=OUTPUT_FPS_MIN,
        le=OUTPUT_FPS_MAX,
        description="frames per second of the result (default: the driving video's rate)",
    )
    frame_limit: int | None = Field(
        None, ge=1, description="render at most this many frames (orbit: how many)"
    )
    label_corner: LabelCorner = Field(
        LabelCorner.BOTTOM_RIGHT, description="corner of the visible AI-generated label (never removable)"
    )
    paste_back: bool = Field(
        True,
        description="true: the animated head composited back into the portrait's own framing and resolution "
        "(long side capped by GOHA_PASTE_BACK_MAX_SIDE); false: the square face crop, output_size a side",
    )


class ConsentMethod(enum.StrEnum):
    WRITTEN_RELEASE = "written_release"
    ELECTRONIC_SIGNATURE = "electronic_signature"
    RECORDED_VERBAL = "recorded_verbal"
    SELF = "self"  # the person in the portrait is the one submitting


class ConsentAttestation(BaseModel):
    """Who consented to being animated, how, and when. Required on every job."""

    model_config = ConfigDict(extra="forbid")

    subject_name: str = Field(..., min_length=1, max_length=200, description="the person in the portrait")
    method: ConsentMethod
    obtained_at: dt.datetime = Field(..., description="when consent was given (ISO 8601 with timezone)")
    reference: str | None = Field(None, max_length=200, description="e.g. the release document's id")
    attested_by: str | None = Field(None, max_length=200, description="who at the tenant attests this")

    @field_validator("subject_name", "reference", "attested_by")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        return value

    @field_validator("obtained_at")
    @classmethod
    def _aware_and_past(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            raise ValueError("must include a timezone, e.g. 2026-11-01T10:00:00Z")
        if value > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5):
            raise ValueError("must not be in the future")
        return value.astimezone(dt.UTC)


# -- outputs ---------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(..., description="stable machine-readable code")
    message: str = Field(..., description="human explanation")
    details: dict[str, Any] | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorDetail


class AssetOut(BaseModel):
    id: str
    sha256: str
    size_bytes: int
    media_type: str
    kind: Literal["image", "video"]
    media_info: dict[str, Any]
    created_at: dt.datetime
    deleted_at: dt.datetime | None = Field(None, description="when its bytes were erased; re-upload restores")
    links: dict[str, str]


class Progress(BaseModel):
    frames_done: int
    frames_total: int | None
    fraction: float | None
    stage: str = Field(
        ...,
        description="queued, starting, analysing_portrait, reconstructing, preparing_paste_back, animating, "
        "marking, encoding, signing, uploading; succeeded, failed or cancelled once finished",
    )
    stage_text: str = Field(..., description='the stage in words, e.g. "animating 40/75"')
    eta_s: float | None = Field(
        None,
        description="seconds left, the worker's estimate from measured stage rates (None: nothing measured yet)",
    )


class JobError(BaseModel):
    code: str
    message: str


class CallbackOut(BaseModel):
    url: str
    attempts: int
    delivered_at: dt.datetime | None
    last_error: str | None


class JobOut(BaseModel):
    id: str
    state: JobState
    job_type: JobType
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    progress: Progress
    timings: dict[str, float] = Field(..., description="seconds: queued, running, total, and worker stages")
    error: JobError | None
    options: dict[str, Any]
    inputs: dict[str, str | None]
    attempts: int
    media_deleted_at: dt.datetime | None = Field(
        None, description="when the result and inputs were erased (DELETE, or the retention period)"
    )
    callback: CallbackOut | None = Field(None, description="the job-finished webhook, when one was asked for")
    links: dict[str, str]


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page")


class ResultUrl(BaseModel):
    url: str
    expires_at: dt.datetime
    sha256: str | None
    size_bytes: int | None
    media_type: str | None


class ProvenanceOut(BaseModel):
    job_id: str
    complete: bool = Field(..., description="False until the worker has recorded the output")
    signature_valid: bool
    signing_key_id: str
    signature: str
    document: dict[str, Any]


class VerifyOut(BaseModel):
    status: Literal["not_available", "checked"]
    message: str
    detector: str | None = None
    watermark: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    job_id: str | None = None
    same_tenant: bool | None = None
    provenance: dict[str, Any] | None = None
    checks: dict[str, bool | None] = Field(default_factory=dict)
    file_sha256: str


class HealthOut(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
