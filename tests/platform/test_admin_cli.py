"""The admin CLI creates tenants and keys; the key is printed once and only its hash is stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.platform import repository
from shared.platform.apikeys import hash_api_key
from shared.platform.db import Database
from shared.platform.migrate import head_revision
from shared.platform.models import ApiKey, AuditLog

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_create_tenant_and_key_then_authenticate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'admin.sqlite3'}"
    env = {**os.environ, "GOHA_DATABASE_URL": url, "GOHA_VAR_DIR": str(tmp_path)}
    migrated = _run(["-m", "goha.cli", "migrate"], env)
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout)["revision"] == head_revision()

    created = _run(["-m", "shared.platform.admin", "create-tenant", "acme"], env)
    assert created.returncode == 0, created.stderr
    tenant_id = json.loads(created.stdout)["id"]
    duplicate = _run(["-m", "shared.platform.admin", "create-tenant", "acme"], env)
    assert duplicate.returncode == 1 and "tenant_exists" in duplicate.stderr

    keyed = _run(
        ["-m", "shared.platform.admin", "create-key", "acme", "--label", "ci", "--rate-limit", "30"], env
    )
    assert keyed.returncode == 0, keyed.stderr
    key = keyed.stdout.strip()
    assert key.startswith("goha_") and "shown only this once" in keyed.stderr

    db = Database(url)
    try:
        with db.session() as session:
            row = session.scalar(select(ApiKey))
            assert row is not None and row.tenant_id == tenant_id and row.rate_limit_per_minute == 30
            assert row.key_hash == hash_api_key(key) and key not in (row.key_hash, row.prefix, row.label)
            assert repository.authenticate(session, key) is not None
            assert repository.authenticate(session, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
            prefix = row.prefix
        revoked = _run(["-m", "goha.cli", "keys", "revoke", prefix], env)
        assert revoked.returncode == 0, revoked.stderr
        with db.session() as session:
            assert repository.authenticate(session, key) is None
            actions = [entry.action for entry in session.scalars(select(AuditLog).order_by(AuditLog.id))]
        assert actions == ["tenant.create", "api_key.create", "api_key.revoke"]
    finally:
        db.dispose()

    via_goha = _run(["-m", "goha.cli", "keys", "create", tenant_id], env)
    assert via_goha.returncode == 0 and via_goha.stdout.strip().startswith("goha_")
