"""The gateway's JSON log lines carry the tenant once the key is authenticated, and the job id where
the route knows it (embedded mode: SQLite, local storage; a broker that is down, so publishing logs)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from shared.platform import admin
from shared.platform.db import Database
from shared.platform.logging import JsonFormatter, configure_logging, current_context
from shared.platform.settings import Settings
from tests.gateway.conftest import TenantKey, submit

# SQLAlchemy logs each statement at INFO on this logger, from the thread that runs it: real lines
# from inside the routers' database work, without adding log calls for the test.
SQL_LOGGER = "sqlalchemy.engine.Engine"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[TestClient, Database, io.StringIO]]:
    settings = Settings(
        var_dir=tmp_path / "var",
        broker_url="redis://127.0.0.1:1/0",  # nothing listens: every publish fails and is logged
        broker_connect_timeout_s=0.5,
        verifier="none",
    )
    db = Database(settings.database_url)
    app = create_app(settings, db=db)  # installs the JSON handler on stderr...
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    configure_logging("INFO", json=True, stream=stream, take_over=())  # ...which this one replaces
    sql = logging.getLogger(SQL_LOGGER)
    sql_level = sql.level
    try:
        with TestClient(app) as client:
            yield client, db, stream
    finally:
        sql.setLevel(sql_level)
        for handler in [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]:
            root.removeHandler(handler)
        root.setLevel(level)
        db.dispose()


def _tenant(db: Database, name: str) -> TenantKey:
    tenant = admin.create_tenant(db, name)
    row, key = admin.create_key(db, tenant.id)
    return TenantKey(tenant.id, key, row.prefix)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_submit_logs_carry_tenant_job_and_request(
    gateway: tuple[TestClient, Database, io.StringIO], portrait_png: bytes, driving_mp4: bytes
) -> None:
    client, db, stream = gateway
    who = _tenant(db, "acme")
    accepted = submit(client, who, portrait=portrait_png, driving=driving_mp4)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]

    failed_publish = [line for line in _lines(stream) if "could not enqueue job" in line["message"]]
    assert len(failed_publish) == 1, _lines(stream)
    line = failed_publish[0]
    assert line["tenant_id"] == who.tenant_id
    assert line["job_id"] == job_id
    assert line["request_id"] == accepted.headers["x-request-id"]
    assert current_context() == {}  # nothing outlives the request


def test_job_routes_bind_the_path_job_id_and_each_request_its_own_tenant(
    gateway: tuple[TestClient, Database, io.StringIO], portrait_png: bytes, driving_mp4: bytes
) -> None:
    client, db, stream = gateway
    owner, other = _tenant(db, "owner"), _tenant(db, "other")
    job_id = submit(client, owner, portrait=portrait_png, driving=driving_mp4).json()["id"]
    logging.getLogger(SQL_LOGGER).setLevel(logging.INFO)

    def sql_lines_of(response_request_id: str) -> list[dict[str, Any]]:
        return [
            line
            for line in _lines(stream)
            if line["logger"] == SQL_LOGGER and line.get("request_id") == response_request_id
        ]

    seen = client.get(f"/v1/jobs/{job_id}", headers=owner.headers)
    assert seen.status_code == 200
    lines = sql_lines_of(seen.headers["x-request-id"])
    assert lines, "no SQL was logged for the request"
    assert all(line["job_id"] == job_id for line in lines)  # bound before authentication even runs
    # The endpoint's own query (the job lookup, on a worker thread) runs after authentication.
    lookups = [line for line in lines if line.get("tenant_id") == owner.tenant_id]
    assert lookups, lines

    # Another tenant asking for the same job: its lines carry its own tenant, never the owner's.
    refused = client.get(f"/v1/jobs/{job_id}", headers=other.headers)
    assert refused.status_code == 404
    lines = sql_lines_of(refused.headers["x-request-id"])
    assert lines and all(line.get("tenant_id") in (None, other.tenant_id) for line in lines)
    assert any(line.get("tenant_id") == other.tenant_id for line in lines)

    # A route without a job in its path binds the tenant only.
    listed = client.get("/v1/jobs", headers=owner.headers)
    assert listed.status_code == 200
    lines = sql_lines_of(listed.headers["x-request-id"])
    assert any(line.get("tenant_id") == owner.tenant_id for line in lines)
    assert all("job_id" not in line for line in lines)
    assert current_context() == {}
