"""Deleting a job's data and an upload (``DELETE /v1/jobs/{id}``, ``DELETE /v1/assets/{id}``) against
the real PostgreSQL and SeaweedFS S3: the media go, the record and its signed provenance stay."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import select

from shared.media.synthetic import make_image_bytes, make_video_bytes
from shared.platform.db import Database
from shared.platform.models import Asset, AuditLog, Job
from shared.platform.storage import ObjectStorage, avatar_cache_key
from tests.gateway.conftest import TenantKey, submit, wait_for_state


def _fresh_portrait() -> bytes:
    return make_image_bytes((96, 96), "PNG", seed=secrets.randbelow(10**9))


def _fresh_driver() -> bytes:
    return make_video_bytes(".mp4", frames=4, fps=4, size=(64, 64), seed=secrets.randbelow(10**9))


def _job_keys(db: Database, job_id: str) -> dict[str, str | None]:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return {
            "result": job.result_key,
            "portrait": job.portrait_asset.storage_key,
            "driving": job.driving_asset.storage_key if job.driving_asset else None,
        }


def test_deleting_a_finished_job_erases_its_media_and_keeps_its_record(
    client: TestClient, worker: None, tenant: TenantKey, storage: ObjectStorage, db: Database
) -> None:
    portrait = _fresh_portrait()
    job = submit(client, tenant, portrait=portrait, driving=_fresh_driver()).json()
    done = wait_for_state(client, tenant, job["id"], {"succeeded", "failed"})
    assert done["state"] == "succeeded" and "result" in done["links"]
    keys = _job_keys(db, job["id"])
    # What the worker caches per portrait (under two model versions): derived from the face, erased too.
    sha = hashlib.sha256(portrait).hexdigest()
    avatars = [avatar_cache_key(v, sha, tenant_id=tenant.tenant_id) for v in ("goha-a", "goha-b")]
    for key in avatars:
        storage.put_bytes(key, b"planes")
    assert all(storage.exists(key) for key in [*keys.values(), *avatars] if key)

    erased = client.delete(f"/v1/jobs/{job['id']}", headers=tenant.headers)

    assert erased.status_code == 200, erased.text
    body = erased.json()
    assert body["state"] == "succeeded" and body["media_deleted_at"] is not None
    assert "result" not in body["links"]
    assert not any(storage.exists(key) for key in [*keys.values(), *avatars] if key)
    gone = client.get(f"/v1/jobs/{job['id']}/result", headers=tenant.headers)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "result_deleted"
    provenance = client.get(f"/v1/jobs/{job['id']}/provenance", headers=tenant.headers).json()
    assert provenance["signature_valid"] is True and provenance["document"]["job_id"] == job["id"]
    again = client.delete(f"/v1/jobs/{job['id']}", headers=tenant.headers)
    assert again.status_code == 200 and again.json()["media_deleted_at"] == body["media_deleted_at"]
    with db.session() as session:
        actions = session.scalars(
            select(AuditLog.action).where(AuditLog.target_id == job["id"], AuditLog.action == "job.erase")
        ).all()
        assert len(actions) == 1  # the repeat erased nothing and wrote no second record
        stored = session.get(Job, job["id"])
        assert stored is not None and stored.result_sha256  # the output's hash stays for verification
        assert all(
            session.get(Asset, a).deleted_at for a in (stored.portrait_asset_id, stored.driving_asset_id)
        )


def test_an_input_shared_by_two_jobs_goes_with_the_last_of_them(
    client: TestClient, worker: None, tenant: TenantKey, storage: ObjectStorage, db: Database
) -> None:
    portrait = _fresh_portrait()
    first = submit(client, tenant, portrait=portrait, driving=_fresh_driver()).json()
    second = submit(client, tenant, portrait=portrait, driving=_fresh_driver()).json()
    for job in (first, second):
        assert wait_for_state(client, tenant, job["id"], {"succeeded", "failed"})["state"] == "succeeded"
    first_keys, second_keys = _job_keys(db, first["id"]), _job_keys(db, second["id"])
    assert first_keys["portrait"] == second_keys["portrait"]  # one content-addressed asset

    assert client.delete(f"/v1/jobs/{first['id']}", headers=tenant.headers).status_code == 200
    assert not storage.exists(first_keys["result"]) and not storage.exists(first_keys["driving"])
    assert storage.exists(second_keys["portrait"]) and storage.exists(second_keys["result"])
    result = client.get(f"/v1/jobs/{second['id']}/result", headers=tenant.headers, follow_redirects=False)
    assert result.status_code == 307

    assert client.delete(f"/v1/jobs/{second['id']}", headers=tenant.headers).status_code == 200
    assert not storage.exists(second_keys["portrait"])


def test_a_queued_job_must_be_cancelled_before_its_data_can_go(
    idle_client: TestClient, tenant: TenantKey, storage: ObjectStorage, db: Database
) -> None:
    job = submit(idle_client, tenant, portrait=_fresh_portrait(), driving=_fresh_driver()).json()
    refused = idle_client.delete(f"/v1/jobs/{job['id']}", headers=tenant.headers)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_not_finished"
    keys = _job_keys(db, job["id"])
    assert storage.exists(keys["portrait"]) and storage.exists(keys["driving"])  # nothing lost

    idle_client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)
    erased = idle_client.delete(f"/v1/jobs/{job['id']}", headers=tenant.headers)
    assert erased.status_code == 200 and erased.json()["state"] == "cancelled"
    assert not storage.exists(keys["portrait"]) and not storage.exists(keys["driving"])


def test_another_tenant_cannot_delete_a_job_or_an_asset(
    idle_client: TestClient, tenant_factory: Callable[..., TenantKey], storage: ObjectStorage
) -> None:
    owner, stranger = tenant_factory(), tenant_factory()
    asset = idle_client.post(
        "/v1/assets", files={"file": ("p.png", _fresh_portrait(), "image/png")}, headers=owner.headers
    ).json()
    job = submit(idle_client, owner, driving=_fresh_driver(), data={"portrait_asset_id": asset["id"]}).json()
    idle_client.post(f"/v1/jobs/{job['id']}/cancel", headers=owner.headers)

    assert idle_client.delete(f"/v1/jobs/{job['id']}", headers=stranger.headers).status_code == 404
    assert idle_client.delete(f"/v1/assets/{asset['id']}", headers=stranger.headers).status_code == 404
    assert idle_client.get(f"/v1/assets/{asset['id']}", headers=owner.headers).json()["deleted_at"] is None


def test_deleting_an_upload_and_uploading_it_again(
    idle_client: TestClient, tenant: TenantKey, storage: ObjectStorage, db: Database
) -> None:
    portrait = _fresh_portrait()
    asset = idle_client.post(
        "/v1/assets", files={"file": ("p.png", portrait, "image/png")}, headers=tenant.headers
    ).json()
    job = submit(idle_client, tenant, driving=_fresh_driver(), data={"portrait_asset_id": asset["id"]}).json()
    in_use = idle_client.delete(f"/v1/assets/{asset['id']}", headers=tenant.headers)
    assert in_use.status_code == 409 and in_use.json()["error"]["code"] == "asset_in_use"
    assert job["id"] in in_use.json()["error"]["details"]["job_ids"]

    idle_client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)
    # The job's own deletion takes the portrait with it (no other job holds it) ...
    assert idle_client.delete(f"/v1/jobs/{job['id']}", headers=tenant.headers).status_code == 200
    with db.session() as session:
        key = session.get(Asset, asset["id"]).storage_key
    assert not storage.exists(key)
    # ... and deleting the asset afterwards is a no-op that reports it deleted.
    erased = idle_client.delete(f"/v1/assets/{asset['id']}", headers=tenant.headers)
    assert erased.status_code == 200 and erased.json()["deleted_at"] is not None

    reuse = submit(idle_client, tenant, driving=_fresh_driver(), data={"portrait_asset_id": asset["id"]})
    assert reuse.status_code == 410 and reuse.json()["error"]["code"] == "asset_deleted"

    again = idle_client.post(
        "/v1/assets", files={"file": ("p.png", portrait, "image/png")}, headers=tenant.headers
    )
    assert again.status_code == 200 and again.json()["id"] == asset["id"]
    assert again.json()["deleted_at"] is None and storage.exists(key)
    resubmitted = submit(
        idle_client, tenant, driving=_fresh_driver(), data={"portrait_asset_id": asset["id"]}
    )
    assert resubmitted.status_code == 202


def test_deleting_an_unused_upload(
    idle_client: TestClient, tenant: TenantKey, storage: ObjectStorage, db: Database
) -> None:
    asset = idle_client.post(
        "/v1/assets", files={"file": ("d.mp4", _fresh_driver(), "video/mp4")}, headers=tenant.headers
    ).json()
    with db.session() as session:
        key = session.get(Asset, asset["id"]).storage_key
    assert storage.exists(key)
    erased = idle_client.delete(f"/v1/assets/{asset['id']}", headers=tenant.headers)
    assert erased.status_code == 200 and erased.json()["deleted_at"] is not None
    assert not storage.exists(key)
