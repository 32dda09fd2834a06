"""Listing, pagination, filters, cancellation, results before completion, asset reuse, the active-job limit."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from shared.media.synthetic import make_image_bytes, make_video_bytes
from shared.platform.db import Database
from shared.platform.settings import Settings
from shared.platform.storage import ObjectStorage
from tests.gateway.conftest import TenantKey, submit

pytestmark = pytest.mark.integration


def test_list_paginates_newest_first_and_filters_by_state(
    idle_client: TestClient, tenant: TenantKey, portrait_png: bytes, driving_mp4: bytes
) -> None:
    ids = [
        submit(idle_client, tenant, portrait=portrait_png, driving=driving_mp4).json()["id"] for _ in range(5)
    ]
    cancelled = idle_client.post(f"/v1/jobs/{ids[1]}/cancel", headers=tenant.headers)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = idle_client.get("/v1/jobs", params=params, headers=tenant.headers).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # every job once, newest first

    only_cancelled = idle_client.get("/v1/jobs", params={"state": "cancelled"}, headers=tenant.headers).json()
    assert [item["id"] for item in only_cancelled["items"]] == [ids[1]]
    queued = idle_client.get("/v1/jobs", params={"state": "queued"}, headers=tenant.headers).json()
    assert len(queued["items"]) == 4
    bad = idle_client.get("/v1/jobs", params={"state": "exploded"}, headers=tenant.headers)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    bad_cursor = idle_client.get("/v1/jobs", params={"cursor": "!!"}, headers=tenant.headers)
    assert bad_cursor.status_code == 400 and bad_cursor.json()["error"]["code"] == "invalid_request"


def test_cancel_and_result_rules(
    idle_client: TestClient, tenant: TenantKey, portrait_png: bytes, driving_mp4: bytes
) -> None:
    job = submit(idle_client, tenant, portrait=portrait_png, driving=driving_mp4).json()
    early = idle_client.get(f"/v1/jobs/{job['id']}/result", headers=tenant.headers)
    assert early.status_code == 409 and early.json()["error"]["code"] == "result_not_ready"
    provenance = idle_client.get(f"/v1/jobs/{job['id']}/provenance", headers=tenant.headers).json()
    assert (
        provenance["complete"] is False and provenance["signature_valid"] is True
    )  # submission half, signed
    assert "cancel" in job["links"]

    cancelled = idle_client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers).json()
    assert (
        cancelled["state"] == "cancelled"
        and cancelled["finished_at"] is not None
        and "cancel" not in cancelled["links"]
    )
    again = idle_client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_cancellable"
    assert idle_client.get("/v1/jobs/not-a-job", headers=tenant.headers).status_code == 404


def test_assets_are_content_addressed_and_reusable(
    idle_client: TestClient, tenant: TenantKey, driving_mp4: bytes, storage: ObjectStorage, db: Database
) -> None:
    portrait = make_image_bytes((100, 100), "JPEG", seed=7)
    first = idle_client.post(
        "/v1/assets", files={"file": ("a.jpg", portrait, "image/jpeg")}, headers=tenant.headers
    )
    second = idle_client.post(
        "/v1/assets", files={"file": ("renamed.jpg", portrait, "image/jpeg")}, headers=tenant.headers
    )
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    asset = first.json()
    assert asset["kind"] == "image" and asset["media_info"]["width"] == 100
    assert storage.exists(f"tenants/{tenant.tenant_id}/inputs/{asset['sha256']}")
    clip = idle_client.post(
        "/v1/assets", files={"file": ("d.mp4", driving_mp4, "video/mp4")}, headers=tenant.headers
    ).json()
    assert clip["kind"] == "video" and clip["media_info"]["frame_count"] == 8

    job = submit(idle_client, tenant, data={"portrait_asset_id": asset["id"], "driving_asset_id": clip["id"]})
    assert job.status_code == 202
    assert job.json()["inputs"] == {"portrait_asset_id": asset["id"], "driving_asset_id": clip["id"]}
    swapped = submit(
        idle_client, tenant, data={"portrait_asset_id": clip["id"], "driving_asset_id": asset["id"]}
    )
    assert swapped.status_code == 415 and swapped.json()["error"]["code"] == "wrong_media_kind"
    assert (
        idle_client.get(f"/v1/assets/{asset['id']}", headers=tenant.headers).json()["sha256"]
        == asset["sha256"]
    )


def test_label_corner_can_move_but_not_disable_the_label(
    idle_client: TestClient, tenant: TenantKey, portrait_png: bytes, driving_mp4: bytes
) -> None:
    moved = submit(
        idle_client, tenant, portrait=portrait_png, driving=driving_mp4, data={"label_corner": "top-left"}
    )
    assert moved.status_code == 202 and moved.json()["options"]["label_corner"] == "top-left"
    for value in ("none", "off"):
        refused = submit(
            idle_client, tenant, portrait=portrait_png, driving=driving_mp4, data={"label_corner": value}
        )
        assert refused.status_code == 400 or refused.status_code == 422
        assert refused.json()["error"]["code"] == "invalid_options"
    odd = submit(idle_client, tenant, portrait=portrait_png, driving=driving_mp4, data={"output_size": "257"})
    assert odd.json()["error"]["code"] == "invalid_options"


def test_paste_back_is_on_by_default_and_can_be_turned_off(
    idle_client: TestClient, tenant: TenantKey, portrait_png: bytes, driving_mp4: bytes
) -> None:
    default = submit(idle_client, tenant, portrait=portrait_png, driving=driving_mp4)
    assert default.status_code == 202 and default.json()["options"]["paste_back"] is True
    off = submit(
        idle_client, tenant, portrait=portrait_png, driving=driving_mp4, data={"paste_back": "false"}
    )
    assert off.status_code == 202 and off.json()["options"]["paste_back"] is False
    bad = submit(
        idle_client, tenant, portrait=portrait_png, driving=driving_mp4, data={"paste_back": "maybe"}
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_options"


@pytest.fixture
def limited_client(gw_settings: Settings, db: Database, storage: ObjectStorage) -> Iterator[TestClient]:
    """At most two active jobs per tenant; no consumer on its queue, so jobs stay queued."""
    limited = gw_settings.model_copy(
        update={"queue_name": f"{gw_settings.queue_name}-idle", "max_active_jobs_per_tenant": 2}
    )
    with TestClient(create_app(limited, db=db, storage=storage)) as test_client:
        yield test_client


def test_active_jobs_per_tenant_are_limited(
    limited_client: TestClient,
    tenant_factory: Callable[..., TenantKey],
    portrait_png: bytes,
    storage: ObjectStorage,
) -> None:
    tenant, other = tenant_factory(), tenant_factory()
    drivers = [
        make_video_bytes(".mp4", frames=4, fps=4, size=(64, 64), seed=seed) for seed in (101, 102, 103)
    ]
    first = submit(
        limited_client, tenant, portrait=portrait_png, driving=drivers[0], headers={"Idempotency-Key": "one"}
    )
    second = submit(limited_client, tenant, portrait=portrait_png, driving=drivers[1])
    assert first.status_code == second.status_code == 202
    stored = storage.list_keys(f"tenants/{tenant.tenant_id}/inputs/")

    third = submit(limited_client, tenant, portrait=portrait_png, driving=drivers[2])
    assert third.status_code == 429
    error = third.json()["error"]
    assert error["code"] == "too_many_active_jobs" and error["details"] == {"active_jobs": 2, "limit": 2}
    assert storage.list_keys(f"tenants/{tenant.tenant_id}/inputs/") == stored  # nothing stored
    # A retried request still gets its job, and another tenant is not affected.
    replay = submit(
        limited_client, tenant, portrait=portrait_png, driving=drivers[0], headers={"Idempotency-Key": "one"}
    )
    assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
    assert submit(limited_client, other, portrait=portrait_png, driving=drivers[2]).status_code == 202

    limited_client.post(f"/v1/jobs/{second.json()['id']}/cancel", headers=tenant.headers)
    assert submit(limited_client, tenant, portrait=portrait_png, driving=drivers[2]).status_code == 202


def test_a_callback_url_is_checked_and_shown(
    idle_client: TestClient, tenant: TenantKey, portrait_png: bytes, driving_mp4: bytes, db: Database
) -> None:
    refused = submit(
        idle_client,
        tenant,
        portrait=portrait_png,
        driving=driving_mp4,
        data={"callback_url": "http://10.1.2.3/x"},
    )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_callback_url"

    url = "https://hooks.example.com/goha?customer=7"
    job = submit(idle_client, tenant, portrait=portrait_png, driving=driving_mp4, data={"callback_url": url})
    assert job.status_code == 202
    assert job.json()["callback"] == {"url": url, "attempts": 0, "delivered_at": None, "last_error": None}
    plain = submit(idle_client, tenant, portrait=portrait_png, driving=driving_mp4).json()
    assert plain["callback"] is None
