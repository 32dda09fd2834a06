"""SQLAlchemy 2 ORM models: the platform's durable state.

Tables: tenants, api_keys, assets, jobs, job_events (append-only), provenance_records, audit_log
(append-only). The same models serve PostgreSQL and SQLite; the Alembic migrations in ``migrations/``
build both. State changes of a job go through ``shared.platform.jobs.transition`` only.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names so migrations can drop/alter them on both dialects.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC timestamps on both dialects (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="tenant")


class ApiKey(Base):
    """An API key, stored as the SHA-256 of the secret; the secret itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)  # public part, for lookup and logs
    key_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(200), default="")
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    tenant: Mapped[Tenant] = relationship(back_populates="api_keys")


class Asset(Base):
    """An uploaded input, content-addressed per tenant: one row per (tenant, sha256)."""

    __tablename__ = "assets"
    __table_args__ = (UniqueConstraint("tenant_id", "sha256"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(100))  # sniffed from the bytes, e.g. image/png
    kind: Mapped[str] = mapped_column(String(16))  # "image" | "video"
    storage_key: Mapped[str] = mapped_column(String(512))
    media_info: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # probed facts
    original_filename: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set when its bytes were erased (shared.platform.erasure); uploading the same bytes again restores it.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        Index("ix_jobs_state_enqueued", "state", "enqueued_at"),
        Index("ix_jobs_state_lease", "state", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), nullable=True
    )
    job_type: Mapped[str] = mapped_column(String(16))  # "reenact" | "orbit"
    state: Mapped[str] = mapped_column(String(16), default="queued")
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    consent: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    portrait_asset_id: Mapped[str] = mapped_column(ForeignKey("assets.id"))
    driving_asset_id: Mapped[str | None] = mapped_column(ForeignKey("assets.id"), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    frames_done: Mapped[int] = mapped_column(Integer, default=0)
    frames_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # What a running job is doing now (shared.platform.jobs.STAGES) and the worker's estimate, made when
    # it wrote it (updated_at), of the seconds left; None while nothing was measured yet.
    progress_stage: Mapped[str | None] = mapped_column(String(32), nullable=True)
    progress_eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    result_media_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    result_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    result_size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    timings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # stage -> seconds
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a worker started it
    # The worker claim running the job (shared.platform.jobs.claim) and until when it holds it: renewed
    # by the worker's heartbeat; past it the reconciler hands the job back (or fails it, worker_crashed).
    owner_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    enqueue_count: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Set when the job's media (result, inputs no other job holds, cached avatar) were erased; the row,
    # its events and its provenance record stay (shared.platform.erasure).
    media_deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Job-finished webhook (shared.platform.webhooks): where, how often tried, when it got through.
    callback_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    callback_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    callback_next_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    callback_delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    callback_error: Mapped[str | None] = mapped_column(String(500), nullable=True)

    portrait_asset: Mapped[Asset] = relationship(foreign_keys=[portrait_asset_id])
    driving_asset: Mapped[Asset | None] = relationship(foreign_keys=[driving_asset_id])
    events: Mapped[list[JobEvent]] = relationship(back_populates="job", order_by="JobEvent.id")
    provenance: Mapped[ProvenanceRecord | None] = relationship(back_populates="job", uselist=False)


class JobEvent(Base):
    """One state change of a job. Append-only: a database trigger refuses UPDATE and DELETE."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(200), default="")
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    job: Mapped[Job] = relationship(back_populates="events")


class ProvenanceRecord(Base):
    """What went into a job and what came out, signed (HMAC) so tampering with the row is detectable.

    Created with the job (inputs, options, consent attestation) and completed by the worker (model
    version, output hash, watermark payload, C2PA manifest hash). ``watermark_payload`` is how a
    detected watermark is mapped back to its job.
    """

    __tablename__ = "provenance_records"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    consent: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    model_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    output_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    watermark_payload: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    c2pa_manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    extra: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    signature: Mapped[str] = mapped_column(String(64))  # HMAC-SHA256 hex of the canonical document
    signing_key_id: Mapped[str] = mapped_column(String(16))

    job: Mapped[Job] = relationship(back_populates="provenance")


class AuditLog(Base):
    """Who did what. Append-only: a database trigger refuses UPDATE and DELETE."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_tenant_at", "tenant_id", "at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    tenant_id: Mapped[str | None] = mapped_column(String(36), nullable=True)  # no FK: outlives its tenant
    api_key_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    actor: Mapped[str] = mapped_column(String(200))  # key prefix, "admin-cli", "reconciler", "worker"
    action: Mapped[str] = mapped_column(String(64))  # e.g. job.create, input.refused
    target_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    target_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[str] = mapped_column(String(32), default="ok")  # "ok" or an error code
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
