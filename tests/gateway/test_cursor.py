"""Issue 16 (low): a forged pagination cursor with a timezone-less timestamp is a 400, not a 500."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient

from tests.gateway.conftest import TenantKey


def test_a_naive_cursor_is_a_400(idle_client: TestClient, tenant: TenantKey) -> None:
    cursor = base64.urlsafe_b64encode(b"2026-01-01T00:00:00|some-id").decode().rstrip("=")
    response = idle_client.get("/v1/jobs", params={"cursor": cursor}, headers=tenant.headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
