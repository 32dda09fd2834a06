"""/v1/jobs: submit, inspect, list, cancel, delete the data, fetch the result and the provenance record."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from services.gateway import service
from services.gateway.context import GatewayContext
from services.gateway.deps import (
    Principal,
    audit_action,
    get_context,
    job_log_context,
    principal,
    request_meta,
)
from services.gateway.schemas import ErrorEnvelope, JobList, JobOptions, JobOut, ProvenanceOut, ResultUrl
from services.gateway.uploads import multipart_openapi, streamed_form
from shared.platform import repository
from shared.platform.errors import (
    PROVENANCE_NOT_AVAILABLE,
    RESULT_DELETED,
    RESULT_NOT_READY,
    Conflict,
    NotFound,
    PlatformError,
)
from shared.platform.jobs import JobState
from shared.platform.models import Job, utcnow
from shared.platform.provenance import provenance_document, signature_valid

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS = {code: {"model": ErrorEnvelope} for code in (400, 401, 404, 408, 409, 410, 413, 415, 422, 429)}
Ctx = Annotated[GatewayContext, Depends(get_context)]
Who = Annotated[Principal, Depends(principal)]
# The {job_id} of the path, also bound to the request's log context.
JobId = Annotated[str, Depends(job_log_context)]


def _owned_job(ctx: GatewayContext, who: Principal, job_id: str) -> Job:
    with ctx.db.session() as session:
        job = repository.get_job(session, who.tenant_id, job_id)
    if job is None:
        raise NotFound("job")
    return job


# Text fields of POST /v1/jobs besides the options (JobOptions' fields) and the consent attestation.
SUBMIT_FIELDS = {
    "portrait_asset_id": "instead of uploading: an earlier asset",
    "driving_asset_id": "instead of uploading: an earlier asset",
    "job_type": "reenact (default) or orbit (novel-view render)",
    "callback_url": "https URL the platform POSTs to (signed) when the job has finished; see docs/api.md",
}
CONSENT_FIELDS = {
    "consent_subject": ("subject_name", "REQUIRED: who consented (the person shown)"),
    "consent_method": (
        "method",
        "REQUIRED: written_release | electronic_signature | recorded_verbal | self",
    ),
    "consent_obtained_at": ("obtained_at", "REQUIRED: when, ISO 8601 with timezone"),
    "consent_reference": ("reference", "e.g. the release document's id"),
    "consent_attested_by": ("attested_by", "who at your organisation attests this"),
}
UPLOAD_FILES = {
    "portrait": "JPEG, PNG or WebP portrait (one face)",
    "driving_video": "MP4/MOV/WebM/MKV/AVI driving clip",
}


def _option_fields() -> dict[str, str]:
    return {name: info.description or "" for name, info in JobOptions.model_fields.items()}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses=ERRORS,
    summary="Submit a reenactment (or orbit) job",
    dependencies=[audit_action("job.create")],
    openapi_extra=multipart_openapi(
        UPLOAD_FILES,
        {
            **SUBMIT_FIELDS,
            **_option_fields(),
            **{name: description for name, (_, description) in CONSENT_FIELDS.items()},
        },
        required=("consent_subject", "consent_method", "consent_obtained_at"),
    ),
)
async def create_job(
    request: Request,
    response: Response,
    ctx: Ctx,
    who: Who,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobOut:
    """Multipart upload of a portrait and a driving video (or ids of earlier ``POST /v1/assets``
    uploads), render options and the **required** consent attestation. Answers 202 at once; poll
    ``links.self``. With an ``Idempotency-Key`` header, repeating the same request returns the
    same job (header ``Idempotent-Replayed: true``); the same key with another body is a 409.

    The key is checked and the rate limit charged before any byte of the body is read; each file is
    refused (413) as soon as it passes the size limit."""
    async with streamed_form(
        request, ctx.settings, ctx.upload_slots, who.api_key_id, tuple(UPLOAD_FILES)
    ) as received:
        text = received.text
        form = service.SubmitForm(
            job_type=text("job_type"),
            options={name: text(name) for name in JobOptions.model_fields},
            consent={key: text(name) for name, (key, _) in CONSENT_FIELDS.items()},
            portrait=received.files.get("portrait"),
            portrait_asset_id=text("portrait_asset_id"),
            driving=received.files.get("driving_video"),
            driving_asset_id=text("driving_asset_id"),
            callback_url=text("callback_url"),
        )
        job, replayed = await run_in_threadpool(
            service.submit_job, ctx, who, form, idempotency_key, request_meta(request)
        )
    out = service.job_to_out(job, ctx.base_url)
    response.headers["Location"] = out.links["self"]
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return out


@router.get("", response_model=JobList, responses=ERRORS, summary="List your jobs, newest first")
def list_jobs(
    ctx: Ctx,
    who: Who,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    id_prefix: Annotated[
        str | None,
        Query(
            max_length=36,
            description="only the job whose id starts with this (at least 8 characters, as the CLI prints "
            "ids); 409 ambiguous_job_id when several of your jobs match, 400 job_id_too_short under 8",
        ),
    ] = None,
) -> JobList:
    return service.list_jobs(ctx, who, state=state, limit=limit, cursor=cursor, id_prefix=id_prefix)


@router.get(
    "/{job_id}", response_model=JobOut, responses=ERRORS, summary="Job state, progress, timings, error"
)
def get_job(job_id: JobId, ctx: Ctx, who: Who) -> JobOut:
    return service.job_to_out(_owned_job(ctx, who, job_id), ctx.base_url)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses=ERRORS,
    summary="Cancel a queued or running job",
    dependencies=[audit_action("job.cancel")],
)
def cancel_job(job_id: JobId, request: Request, ctx: Ctx, who: Who) -> JobOut:
    job = service.cancel_job(ctx, who, job_id, request_meta(request))
    return service.job_to_out(job, ctx.base_url)


@router.delete(
    "/{job_id}",
    response_model=JobOut,
    responses=ERRORS,
    summary="Delete a finished job's data (result, inputs, cached avatar); the record stays",
    dependencies=[audit_action("job.erase")],
)
def erase_job(job_id: JobId, request: Request, ctx: Ctx, who: Who) -> JobOut:
    """Erases the result video, the inputs no other job still holding its data uses, and the cached
    avatar of the portrait. The job, its events and its signed provenance record stay, so a copy of
    the video still names this job in ``POST /v1/verify``. A queued or running job is a 409
    ``job_not_finished``: cancel it first. Repeating the call changes nothing."""
    job = service.erase_job(ctx, who, job_id, request_meta(request))
    return service.job_to_out(job, ctx.base_url)


@router.get(
    "/{job_id}/result",
    responses={
        **ERRORS,
        307: {"description": "redirect to a presigned URL that expires (S3 storage)"},
        200: {
            "description": "the video itself (local storage) or, with mode=url, the URL",
            "content": {"video/mp4": {}},
        },
    },
    summary="Download the result",
    dependencies=[audit_action("job.result")],
    response_model=None,
)
def get_result(
    job_id: JobId,
    request: Request,
    ctx: Ctx,
    who: Who,
    mode: Annotated[
        Literal["redirect", "url"], Query(description="url: answer the presigned URL as JSON")
    ] = "redirect",
) -> Response | ResultUrl:
    job = _owned_job(ctx, who, job_id)
    if job.media_deleted_at is not None:
        raise PlatformError(
            RESULT_DELETED,
            "the job's data were deleted; its provenance record remains",
            status=410,
            details={"media_deleted_at": job.media_deleted_at.isoformat()},
        )
    if job.state != JobState.SUCCEEDED.value or not job.result_key:
        raise Conflict(
            RESULT_NOT_READY,
            f"the job is {job.state}; a result exists once it has succeeded",
            details={"state": job.state},
        )
    service.audit_action(ctx, who, request_meta(request), "job.result", "job", job.id, {"mode": mode})
    if ctx.storage.supports_presign:
        ttl = ctx.settings.presign_ttl_s
        url = ctx.storage.presigned_get_url(job.result_key, ttl)
        if mode == "url":
            return ResultUrl(
                url=url,
                expires_at=utcnow() + dt.timedelta(seconds=ttl),
                sha256=job.result_sha256,
                size_bytes=job.result_size_bytes,
                media_type=job.result_media_type,
            )
        return RedirectResponse(url, status_code=307)
    if mode == "url":
        raise PlatformError(
            "presign_not_supported", "local storage cannot presign URLs; fetch without mode=url", status=400
        )
    return _stream(ctx, job)


def _stream(ctx: GatewayContext, job: Job) -> StreamingResponse:
    key = job.result_key
    assert key is not None

    def chunks() -> Iterator[bytes]:
        with ctx.storage.open(key) as handle:
            while chunk := handle.read(1 << 20):
                yield chunk

    headers = {"Content-Disposition": f'attachment; filename="{job.id}.mp4"'}
    if job.result_size_bytes is not None:
        headers["Content-Length"] = str(job.result_size_bytes)
    if job.result_sha256:
        headers["X-Content-SHA256"] = job.result_sha256
    return StreamingResponse(
        chunks(), media_type=job.result_media_type or "application/octet-stream", headers=headers
    )


@router.get(
    "/{job_id}/provenance",
    response_model=ProvenanceOut,
    responses=ERRORS,
    summary="The signed provenance record",
    dependencies=[audit_action("job.provenance")],
)
def get_provenance(job_id: JobId, ctx: Ctx, who: Who) -> ProvenanceOut:
    job = _owned_job(ctx, who, job_id)
    with ctx.db.session() as session:
        record = repository.get_provenance(session, job.id)
    if record is None:
        raise PlatformError(PROVENANCE_NOT_AVAILABLE, "no provenance record exists for this job", status=404)
    return ProvenanceOut(
        job_id=job.id,
        complete=record.completed_at is not None,
        signature_valid=signature_valid(record, ctx.signing_key),
        signing_key_id=record.signing_key_id,
        signature=record.signature,
        document=provenance_document(record),
    )
