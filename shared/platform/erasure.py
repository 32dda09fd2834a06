"""Erasure of media: a user deleting a job's data, and the retention period that does it for them.

What goes: the result video, the job's input files (portrait, driving clip) unless a job that still
holds its media uses them too, and the worker's cached source avatar of the portrait (its tri-planes,
derived from the person's face) under every model version.

What stays: the job row (state, timings, error), its events, the audit log and the signed
provenance record (input and output hashes, watermark payload, consent attestation). A circulating
video made here still names its job in ``POST /v1/verify`` after its media are gone: the deepfake
guardrail outlives the data.

Objects are deleted before the rows are marked, so a failure half-way leaves rows that still claim
their media and the erasure can simply be run again (deleting a missing object is a no-op).
An input deleted while another request was about to reuse it fails that job with
``object_not_found``; uploading the same bytes again restores the asset.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shared.platform import repository
from shared.platform.db import Database
from shared.platform.errors import ASSET_IN_USE, JOB_NOT_FINISHED, Conflict
from shared.platform.jobs import TERMINAL_STATES, JobState
from shared.platform.models import Asset, Job, utcnow
from shared.platform.storage import AVATAR_CACHE_PREFIX, ObjectStorage

log = logging.getLogger("goha.erasure")
ORPHAN_GRACE = dt.timedelta(hours=1)  # objects younger than this are never judged orphans


@dataclass(frozen=True)
class Actor:
    """Who erases, as the audit log records it."""

    name: str  # an API key prefix, "admin-cli", "retention"
    api_key_id: str | None = None
    request_id: str | None = None
    client_ip: str | None = None


@dataclass
class Erasure:
    """What one erasure removed."""

    deleted_keys: list[str] = field(default_factory=list)
    erased_asset_ids: list[str] = field(default_factory=list)
    kept_asset_ids: list[str] = field(default_factory=list)  # still used by a job that holds its media

    def to_dict(self) -> dict[str, list[str]]:
        return asdict(self)


def jobs_holding(session: Session, asset: Asset, *, besides: str | None = None) -> list[str]:
    """Ids of the jobs whose media are not erased that use ``asset`` (other than ``besides``)."""
    query = select(Job.id).where(
        or_(Job.portrait_asset_id == asset.id, Job.driving_asset_id == asset.id),
        Job.media_deleted_at.is_(None),
    )
    if besides is not None:
        query = query.where(Job.id != besides)
    return list(session.scalars(query.order_by(Job.created_at)))


def avatar_cache_keys(storage: ObjectStorage, portrait_sha256: str, tenant_id: str) -> list[str]:
    """The tenant's cached avatars of a portrait, whatever model version computed them (and any entry of
    the earlier layout shared by all tenants): one existence check per model version (a few), not a
    listing of every cached avatar (many)."""
    candidates = []
    for version in storage.list_prefixes(f"{AVATAR_CACHE_PREFIX}/"):
        candidates += [f"{version}{tenant_id}/{portrait_sha256}.npy", f"{version}{portrait_sha256}.npy"]
    return [key for key in candidates if storage.exists(key)]


def _asset_keys(storage: ObjectStorage, asset: Asset) -> list[str]:
    keys = [asset.storage_key]
    if asset.kind == "image":
        keys += avatar_cache_keys(storage, asset.sha256, asset.tenant_id)
    return keys


def discard_avatar_if_erased(
    sessions: Callable[[], Session], storage: ObjectStorage, job_id: str, cache_key: str
) -> bool:
    """Called by the worker right after it wrote ``cache_key`` for ``job_id``: when the job's data or
    its portrait were erased meanwhile (a job cancelled and deleted while it reconstructed), the entry
    is deleted again and True returned. (An erasure racing this very check is caught by the retention
    pass's orphan sweep.)"""
    with sessions() as session:
        job = session.get(Job, job_id)
        portrait = job.portrait_asset if job is not None else None
        erased = (
            job is None
            or job.media_deleted_at is not None
            or portrait is None
            or portrait.deleted_at is not None
        )
    if erased:
        storage.delete(cache_key)
        log.info(
            "avatar cache entry written after an erasure: deleted", extra={"job_id": job_id, "key": cache_key}
        )
    return erased


def _record(
    session: Session, by: Actor, action: str, tenant_id: str, target: tuple[str, str], erasure: Erasure
) -> None:
    repository.audit(
        session,
        actor=by.name,
        action=action,
        tenant_id=tenant_id,
        api_key_id=by.api_key_id,
        target_type=target[0],
        target_id=target[1],
        request_id=by.request_id,
        client_ip=by.client_ip,
        details=erasure.to_dict(),
    )
    session.flush()


def _delete(storage: ObjectStorage, keys: Iterable[str]) -> list[str]:
    deleted = []
    for key in keys:
        storage.delete(key)
        deleted.append(key)
    return deleted


def erase_job_media(
    session: Session,
    storage: ObjectStorage,
    job: Job,
    *,
    by: Actor,
    now: dt.datetime | None = None,
) -> Erasure:
    """Erase ``job``'s media (see the module docstring); the caller commits. Idempotent: a job
    already erased returns an empty ``Erasure``. A queued or running job must be cancelled first."""
    if not JobState(job.state).terminal:
        raise Conflict(
            JOB_NOT_FINISHED,
            f"the job is {job.state}: cancel it first, then delete its data",
            details={"state": job.state},
        )
    erasure = Erasure()
    if job.media_deleted_at is not None:
        return erasure
    keys = [job.result_key] if job.result_key else []
    erased: list[Asset] = []
    for asset in (job.portrait_asset, job.driving_asset):
        if asset is None or asset.deleted_at is not None:
            continue
        if jobs_holding(session, asset, besides=job.id):
            erasure.kept_asset_ids.append(asset.id)
            continue
        keys += _asset_keys(storage, asset)
        erased.append(asset)
    erasure.deleted_keys = _delete(storage, keys)

    now = now or utcnow()
    job.media_deleted_at = now
    job.result_key = None  # result_sha256 and size stay: they identify the output that was made
    for asset in erased:
        asset.deleted_at = now
    erasure.erased_asset_ids = [asset.id for asset in erased]
    _record(session, by, "job.erase", job.tenant_id, ("job", job.id), erasure)
    return erasure


def erase_asset(
    session: Session,
    storage: ObjectStorage,
    asset: Asset,
    *,
    by: Actor,
    now: dt.datetime | None = None,
) -> Erasure:
    """Erase an uploaded input (and, for a portrait, its cached avatars); the caller commits.
    Refused while a job that holds its media uses it: delete those jobs' data first."""
    erasure = Erasure()
    if asset.deleted_at is not None:
        return erasure
    holders = jobs_holding(session, asset)
    if holders:
        raise Conflict(
            ASSET_IN_USE,
            f"{len(holders)} job(s) still hold their data and use this asset: delete their data first",
            details={"job_ids": holders[:20]},
        )
    erasure.deleted_keys = _delete(storage, _asset_keys(storage, asset))
    asset.deleted_at = now or utcnow()
    erasure.erased_asset_ids = [asset.id]
    _record(session, by, "asset.erase", asset.tenant_id, ("asset", asset.id), erasure)
    return erasure


@dataclass
class Purge:
    """What one retention pass did (or, with ``dry_run``, would do)."""

    cutoff: dt.datetime
    dry_run: bool
    job_ids: list[str] = field(default_factory=list)
    asset_ids: list[str] = field(default_factory=list)
    deleted_keys: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # job or asset id -> error
    orphan_keys: list[str] = field(default_factory=list)  # objects no record accounts for (swept)

    def to_dict(self) -> dict[str, object]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "jobs_erased": len(self.job_ids),
            "assets_erased": len(self.asset_ids),
            "objects_deleted": self.deleted_keys,
            "orphans_deleted": len(self.orphan_keys),
            "failures": self.failures,
            "job_ids": self.job_ids,
            "asset_ids": self.asset_ids,
        }


RETENTION = Actor("retention")


def purge_expired(
    db: Database,
    storage: ObjectStorage,
    *,
    older_than: dt.timedelta,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    orphan_grace: dt.timedelta = ORPHAN_GRACE,
) -> Purge:
    """The retention pass: erase the media of every job that finished before ``now - older_than``,
    then every input uploaded before the cutoff that no job holding its media uses (uploads never
    submitted, inputs of jobs just erased). Each job or asset is its own transaction; one failure is
    recorded and the pass goes on."""
    now = now or utcnow()
    purge = Purge(cutoff=now - older_than, dry_run=dry_run)
    with db.session() as session:
        job_ids = list(
            session.scalars(
                select(Job.id)
                .where(
                    Job.state.in_([state.value for state in TERMINAL_STATES]),
                    Job.media_deleted_at.is_(None),
                    Job.finished_at < purge.cutoff,
                )
                .order_by(Job.finished_at)
            )
        )
    for job_id in job_ids:
        if dry_run:
            purge.job_ids.append(job_id)
            continue
        try:
            with db.session() as session:
                job = session.get(Job, job_id)
                if job is None or job.media_deleted_at is not None:
                    continue
                erasure = erase_job_media(session, storage, job, by=RETENTION, now=now)
                session.commit()
            purge.job_ids.append(job_id)
            purge.asset_ids += erasure.erased_asset_ids
            purge.deleted_keys += len(erasure.deleted_keys)
        except Exception as exc:  # one bad object must not stop the pass
            log.exception("retention: could not erase job %s", job_id)
            purge.failures[job_id] = f"{type(exc).__name__}: {exc}"

    with db.session() as session:
        asset_ids = list(
            session.scalars(
                select(Asset.id)
                .where(Asset.deleted_at.is_(None), Asset.created_at < purge.cutoff)
                .order_by(Asset.created_at)
            )
        )
    for asset_id in asset_ids:
        try:
            with db.session() as session:
                asset = session.get(Asset, asset_id)
                if asset is None or asset.deleted_at is not None:
                    continue
                if dry_run:
                    if not set(jobs_holding(session, asset)) - set(purge.job_ids):
                        purge.asset_ids.append(asset_id)
                    continue
                if jobs_holding(session, asset):
                    continue
                erasure = erase_asset(session, storage, asset, by=RETENTION, now=now)
                session.commit()
            purge.asset_ids.append(asset_id)
            purge.deleted_keys += len(erasure.deleted_keys)
        except Exception as exc:
            log.exception("retention: could not erase asset %s", asset_id)
            purge.failures[asset_id] = f"{type(exc).__name__}: {exc}"
    sweep_orphans(db, storage, purge, now=now, grace=orphan_grace)
    return purge


def _orphan_keys(session: Session, objects: list[tuple[str, dt.datetime]], cutoff: dt.datetime) -> list[str]:
    """Which of ``objects`` (older than ``cutoff``) no live record accounts for."""
    orphans = []
    for key, modified in objects:
        if modified >= cutoff:
            continue  # a submission or a job may be writing its row right now
        parts = key.split("/")
        if parts[0] == "tenants" and len(parts) == 4 and parts[2] == "inputs":
            live = session.scalar(
                select(Asset.id).where(
                    Asset.tenant_id == parts[1], Asset.sha256 == parts[3], Asset.deleted_at.is_(None)
                )
            )
            if live is None:
                orphans.append(key)  # stored while the database was down at submission, or erased
        elif parts[0] == "tenants" and len(parts) >= 5 and parts[2] == "jobs":
            job = session.get(Job, parts[3])
            if job is None or job.tenant_id != parts[1] or job.media_deleted_at is not None:
                orphans.append(key)
            elif JobState(job.state).terminal and job.result_key != key:
                orphans.append(key)  # a superseded or cancelled claim's output
        elif key.startswith(f"{AVATAR_CACHE_PREFIX}/") and key.endswith(".npy"):
            rest = parts[2:]  # after cache/avatars: <version>/<tenant>/<sha>.npy
            if len(rest) != 3:
                orphans.append(key)  # the earlier layout, shared across tenants
                continue
            live = session.scalar(
                select(Asset.id).where(
                    Asset.tenant_id == rest[1],
                    Asset.sha256 == rest[2].removesuffix(".npy"),
                    Asset.kind == "image",
                    Asset.deleted_at.is_(None),
                )
            )
            if live is None:
                orphans.append(key)  # written after its portrait was erased
    return orphans


def sweep_orphans(
    db: Database,
    storage: ObjectStorage,
    purge: Purge,
    *,
    now: dt.datetime | None = None,
    grace: dt.timedelta = ORPHAN_GRACE,
) -> None:
    """Delete the objects no record accounts for (part of the retention pass): inputs whose asset row
    was never written (the database was down at submission) or was erased, outputs of missing,
    erased, superseded or cancelled jobs, and cached avatars of portraits that are gone (or in the
    earlier cross-tenant layout). Only objects older than ``grace`` are judged."""
    cutoff = (now or utcnow()) - grace
    for prefix in ("tenants/", f"{AVATAR_CACHE_PREFIX}/"):
        try:
            objects = storage.list_objects(prefix)
            with db.session() as session:
                orphans = _orphan_keys(session, objects, cutoff)
        except Exception as exc:
            log.exception("retention: could not list %s", prefix)
            purge.failures[prefix] = f"{type(exc).__name__}: {exc}"
            continue
        for key in orphans:
            if not purge.dry_run:
                try:
                    storage.delete(key)
                except Exception as exc:
                    purge.failures[key] = f"{type(exc).__name__}: {exc}"
                    continue
            purge.orphan_keys.append(key)
    if purge.orphan_keys:
        log.warning(
            "retention: %d orphaned objects %s",
            len(purge.orphan_keys),
            "found" if purge.dry_run else "deleted",
        )
