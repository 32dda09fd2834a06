"""Fixtures of the platform tests. The server fixtures (goha_postgres_url, goha_seaweedfs, ...)
come from ``tests/support/pytest_plugin.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.platform.db import Database
from shared.platform.migrate import upgrade


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'goha.sqlite3'}"
    upgrade(url)
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The same test on both dialects the platform supports."""
    if request.param == "postgresql":
        url = request.getfixturevalue("goha_postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'goha.sqlite3'}"
        upgrade(url)
    db = Database(url)
    try:
        yield db
    finally:
        db.dispose()
