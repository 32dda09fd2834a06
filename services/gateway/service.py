"""What the routes do, between HTTP and the database: uploads, job submission, serialisation.

Order of a submission, chosen so a refused request leaves nothing behind:
1. validate the form (job type, options, consent) — nothing read yet;
2. (the route, before this module) authenticate, rate-limit, take an upload slot, then stream each
   part to the request's private workspace while hashing it, refusing past its limit (``uploads``);
3. sniff + inspect the bytes (type, pixels, video limits, integrity);
4. idempotency: same key + same body -> the earlier job; same key + other body -> 409;
5. put new inputs in object storage (content-addressed, so a retry rewrites the same key);
6. one transaction: assets, job, first event, provenance record, audit entry;
7. after commit: publish to the queue (a failure leaves the job for the reconciler).
If step 6 fails, objects written in step 5 that no asset row references are deleted again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from services.gateway.context import GatewayContext
from services.gateway.deps import Principal, RequestMeta
from services.gateway.schemas import (
    AssetOut,
    CallbackOut,
    ConsentAttestation,
    JobError,
    JobList,
    JobOptions,
    JobOut,
    Progress,
)
from services.gateway.uploads import ReceivedFile
from shared.platform import erasure, repository, webhooks
from shared.platform.errors import (
    AMBIGUOUS_JOB_ID,
    ASSET_DELETED,
    CONSENT_REQUIRED,
    IDEMPOTENCY_KEY_REUSED,
    INVALID_OPTIONS,
    INVALID_REQUEST,
    JOB_ID_TOO_SHORT,
    JOB_NOT_CANCELLABLE,
    MISSING_INPUT,
    TOO_MANY_ACTIVE_JOBS,
    WRONG_MEDIA_KIND,
    Conflict,
    IllegalTransition,
    InputRejected,
    NotFound,
    PlatformError,
)
from shared.platform.inputs import MediaInfo, MediaKind, inspect_media
from shared.platform.jobs import STAGES, JobState, JobType, job_links, transition
from shared.platform.logging import log_context
from shared.platform.metrics import ENQUEUE_FAILURES, JOBS_SUBMITTED
from shared.platform.models import Asset, Job, utcnow
from shared.platform.queue import enqueue_job
from shared.platform.storage import input_key

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY = 255
# The form field naming an earlier asset instead of an upload, per upload field.
ASSET_FIELDS = {"portrait": "portrait_asset_id", "driving_video": "driving_asset_id"}


@dataclass(frozen=True)
class SpooledUpload:
    path: Path
    size_bytes: int
    sha256: str
    filename: str
    info: MediaInfo


@dataclass
class ResolvedInput:
    """An input that is either already an asset row or a validated upload waiting to be stored."""

    asset: Asset | None = None
    upload: SpooledUpload | None = None

    @property
    def sha256(self) -> str:
        if self.asset is not None:
            return self.asset.sha256
        assert self.upload is not None
        return self.upload.sha256


def inspect_upload(
    received: ReceivedFile, name: str, ctx: GatewayContext, kind: MediaKind | None
) -> SpooledUpload:
    """Sniff and bound a received file (already on disk, size-limited and hashed while it was read)."""
    try:
        info = inspect_media(received.path, ctx.limits, kind)
    except InputRejected as exc:
        exc.details.setdefault("field", name)
        exc.message = f"{name}: {exc.message}"
        raise
    return SpooledUpload(received.path, received.size_bytes, received.sha256, received.filename, info)


# -- assets ----------------------------------------------------------------------------------------------
def _store_uploads(ctx: GatewayContext, tenant_id: str, uploads: list[SpooledUpload]) -> list[str]:
    """Put uploads in storage; returns the keys this call created (candidates for cleanup)."""
    created: list[str] = []
    for upload in uploads:
        key = input_key(tenant_id, upload.sha256)
        if ctx.storage.exists(key):
            continue
        ctx.storage.put_file(key, upload.path, content_type=upload.info.media_type)
        created.append(key)
    return created


def _cleanup_orphans(ctx: GatewayContext, tenant_id: str, keys: list[str]) -> None:
    """Delete objects we wrote if no asset row points at them (a concurrent twin may have committed)."""
    if not keys:
        return
    with ctx.db.session() as session:
        for key in keys:
            sha256 = key.rsplit("/", 1)[-1]
            if repository.find_asset_by_hash(session, tenant_id, sha256) is None:
                try:
                    ctx.storage.delete(key)
                except Exception:
                    log.exception("could not delete orphan object %s", key)


def _asset_row(session: Any, tenant_id: str, upload: SpooledUpload) -> tuple[Asset, bool]:
    return repository.get_or_create_asset(
        session,
        tenant_id=tenant_id,
        sha256=upload.sha256,
        size_bytes=upload.size_bytes,
        media_type=upload.info.media_type,
        kind=upload.info.kind,
        storage_key=input_key(tenant_id, upload.sha256),
        media_info=upload.info.to_dict(),
        original_filename=upload.filename,
    )


def upload_asset(
    ctx: GatewayContext, who: Principal, upload: ReceivedFile, meta: RequestMeta
) -> tuple[Asset, bool]:
    """Validate and store one received file as an asset; returns (asset, created)."""
    spooled = inspect_upload(upload, "file", ctx, None)
    with ctx.db.session() as session:
        existing = repository.find_asset_by_hash(session, who.tenant_id, spooled.sha256)
    if existing is not None and ctx.storage.exists(existing.storage_key):
        return existing, False
    created_keys = _store_uploads(ctx, who.tenant_id, [spooled])
    try:
        with ctx.db.session() as session:
            asset, created = _asset_row(session, who.tenant_id, spooled)
            _audit(
                session,
                who,
                meta,
                "asset.upload",
                "asset",
                asset.id,
                {"sha256": asset.sha256, "media_type": asset.media_type},
            )
    except BaseException:
        _cleanup_orphans(ctx, who.tenant_id, created_keys)
        raise
    return asset, created


def asset_to_out(asset: Asset, base_url: str) -> AssetOut:
    return AssetOut(
        id=asset.id,
        sha256=asset.sha256,
        size_bytes=asset.size_bytes,
        media_type=asset.media_type,
        kind=asset.kind,  # type: ignore[arg-type]
        media_info=asset.media_info or {},
        created_at=asset.created_at,
        deleted_at=asset.deleted_at,
        links={"self": f"{base_url}/v1/assets/{asset.id}"},
    )


# -- job submission --------------------------------------------------------------------------------------
@dataclass
class SubmitForm:
    job_type: str | None
    options: dict[str, Any]  # raw form values; None entries mean "not given"
    consent: dict[str, Any]
    portrait: ReceivedFile | None
    portrait_asset_id: str | None
    driving: ReceivedFile | None
    driving_asset_id: str | None
    callback_url: str | None = None


def _validate_form(ctx: GatewayContext, form: SubmitForm) -> tuple[JobType, JobOptions, ConsentAttestation]:
    try:
        job_type = JobType(form.job_type or JobType.REENACT.value)
    except ValueError as exc:
        raise InputRejected(INVALID_OPTIONS, f"job_type must be one of {[t.value for t in JobType]}") from exc
    given_consent = {k: v for k, v in form.consent.items() if v not in (None, "")}
    if not given_consent:
        raise InputRejected(
            CONSENT_REQUIRED,
            "a consent attestation is required: consent_subject, consent_method and consent_obtained_at",
        )
    try:
        consent = ConsentAttestation(**given_consent)
    except ValidationError as exc:
        raise InputRejected(
            CONSENT_REQUIRED, f"incomplete or invalid consent attestation: {_first_errors(exc)}"
        ) from exc
    try:
        options = JobOptions(**{k: v for k, v in form.options.items() if v not in (None, "")})
    except ValidationError as exc:
        raise InputRejected(INVALID_OPTIONS, f"invalid options: {_first_errors(exc)}") from exc
    settings = ctx.settings
    if options.output_size > settings.max_output_size:
        raise InputRejected(INVALID_OPTIONS, f"output_size may be at most {settings.max_output_size}")
    if options.output_fps is not None and options.output_fps > settings.max_video_fps:
        raise InputRejected(INVALID_OPTIONS, f"output_fps may be at most {settings.max_video_fps:g}")
    if options.frame_limit is not None and options.frame_limit > settings.max_video_frames:
        raise InputRejected(INVALID_OPTIONS, f"frame_limit may be at most {settings.max_video_frames}")
    return job_type, options, consent


def _first_errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:4])


def _resolve(
    ctx: GatewayContext,
    who: Principal,
    label: str,
    upload: ReceivedFile | None,
    asset_id: str | None,
    kind: MediaKind,
    required: bool,
) -> ResolvedInput | None:
    asset_field = ASSET_FIELDS[label]
    if upload is not None and asset_id:
        raise InputRejected(INVALID_REQUEST, f"give either the {label} file or {asset_field}, not both")
    if upload is not None:
        return ResolvedInput(upload=inspect_upload(upload, label, ctx, kind))
    if asset_id:
        with ctx.db.session() as session:
            asset = repository.get_asset(session, who.tenant_id, asset_id)
        if asset is None:
            raise NotFound(f"{label} asset {asset_id!r}")
        if asset.deleted_at is not None:
            raise PlatformError(
                ASSET_DELETED,
                f"{label} asset {asset_id!r} was deleted: upload the file again",
                status=410,
                details={"field": asset_field},
            )
        if asset.kind != kind:
            raise InputRejected(
                WRONG_MEDIA_KIND,
                f"{asset_field} is a {asset.kind}, expected {'an image' if kind == 'image' else 'a video'}",
                status=415,
            )
        return ResolvedInput(asset=asset)
    if required:
        raise InputRejected(
            MISSING_INPUT, f"the {label} is required: upload it as '{label}' or pass {asset_field}"
        )
    return None


def request_hash(
    job_type: JobType,
    options: JobOptions,
    consent: ConsentAttestation,
    portrait_sha: str,
    driving_sha: str | None,
    callback_url: str | None = None,
) -> str:
    body = {
        "job_type": job_type.value,
        "options": options.model_dump(mode="json"),
        "consent": consent.model_dump(mode="json"),
        "portrait_sha256": portrait_sha,
        "driving_sha256": driving_sha,
    }
    if callback_url is not None:  # absent from older requests' hashes: their replays still match
        body["callback_url"] = callback_url
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _replay(ctx: GatewayContext, who: Principal, key: str, digest: str) -> Job | None:
    with ctx.db.session() as session:
        job = repository.get_job_by_idempotency_key(session, who.tenant_id, key)
    if job is None:
        return None
    if job.request_hash != digest:
        raise Conflict(
            IDEMPOTENCY_KEY_REUSED,
            "this Idempotency-Key was already used with a different request body",
            details={"job_id": job.id},
        )
    return job


def submit_job(
    ctx: GatewayContext, who: Principal, form: SubmitForm, idempotency_key: str | None, meta: RequestMeta
) -> tuple[Job, bool]:
    """Returns (job, replayed). ``replayed`` is True when an earlier identical request created it."""
    if idempotency_key is not None and not (
        0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY and idempotency_key.isprintable()
    ):
        raise InputRejected(
            INVALID_REQUEST, f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters"
        )
    job_type, options, consent = _validate_form(ctx, form)
    callback_url = webhooks.check_callback_url(form.callback_url, ctx.settings) if form.callback_url else None
    portrait = _resolve(ctx, who, "portrait", form.portrait, form.portrait_asset_id, "image", True)
    driving = _resolve(
        ctx,
        who,
        "driving_video",
        form.driving,
        form.driving_asset_id,
        "video",
        job_type is JobType.REENACT,
    )
    assert portrait is not None
    digest = request_hash(
        job_type, options, consent, portrait.sha256, driving.sha256 if driving else None, callback_url
    )
    if idempotency_key and (earlier := _replay(ctx, who, idempotency_key, digest)) is not None:
        return earlier, True
    _check_active_jobs(ctx, who)  # after the replay: a retried request still gets its job

    uploads = [r.upload for r in (portrait, driving) if r is not None and r.upload is not None]
    created_keys = _store_uploads(ctx, who.tenant_id, uploads)
    consent_record = {
        **consent.model_dump(mode="json"),
        "attested_via_api_key": who.key_prefix,
        "recorded_at": utcnow().isoformat(),
    }
    try:
        with ctx.db.session() as session:
            portrait_asset = portrait.asset or _asset_row(session, who.tenant_id, portrait.upload)[0]  # type: ignore[arg-type]
            driving_asset = None
            if driving is not None:
                driving_asset = driving.asset or _asset_row(session, who.tenant_id, driving.upload)[0]  # type: ignore[arg-type]
            job = repository.create_job(
                session,
                tenant_id=who.tenant_id,
                api_key_id=who.api_key_id,
                job_type=job_type.value,
                options=options.model_dump(mode="json"),
                consent=consent_record,
                portrait=portrait_asset,
                driving=driving_asset,
                idempotency_key=idempotency_key,
                request_hash=digest,
                signing_key=ctx.signing_key,
                callback_url=callback_url,
            )
            _audit(
                session,
                who,
                meta,
                "job.create",
                "job",
                job.id,
                {"job_type": job_type.value, "idempotency_key": idempotency_key},
            )
    except IntegrityError:
        _cleanup_orphans(ctx, who.tenant_id, created_keys)
        # A concurrent request with the same Idempotency-Key won the insert: answer with its job.
        if idempotency_key and (earlier := _replay(ctx, who, idempotency_key, digest)) is not None:
            return earlier, True
        raise
    except BaseException:
        _cleanup_orphans(ctx, who.tenant_id, created_keys)
        raise
    JOBS_SUBMITTED.labels(job_type=job_type.value).inc()
    publish(ctx, job.id)
    return job, False


def _check_active_jobs(ctx: GatewayContext, who: Principal) -> None:
    """A soft limit: concurrent submissions can pass it by a few; it keeps one tenant from filling
    the queue for everyone, it is not an exact quota."""
    limit = ctx.settings.max_active_jobs_per_tenant
    if limit is None:
        return
    with ctx.db.session() as session:
        active = repository.count_active_jobs(session, who.tenant_id)
    if active >= limit:
        raise PlatformError(
            TOO_MANY_ACTIVE_JOBS,
            f"{active} of your jobs are queued or running and the limit is {limit}: "
            "submit again when one has finished (or cancel one)",
            status=429,
            details={"active_jobs": active, "limit": limit},
        )


def publish(ctx: GatewayContext, job_id: str) -> None:
    """Enqueue after commit; if the broker is unreachable the job stays queued for the reconciler."""
    with log_context(job_id=job_id):  # a new job: its id was not in the request's context yet
        try:
            enqueue_job(job_id, ctx.celery)
        except Exception as exc:
            ENQUEUE_FAILURES.inc()
            log.warning("could not enqueue job %s (the reconciler will retry): %s", job_id, exc)
            with ctx.db.session() as session:
                repository.mark_enqueue_failed(session, job_id)


def _audit(
    session: Any,
    who: Principal,
    meta: RequestMeta,
    action: str,
    target_type: str,
    target_id: str,
    details: dict[str, Any] | None = None,
) -> None:
    repository.audit(
        session,
        actor=who.actor,
        action=action,
        tenant_id=who.tenant_id,
        api_key_id=who.api_key_id,
        target_type=target_type,
        target_id=target_id,
        details=details,
        request_id=meta.request_id,
        client_ip=meta.client_ip,
    )


def audit_action(
    ctx: GatewayContext,
    who: Principal,
    meta: RequestMeta,
    action: str,
    target_type: str,
    target_id: str,
    details: dict[str, Any] | None = None,
) -> None:
    with ctx.db.session() as session:
        _audit(session, who, meta, action, target_type, target_id, details)


# -- job state for clients -------------------------------------------------------------------------------
def cancel_job(ctx: GatewayContext, who: Principal, job_id: str, meta: RequestMeta) -> Job:
    for _ in range(3):  # the job may move (queued -> running) between our read and our update
        with ctx.db.session() as session:
            job = repository.get_job(session, who.tenant_id, job_id)
            if job is None:
                raise NotFound("job")
            if JobState(job.state).terminal:
                raise Conflict(
                    JOB_NOT_CANCELLABLE, f"job is already {job.state}", details={"state": job.state}
                )
            try:
                transition(session, job, JobState.CANCELLED, reason=f"cancelled by {who.actor}")
            except IllegalTransition:
                session.rollback()
                continue
            _audit(session, who, meta, "job.cancel", "job", job.id)
            return job
    raise PlatformError(JOB_NOT_CANCELLABLE, "the job kept changing state; retry", status=409)


def _eraser(who: Principal, meta: RequestMeta) -> erasure.Actor:
    return erasure.Actor(who.actor, who.api_key_id, meta.request_id, meta.client_ip)


def erase_job(ctx: GatewayContext, who: Principal, job_id: str, meta: RequestMeta) -> Job:
    """Delete a finished job's media (result, inputs no other job holds, cached avatar); the job row
    and its signed provenance record stay. Idempotent."""
    with ctx.db.session() as session:
        job = repository.get_job(session, who.tenant_id, job_id)
        if job is None:
            raise NotFound("job")
        erasure.erase_job_media(session, ctx.storage, job, by=_eraser(who, meta))
        session.commit()
        return job


def erase_asset(ctx: GatewayContext, who: Principal, asset_id: str, meta: RequestMeta) -> Asset:
    """Delete an uploaded input's bytes (refused while a job holding its data uses it). Idempotent."""
    with ctx.db.session() as session:
        asset = repository.get_asset(session, who.tenant_id, asset_id)
        if asset is None:
            raise NotFound("asset")
        erasure.erase_asset(session, ctx.storage, asset, by=_eraser(who, meta))
        session.commit()
        return asset


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def job_progress(job: Job, fraction: float | None, now: dt.datetime) -> Progress:
    """Frames, the stage (the state's name unless running) and the worker's estimate of the time left,
    counted down from when the worker wrote it."""
    state = JobState(job.state)
    stage = (job.progress_stage or "starting") if state is JobState.RUNNING else state.value
    text = STAGES.get(stage, stage)
    if stage in ("animating", "marking") and job.frames_total:
        text = f"{text} {job.frames_done}/{job.frames_total}"
    eta = None
    if state is JobState.RUNNING and job.progress_eta_s is not None:
        eta = round(max(0.0, job.progress_eta_s - (now - job.updated_at).total_seconds()), 1)
    return Progress(
        frames_done=job.frames_done,
        frames_total=job.frames_total,
        fraction=fraction,
        stage=stage,
        stage_text=text,
        eta_s=eta,
    )


MIN_JOB_ID_PREFIX = 8  # characters of a job id that name it (the CLI prints 8)
_JOB_ID_CHARS = frozenset("0123456789abcdef-")
AMBIGUOUS_SHOWN = 10  # candidates listed in an ambiguous_job_id answer


def list_jobs(
    ctx: GatewayContext,
    who: Principal,
    *,
    state: JobState | None,
    limit: int,
    cursor: str | None,
    id_prefix: str | None,
) -> JobList:
    """The tenant's jobs, newest first. ``id_prefix`` names one job by the start of its id: at least
    ``MIN_JOB_ID_PREFIX`` characters (400 ``job_id_too_short``), matched literally (a character no job
    id holds matches nothing); a prefix several of the tenant's jobs share is 409 ``ambiguous_job_id``
    with ``details.job_ids``; none is an empty list. Other tenants' jobs are never matched."""
    prefix = None
    if id_prefix is not None:
        prefix = id_prefix.strip().lower()
        if len(prefix) < MIN_JOB_ID_PREFIX:
            raise PlatformError(
                JOB_ID_TOO_SHORT,
                f"id_prefix needs at least {MIN_JOB_ID_PREFIX} characters of the job id",
                status=400,
                details={"min_length": MIN_JOB_ID_PREFIX},
            )
        if not set(prefix) <= _JOB_ID_CHARS:  # no job id holds anything else (nor a LIKE wildcard)
            return JobList(items=[], next_cursor=None)
        limit = max(limit, AMBIGUOUS_SHOWN)
    with ctx.db.session() as session:
        jobs, next_cursor = repository.list_jobs(
            session,
            who.tenant_id,
            state=state.value if state else None,
            limit=limit,
            cursor=cursor,
            id_prefix=prefix,
        )
    if prefix is not None and len(jobs) > 1:
        shown = [job.id for job in jobs[:AMBIGUOUS_SHOWN]]
        raise Conflict(
            AMBIGUOUS_JOB_ID,
            f"{prefix!r} starts several of your job ids ({', '.join(shown[:3])}...); give more characters",
            details={"job_ids": shown, "more": next_cursor is not None},
        )
    now = utcnow()
    return JobList(items=[job_to_out(job, ctx.base_url, now) for job in jobs], next_cursor=next_cursor)


def job_to_out(job: Job, base_url: str, now: dt.datetime | None = None) -> JobOut:
    now = now or utcnow()
    state = JobState(job.state)
    queued_until = job.started_at or job.finished_at or now
    running_until = job.finished_at or now
    timings: dict[str, float] = {"queued_s": _seconds(job.created_at, queued_until) or 0.0}
    if job.started_at is not None:
        timings["running_s"] = _seconds(job.started_at, running_until) or 0.0
    if job.finished_at is not None:
        timings["total_s"] = _seconds(job.created_at, job.finished_at) or 0.0
    timings.update({k: float(v) for k, v in (job.timings or {}).items()})
    fraction = None
    if job.frames_total:
        fraction = round(min(1.0, job.frames_done / job.frames_total), 4)
    progress = job_progress(job, fraction, now)
    return JobOut(
        id=job.id,
        state=state,
        job_type=JobType(job.job_type),
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        progress=progress,
        timings=timings,
        error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        options=job.options or {},
        inputs={"portrait_asset_id": job.portrait_asset_id, "driving_asset_id": job.driving_asset_id},
        attempts=job.attempts,
        media_deleted_at=job.media_deleted_at,
        callback=CallbackOut(
            url=job.callback_url,
            attempts=job.callback_attempts or 0,
            delivered_at=job.callback_delivered_at,
            last_error=job.callback_error,
        )
        if job.callback_url
        else None,
        links=job_links(job, base_url),
    )
