"""Database access for the gateway, the admin CLI and the reconciler — the one layer that writes SQL.

Every read of tenant-owned data takes the tenant id: a row of another tenant is simply not found.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.platform.apikeys import generate_api_key, key_matches, parse_prefix
from shared.platform.errors import INVALID_REQUEST, NotFound, PlatformError
from shared.platform.jobs import JobState, record_event
from shared.platform.models import ApiKey, Asset, AuditLog, Job, ProvenanceRecord, Tenant, new_id, utcnow
from shared.platform.provenance import create_provenance


# -- tenants and keys ------------------------------------------------------------------------------------
def create_tenant(session: Session, name: str) -> Tenant:
    name = name.strip()
    if not name or len(name) > 200:
        raise PlatformError(INVALID_REQUEST, "tenant name must be 1-200 characters")
    if session.scalar(select(Tenant).where(Tenant.name == name)) is not None:
        raise PlatformError("tenant_exists", f"tenant {name!r} already exists", status=409)
    tenant = Tenant(id=new_id(), name=name, created_at=utcnow(), disabled=False)
    session.add(tenant)
    session.flush()
    return tenant


def find_tenant(session: Session, name_or_id: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(or_(Tenant.id == name_or_id, Tenant.name == name_or_id)))
    if tenant is None:
        raise NotFound(f"tenant {name_or_id!r}")
    return tenant


def create_api_key(
    session: Session, tenant: Tenant, *, label: str = "", rate_limit_per_minute: int | None = None
) -> tuple[ApiKey, str]:
    """Returns the row and the secret key (shown once; only its hash is stored)."""
    new = generate_api_key()
    row = ApiKey(
        id=new_id(),
        tenant_id=tenant.id,
        prefix=new.prefix,
        key_hash=new.key_hash,
        label=label,
        rate_limit_per_minute=rate_limit_per_minute,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, new.key


def revoke_api_key(session: Session, prefix: str) -> ApiKey:
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None:
        raise NotFound(f"api key {prefix!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    session.flush()
    return row


def authenticate(session: Session, raw_key: str) -> ApiKey | None:
    """The active key row (tenant loaded) for a presented key, or None."""
    prefix = parse_prefix(raw_key)
    if prefix is None:
        return None
    row = session.scalar(select(ApiKey).join(Tenant).where(ApiKey.prefix == prefix))
    if row is None or row.revoked_at is not None or row.tenant.disabled:
        return None
    if not key_matches(raw_key, row.key_hash):
        return None
    return row


# -- assets ----------------------------------------------------------------------------------------------
def get_asset(session: Session, tenant_id: str, asset_id: str) -> Asset | None:
    return session.scalar(select(Asset).where(Asset.id == asset_id, Asset.tenant_id == tenant_id))


def find_asset_by_hash(session: Session, tenant_id: str, sha256: str) -> Asset | None:
    return session.scalar(select(Asset).where(Asset.tenant_id == tenant_id, Asset.sha256 == sha256))


def get_or_create_asset(
    session: Session,
    *,
    tenant_id: str,
    sha256: str,
    size_bytes: int,
    media_type: str,
    kind: str,
    storage_key: str,
    media_info: dict[str, Any],
    original_filename: str = "",
) -> tuple[Asset, bool]:
    """One row per (tenant, content). Returns (asset, created); safe under concurrent identical uploads.
    The caller has stored the bytes: an erased asset found here is restored."""
    existing = find_asset_by_hash(session, tenant_id, sha256)
    if existing is not None:
        existing.deleted_at = None
        return existing, False
    asset = Asset(
        id=new_id(),
        tenant_id=tenant_id,
        sha256=sha256,
        size_bytes=size_bytes,
        media_type=media_type,
        kind=kind,
        storage_key=storage_key,
        media_info=media_info,
        original_filename=original_filename[:255],
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(asset)
    except IntegrityError:  # a concurrent upload of the same bytes committed first
        winner = find_asset_by_hash(session, tenant_id, sha256)
        if winner is None:
            raise
        return winner, False
    return asset, True


# -- jobs ------------------------------------------------------------------------------------------------
def get_job(session: Session, tenant_id: str, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))


def get_job_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def create_job(
    session: Session,
    *,
    tenant_id: str,
    api_key_id: str | None,
    job_type: str,
    options: dict[str, Any],
    consent: dict[str, Any],
    portrait: Asset,
    driving: Asset | None,
    idempotency_key: str | None,
    request_hash: str,
    signing_key: bytes,
    callback_url: str | None = None,
) -> Job:
    """Insert a queued job, its first event and its (signed) provenance record.

    ``enqueued_at`` is stamped now on the assumption that the caller publishes right after commit;
    if publishing fails the caller clears it (``mark_enqueue_failed``) and the reconciler retries.
    Raises ``IntegrityError`` when the idempotency key was taken concurrently (caller re-reads).
    """
    now = utcnow()
    job = Job(
        id=new_id(),
        tenant_id=tenant_id,
        api_key_id=api_key_id,
        job_type=job_type,
        state=JobState.QUEUED.value,
        options=options,
        consent=consent,
        portrait_asset_id=portrait.id,
        driving_asset_id=driving.id if driving else None,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        callback_url=callback_url,
        callback_attempts=0,
        frames_done=0,
        timings={},
        attempts=0,
        enqueue_count=1,
        enqueued_at=now,
        created_at=now,
        updated_at=now,
    )
    with session.begin_nested():
        session.add(job)
        session.flush()
    record_event(session, job, None, JobState.QUEUED, reason="submitted", at=now)
    inputs = {"portrait_sha256": portrait.sha256, "portrait_media_type": portrait.media_type}
    if driving is not None:
        inputs.update(driving_video_sha256=driving.sha256, driving_media_type=driving.media_type)
    create_provenance(session, job, inputs=inputs, key=signing_key)
    return job


def mark_enqueue_failed(session: Session, job_id: str) -> None:
    """Publishing failed: clear ``enqueued_at`` so the reconciler's next pass picks the job up."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.QUEUED.value)
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        created_at = dt.datetime.fromisoformat(stamp)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise PlatformError(INVALID_REQUEST, "invalid pagination cursor") from exc
    if created_at.tzinfo is None:  # cursors are made with a timezone: a naive one was not ours
        raise PlatformError(INVALID_REQUEST, "invalid pagination cursor")
    return created_at, job_id


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    state: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
    id_prefix: str | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first; returns the page and the cursor of the next page (None at the end). ``id_prefix``:
    only jobs whose id starts with it (matched literally: LIKE wildcards in it are escaped)."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if state is not None:
        query = query.where(Job.state == state)
    if id_prefix:
        query = query.where(Job.id.startswith(id_prefix, autoescape=True))
    if cursor:
        created_at, job_id = _decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def count_jobs(session: Session, tenant_id: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)) or 0)


def count_active_jobs(session: Session, tenant_id: str) -> int:
    """The tenant's queued and running jobs."""
    active = [state.value for state in JobState if not state.terminal]
    query = select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.state.in_(active))
    return int(session.scalar(query) or 0)


def get_provenance(session: Session, job_id: str) -> ProvenanceRecord | None:
    return session.scalar(select(ProvenanceRecord).where(ProvenanceRecord.job_id == job_id))


def find_provenance_by_payload(session: Session, payload: int) -> list[ProvenanceRecord]:
    return list(
        session.scalars(select(ProvenanceRecord).where(ProvenanceRecord.watermark_payload == payload))
    )


def find_provenance_by_payloads(session: Session, payloads: Iterable[int]) -> list[ProvenanceRecord]:
    """Records whose watermark payload is any of ``payloads`` (one indexed ``IN`` query; a handful of values)."""
    wanted = sorted(set(payloads))
    if not wanted:
        return []
    return list(
        session.scalars(select(ProvenanceRecord).where(ProvenanceRecord.watermark_payload.in_(wanted)))
    )


# -- audit -----------------------------------------------------------------------------------------------
def audit(
    session: Session,
    *,
    actor: str,
    action: str,
    tenant_id: str | None = None,
    api_key_id: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
    request_id: str | None = None,
    client_ip: str | None = None,
) -> AuditLog:
    entry = AuditLog(
        at=utcnow(),
        tenant_id=tenant_id,
        api_key_id=api_key_id,
        actor=actor[:200],
        action=action,
        target_type=target_type,
        target_id=target_id,
        outcome=outcome[:32],
        details=dict(details or {}),
        request_id=request_id,
        client_ip=client_ip,
    )
    session.add(entry)
    return entry
