"""API keys (hashed, revocable, mapped to tenants) and per-key rate limits."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from shared.platform import admin
from shared.platform.db import Database
from tests.gateway.conftest import TenantKey

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer goha_000000000000_nope"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"X-API-Key": "not-a-key"},
    ],
)
def test_missing_or_wrong_keys_are_401(idle_client: TestClient, headers: dict[str, str]) -> None:
    response = idle_client.get("/v1/jobs", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_x_api_key_header_and_revocation(idle_client: TestClient, tenant: TenantKey, db: Database) -> None:
    assert idle_client.get("/v1/jobs", headers={"X-API-Key": tenant.key}).status_code == 200
    tampered = tenant.key[:-2] + ("xx" if not tenant.key.endswith("xx") else "yy")
    assert idle_client.get("/v1/jobs", headers={"X-API-Key": tampered}).status_code == 401
    admin.revoke_key(db, tenant.prefix)
    assert idle_client.get("/v1/jobs", headers=tenant.headers).status_code == 401


def test_rate_limit_per_key(idle_client: TestClient, tenant_factory: Callable[..., TenantKey]) -> None:
    limited = tenant_factory(rate_limit_per_minute=3)
    other = tenant_factory()
    codes = [idle_client.get("/v1/jobs", headers=limited.headers).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    refused = idle_client.get("/v1/jobs", headers=limited.headers)
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert idle_client.get("/v1/jobs", headers=other.headers).status_code == 200  # budgets are per key


def test_public_endpoints_need_no_key(idle_client: TestClient) -> None:
    assert idle_client.get("/healthz").status_code == 200
    assert idle_client.get("/metrics").status_code == 200
    spec = idle_client.get("/openapi.json").json()
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/result",
        "/v1/jobs/{job_id}/provenance",
        "/v1/assets",
        "/v1/verify",
        "/readyz",
    } <= set(spec["paths"])
    # The route reads its multipart body itself (after authentication), so the form is documented inline.
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = body["properties"]
    assert {"consent_subject", "consent_method", "consent_obtained_at"} <= set(body["required"])
    assert form["portrait"]["format"] == "binary" and "output_size" in form
    assert {"portrait", "driving_video", "consent_subject", "consent_method", "consent_obtained_at"} <= set(
        form
    )
