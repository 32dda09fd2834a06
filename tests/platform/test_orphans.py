"""Nothing of an erased job stays in storage (issue 16, item 9; the cross-tenant avatar cache, Low), on
real PostgreSQL and SeaweedFS S3 (and local storage):

* the retention pass (`goha purge`) sweeps objects no record accounts for: inputs stored while the
  database was down at submission, outputs of missing / erased / superseded jobs, cached avatars of
  erased portraits and of the earlier cross-tenant layout; young objects are left alone;
* a cached avatar written after its job was erased is deleted again at once by the worker's check;
* avatar cache entries are per tenant: another tenant's identical portrait neither hits nor erases it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.platform.db import Database
from shared.platform.erasure import (
    Actor,
    discard_avatar_if_erased,
    erase_job_media,
    purge_expired,
)
from shared.platform.jobs import JobState, transition
from shared.platform.models import Asset, Job, utcnow
from shared.platform.settings import Settings
from shared.platform.storage import (
    AVATAR_CACHE_PREFIX,
    LocalStorage,
    ObjectStorage,
    avatar_cache_key,
    input_key,
    make_storage,
    output_key,
)
from tests.support.factories import make_job_for_tests

LATER = dt.timedelta(hours=2)  # past the orphan grace period
USER = Actor("test")


@pytest.fixture(params=[pytest.param("s3", marks=pytest.mark.integration), "local"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStorage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "objects")
    else:
        s3: dict[str, Any] = request.getfixturevalue("goha_s3_settings")
        yield make_storage(Settings(**s3))  # a bucket of its own: the sweep judges every object in it


@pytest.fixture
def db(goha_postgres_url: str) -> Iterator[Database]:
    database = Database(goha_postgres_url)
    yield database
    database.dispose()


def _job(db: Database, storage: ObjectStorage, *, state: JobState = JobState.CANCELLED) -> dict[str, str]:
    with db.session() as session:
        job = make_job_for_tests(session)
        if state is not JobState.QUEUED:
            transition(session, job, state, reason="test")
        portrait = job.portrait_asset
        ids = {"job": job.id, "tenant": job.tenant_id, "sha": portrait.sha256, "input": portrait.storage_key}
        session.commit()
    storage.put_bytes(ids["input"], b"portrait")
    ids["avatar"] = avatar_cache_key("goha-v1", ids["sha"], tenant_id=ids["tenant"])
    storage.put_bytes(ids["avatar"], b"planes")
    return ids


def test_the_retention_pass_sweeps_what_no_record_accounts_for(db: Database, storage: ObjectStorage) -> None:
    live = _job(db, storage, state=JobState.QUEUED)
    succeeded = _job(db, storage, state=JobState.QUEUED)
    with db.session() as session:
        job = session.get(Job, succeeded["job"])
        assert job is not None
        transition(session, job, JobState.RUNNING, reason="test", owner_id="c1")
        job.result_key = output_key(job.tenant_id, job.id, "result-c1.mp4")
        transition(session, job, JobState.SUCCEEDED, reason="test")
        session.commit()
        result_key = job.result_key
    storage.put_bytes(result_key, b"video")
    superseded = output_key(succeeded["tenant"], succeeded["job"], "result-c0.mp4")  # an older claim's
    storage.put_bytes(superseded, b"video")
    # The database was down at submission: the input was stored, its row never written.
    never_recorded = input_key(live["tenant"], secrets.token_hex(32))
    storage.put_bytes(never_recorded, b"someone's face")
    unknown_job = output_key(live["tenant"], "0" * 36, "result.mp4")
    storage.put_bytes(unknown_job, b"video")
    # Written by the pre-tenant layout (shared by every tenant): swept.
    legacy = f"{AVATAR_CACHE_PREFIX}/goha-v1/{live['sha']}.npy"
    storage.put_bytes(legacy, b"planes")
    # An avatar whose portrait was erased before the worker wrote it.
    erased = _job(db, storage)
    with db.session() as session:
        job = session.get(Job, erased["job"])
        assert job is not None
        erase_job_media(session, storage, job, by=USER)
        session.commit()
    storage.put_bytes(erased["avatar"], b"planes written late")

    orphans = {never_recorded, unknown_job, legacy, superseded, erased["avatar"]}
    kept = {live["input"], live["avatar"], succeeded["input"], succeeded["avatar"], result_key}

    # The S3 bucket is the test session's: other tests' objects (their records in other databases)
    # are orphans here too. This test's own objects are judged exactly.
    def own(keys: list[str]) -> set[str]:
        return {k for k in keys if k in orphans or k in kept}

    young = purge_expired(db, storage, older_than=dt.timedelta(days=3650))  # nothing is old enough yet
    assert own(young.orphan_keys) == set() and all(storage.exists(k) for k in orphans | kept)

    dry = purge_expired(db, storage, older_than=dt.timedelta(days=3650), now=utcnow() + LATER, dry_run=True)
    assert own(dry.orphan_keys) == orphans and all(storage.exists(k) for k in orphans)

    report = purge_expired(db, storage, older_than=dt.timedelta(days=3650), now=utcnow() + LATER)
    assert own(report.orphan_keys) == orphans, report.orphan_keys
    assert report.to_dict()["orphans_deleted"] == len(report.orphan_keys) and report.failures == {}
    assert not any(storage.exists(k) for k in orphans)
    assert all(storage.exists(k) for k in kept)


def test_an_avatar_written_after_its_job_was_erased_is_deleted_at_once(
    db: Database, storage: ObjectStorage
) -> None:
    """The worker reconstructs while its job is cancelled and deleted; the cache entry it then writes
    is deleted by its check right after the write. A live job's entry stays."""
    erased = _job(db, storage)
    storage.delete(erased["avatar"])
    with db.session() as session:
        job = session.get(Job, erased["job"])
        assert job is not None
        erase_job_media(session, storage, job, by=USER)
        session.commit()
    storage.put_bytes(erased["avatar"], b"planes written late")  # what the worker does next
    assert discard_avatar_if_erased(db.sessionmaker, storage, erased["job"], erased["avatar"])
    assert not storage.exists(erased["avatar"])

    live = _job(db, storage, state=JobState.QUEUED)
    assert not discard_avatar_if_erased(db.sessionmaker, storage, live["job"], live["avatar"])
    assert storage.exists(live["avatar"])


def test_avatar_cache_entries_are_per_tenant(db: Database, storage: ObjectStorage) -> None:
    """Two tenants upload the same portrait: distinct cache entries (no cross-tenant hit to time), and
    one tenant erasing it leaves the other's entry."""
    first = _job(db, storage, state=JobState.QUEUED)
    with db.session() as session:
        other = make_job_for_tests(session)
        portrait = session.get(Asset, other.portrait_asset_id)
        assert portrait is not None
        portrait.sha256 = first["sha"]
        session.commit()
        other_tenant = other.tenant_id
    assert avatar_cache_key("goha-v1", first["sha"], tenant_id=other_tenant) != first["avatar"]
    other_avatar = avatar_cache_key("goha-v1", first["sha"], tenant_id=other_tenant)
    storage.put_bytes(other_avatar, b"planes")
    with db.session() as session:
        job = session.get(Job, first["job"])
        assert job is not None
        transition(session, job, JobState.CANCELLED, reason="test")
        asset = session.get(Asset, job.portrait_asset_id)
        erase_job_media(session, storage, job, by=USER)
        session.commit()
        assert asset is not None and asset.deleted_at is not None
    assert not storage.exists(first["avatar"]) and storage.exists(other_avatar)
