"""The retention pass (``shared.platform.erasure.purge_expired`` and ``admin purge``) on SQLite and
local storage: what is old and finished goes, what is recent, unfinished or still used stays.
(The gateway's DELETE routes are tested against PostgreSQL and S3 in tests/gateway/test_erasure.py.)"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.platform import repository
from shared.platform.db import Database
from shared.platform.erasure import purge_expired
from shared.platform.jobs import JobState, transition
from shared.platform.models import Asset, Job, utcnow
from shared.platform.storage import LocalStorage, avatar_cache_key
from tests.support.factories import make_job_for_tests

REPO = Path(__file__).resolve().parents[2]
DAY = dt.timedelta(days=1)


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url)
    yield database
    database.dispose()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "objects")


def _job(db: Database, storage: LocalStorage, *, finish: bool) -> tuple[str, str, str]:
    """A job whose portrait is stored and cached; finished (cancelled: terminal) now, or left queued.
    Returns (job id, portrait key, avatar cache key)."""
    with db.session() as session:
        job = make_job_for_tests(session)
        if finish:
            transition(session, job, JobState.CANCELLED, reason="test")
        session.commit()
        portrait = job.portrait_asset
        job_id, key, sha, tenant_id = job.id, portrait.storage_key, portrait.sha256, job.tenant_id
    storage.put_bytes(key, b"portrait bytes")
    cache = avatar_cache_key("goha-test", sha, tenant_id=tenant_id)
    storage.put_bytes(cache, b"planes")
    return job_id, key, cache


def _upload(db: Database, storage: LocalStorage, tenant_id: str, name: str) -> tuple[str, str]:
    with db.session() as session:
        asset, _ = repository.get_or_create_asset(
            session,
            tenant_id=tenant_id,
            sha256=name.ljust(64, "0"),
            size_bytes=5,
            media_type="video/mp4",
            kind="video",
            storage_key=f"tenants/{tenant_id}/inputs/{name.ljust(64, '0')}",
            media_info={},
        )
        session.commit()
        asset_id, key = asset.id, asset.storage_key
    storage.put_bytes(key, b"video")
    return asset_id, key


def _tenant(db: Database, job_id: str) -> str:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.tenant_id


def test_retention_erases_what_is_old_and_finished_only(db: Database, storage: LocalStorage) -> None:
    finished, finished_key, finished_cache = _job(db, storage, finish=True)
    queued, queued_key, queued_cache = _job(db, storage, finish=False)
    unused_asset, unused_key = _upload(db, storage, _tenant(db, finished), "aa")
    later = utcnow() + 31 * DAY

    nothing = purge_expired(db, storage, older_than=30 * DAY)  # all of it is recent today
    assert nothing.job_ids == [] and nothing.asset_ids == [] and nothing.deleted_keys == 0

    preview = purge_expired(db, storage, older_than=30 * DAY, now=later, dry_run=True)
    assert preview.job_ids == [finished]
    with db.session() as session:
        finished_asset = session.get(Job, finished).portrait_asset_id
    assert sorted(preview.asset_ids) == sorted([finished_asset, unused_asset])
    assert all(storage.exists(k) for k in (finished_key, finished_cache, unused_key))  # dry run

    purge = purge_expired(db, storage, older_than=30 * DAY, now=later)

    assert purge.job_ids == [finished] and purge.failures == {}
    assert sorted(purge.asset_ids) == sorted(preview.asset_ids)
    assert purge.deleted_keys == 3  # portrait, its cached avatar, the unused upload
    assert not any(storage.exists(k) for k in (finished_key, finished_cache, unused_key))
    # The queued job is not finished: its input and cache stay however old they are.
    assert storage.exists(queued_key) and storage.exists(queued_cache)
    with db.session() as session:
        job = session.get(Job, finished)
        assert job.media_deleted_at is not None and job.provenance is not None
        assert session.get(Job, queued).media_deleted_at is None
        assert session.get(Asset, unused_asset).deleted_at is not None

    again = purge_expired(db, storage, older_than=30 * DAY, now=later)
    assert again.job_ids == [] and again.asset_ids == [] and again.deleted_keys == 0


class FlakyStorage(LocalStorage):
    """Local storage whose delete fails for one key (an object store refusing one request)."""

    def __init__(self, root: Path, broken_key: str) -> None:
        super().__init__(root)
        self.broken_key = broken_key

    def delete(self, key: str) -> None:
        if key == self.broken_key:
            raise OSError("simulated storage failure")
        super().delete(key)


def test_one_failure_is_reported_and_the_pass_goes_on(db: Database, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "objects")
    broken, broken_key, _ = _job(db, storage, finish=True)
    fine, fine_key, _ = _job(db, storage, finish=True)

    flaky = FlakyStorage(tmp_path / "objects", broken_key)
    purge = purge_expired(db, flaky, older_than=DAY, now=utcnow() + 2 * DAY)

    assert list(purge.failures) == [broken] and "simulated storage failure" in purge.failures[broken]
    assert purge.job_ids == [fine] and not storage.exists(fine_key)
    assert storage.exists(broken_key)
    with db.session() as session:
        assert session.get(Job, broken).media_deleted_at is None  # still claims its media: retry later


def test_admin_purge_command(sqlite_url: str, db: Database, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "var" / "objects")
    _job(db, storage, finish=True)
    env = {
        **os.environ,
        "GOHA_DATABASE_URL": sqlite_url,
        "GOHA_VAR_DIR": str(tmp_path / "var"),
        "GOHA_STORAGE_BACKEND": "local",
        "GOHA_LOCAL_STORAGE_DIR": str(tmp_path / "var" / "objects"),
    }
    env.pop("GOHA_RETENTION_DAYS", None)

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shared.platform.admin", "purge", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    unset = admin()
    assert (
        unset.returncode == 1
        and "configuration_error" in unset.stderr
        and "GOHA_RETENTION_DAYS" in unset.stderr
    )
    recent = admin("--older-than-days", "1")
    assert recent.returncode == 0, recent.stderr
    report = json.loads(recent.stdout.splitlines()[-1])
    assert report["jobs_erased"] == 0 and report["dry_run"] is False
    everything = admin("--older-than-days", "0.00001")  # ~1 s: the job finished before that
    assert everything.returncode == 0, everything.stderr
    report = json.loads(everything.stdout.splitlines()[-1])
    assert report["jobs_erased"] == 1 and report["objects_deleted"] == 2
