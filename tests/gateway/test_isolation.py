"""A tenant never sees another tenant's jobs, assets, results or provenance: 404, never 403."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.gateway.conftest import TenantKey, submit

pytestmark = pytest.mark.integration


def test_other_tenants_get_not_found_everywhere(
    idle_client: TestClient, tenant_factory: Callable[..., TenantKey], portrait_png: bytes, driving_mp4: bytes
) -> None:
    owner, stranger = tenant_factory(), tenant_factory()
    job = submit(idle_client, owner, portrait=portrait_png, driving=driving_mp4).json()
    asset_id = job["inputs"]["portrait_asset_id"]

    for method, path in (
        ("GET", f"/v1/jobs/{job['id']}"),
        ("GET", f"/v1/jobs/{job['id']}/result"),
        ("GET", f"/v1/jobs/{job['id']}/provenance"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/assets/{asset_id}"),
    ):
        response = idle_client.request(method, path, headers=stranger.headers)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    assert idle_client.get("/v1/jobs", headers=stranger.headers).json()["items"] == []

    # Referencing the owner's asset by id from the other tenant is just as unknown.
    borrowed = submit(
        idle_client,
        stranger,
        data={"portrait_asset_id": asset_id, "driving_asset_id": job["inputs"]["driving_asset_id"]},
    )
    assert borrowed.status_code == 404 and borrowed.json()["error"]["code"] == "not_found"

    # The owner still sees everything, and the stranger's attempt did not cancel the job.
    mine = idle_client.get(f"/v1/jobs/{job['id']}", headers=owner.headers).json()
    assert mine["state"] == "queued"


def test_same_bytes_from_two_tenants_are_two_assets(
    idle_client: TestClient, tenant_factory: Callable[..., TenantKey], portrait_png: bytes
) -> None:
    first, second = tenant_factory(), tenant_factory()
    files = {"file": ("p.png", portrait_png, "image/png")}
    a = idle_client.post("/v1/assets", files=files, headers=first.headers).json()
    b = idle_client.post("/v1/assets", files=files, headers=second.headers).json()
    assert a["sha256"] == b["sha256"] and a["id"] != b["id"]
