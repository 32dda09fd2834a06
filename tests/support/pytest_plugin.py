"""Session-scoped pytest fixtures for the real servers (loaded for every suite by ``pytest_plugins`` in tests/conftest.py).

- ``goha_postgres_url``: a fresh PostgreSQL database migrated to head, dropped at the end.
- ``goha_redis_url``: the local Redis (the test fails with a clear message if it is down).
- ``goha_seaweedfs``: SeaweedFS's S3 gateway on 127.0.0.1 (started once, ~7-15 s).
- ``goha_queue_name``: a queue name unique to this session, so parallel runs never share tasks.
- ``goha_s3_settings``: the Settings fields that point storage at ``goha_seaweedfs`` (own bucket).

Nothing starts unless a test asks for it; importing this module is cheap.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from shared.platform.tempdb import pg_admin_url, temp_postgres_database
from tests.support.seaweedfs import SeaweedS3, start_seaweedfs

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def goha_postgres_url() -> Iterator[str]:
    try:
        database = temp_postgres_database("goha_test")
        url = database.__enter__()
    except Exception as exc:  # the server is part of the test environment: say what is missing
        pytest.fail(f"PostgreSQL at {pg_admin_url()} is not usable: {exc}")
    try:
        yield url
    finally:
        database.__exit__(None, None, None)


@pytest.fixture(scope="session")
def goha_redis_url() -> str:
    import redis

    url = os.environ.get("GOHA_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(f"Redis at {url} is not reachable: {exc}")
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def goha_seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def goha_queue_name() -> str:
    return f"goha-test-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def goha_s3_settings(goha_seaweedfs: SeaweedS3) -> dict[str, Any]:
    return {
        "storage_backend": "s3",
        "s3_endpoint": goha_seaweedfs.endpoint,
        "s3_access_key": goha_seaweedfs.access_key,
        "s3_secret_key": goha_seaweedfs.secret_key,
        "s3_bucket": f"goha-test-{secrets.token_hex(4)}",
        "s3_secure": False,
    }
