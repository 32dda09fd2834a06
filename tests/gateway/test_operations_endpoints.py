"""Issue 16 (Low): ``/readyz`` must not hand backend error text to anyone who asks, and ``/metrics`` on the
internet-facing API port needs the metrics bearer token (``GOHA_METRICS_TOKEN``) when one is set.

Real servers: the database check fails against the test PostgreSQL asked for a database that does not
exist (its error names the database, the user and the host), the broker check against a Redis URL on a closed port."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.gateway.app import create_app
from shared.platform.db import Database
from shared.platform.settings import Settings
from shared.platform.storage import ObjectStorage
from tests.gateway.conftest import TenantKey

pytestmark = pytest.mark.integration


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def test_readyz_names_the_failing_dependency_but_not_its_error(
    gw_settings: Settings, storage: ObjectStorage
) -> None:
    missing = "goha_missing_" + secrets.token_hex(4)  # PostgreSQL's error names it, the user and the host
    bad_password = "wrong-" + secrets.token_hex(6)
    broken = gw_settings.model_copy(
        update={
            "database_url": _with_database(gw_settings.database_url, missing),
            "broker_url": f"redis://:{bad_password}@127.0.0.1:1/0",
            "broker_connect_timeout_s": 0.5,
            "auto_migrate": False,
        }
    )
    database = Database.from_settings(broken)
    try:
        with TestClient(create_app(broken, db=database, storage=storage)) as client:
            ready = client.get("/readyz")
    finally:
        database.dispose()
    assert ready.status_code == 503
    body = ready.json()
    assert body == {
        "status": "not_ready",
        "checks": {"database": "error", "broker": "error", "storage": "ok"},
    }
    user = urlsplit(gw_settings.database_url).username or "goha"
    for leak in (user, missing, "password", "127.0.0.1", "Error", "Connection", bad_password):
        assert leak not in ready.text, leak


def test_metrics_need_the_metrics_token_when_one_is_set(
    gw_settings: Settings, db: Database, storage: ObjectStorage, tenant: TenantKey
) -> None:
    token = secrets.token_hex(24)
    guarded = gw_settings.model_copy(update={"metrics_token": SecretStr(token)})
    with TestClient(create_app(guarded, db=db, storage=storage)) as client:
        anonymous = client.get("/metrics")
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthenticated"
        assert "goha_" not in anonymous.text
        wrong = client.get("/metrics", headers={"Authorization": f"Bearer {token[:-1]}x"})
        assert wrong.status_code == 401
        # A tenant's API key is not the metrics token.
        assert client.get("/metrics", headers=tenant.headers).status_code == 401
        scraped = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert scraped.status_code == 200 and "goha_jobs" in scraped.text
        # Health endpoints stay open (probes carry no token).
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
