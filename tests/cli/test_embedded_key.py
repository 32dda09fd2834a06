"""Issue 18: `goha up` keeps one stable API key in its var dir (0600) across restarts instead of revoking
it when it stops, and replaces it only when it no longer authenticates. The database is the stack's real
SQLite file, migrated; the key is checked the way the gateway checks it (repository.authenticate)."""

from __future__ import annotations

import stat
from pathlib import Path

from services.embedded.stack import EmbeddedStack
from shared.platform import admin, repository
from shared.platform.db import Database
from shared.platform.migrate import upgrade


def _prepared(var_dir: Path) -> tuple[EmbeddedStack, Database]:
    stack = EmbeddedStack(var_dir)
    var_dir.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{var_dir / 'goha.sqlite3'}"
    upgrade(database_url)
    database = Database(database_url)
    admin.create_tenant(database, stack.tenant)
    return stack, database


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _authenticates(database: Database, key: str) -> bool:
    with database.session() as session:
        return repository.authenticate(session, key) is not None


def test_the_key_is_kept_private_and_reused_while_valid(tmp_path: Path) -> None:
    stack, database = _prepared(tmp_path / "var")
    try:
        first, prefix = stack._stable_key(database)
        assert stack.key_file == tmp_path / "var" / "api.key"
        assert stack.key_file.read_text().strip() == first and _mode(stack.key_file) == 0o600
        again, same_prefix = EmbeddedStack(tmp_path / "var")._stable_key(database)  # the next start
        assert (again, same_prefix) == (first, prefix) and _authenticates(database, first)
        stack.key_file.chmod(0o644)  # e.g. restored from a backup with wider permissions
        assert stack._stable_key(database)[0] == first and _mode(stack.key_file) == 0o600
        assert not list(stack.var_dir.glob(".api.key.*"))  # no temporary file left behind
    finally:
        database.dispose()


def test_a_revoked_or_unreadable_key_is_replaced(tmp_path: Path) -> None:
    stack, database = _prepared(tmp_path / "var")
    try:
        first, prefix = stack._stable_key(database)
        admin.revoke_key(database, prefix)
        second, _ = stack._stable_key(database)
        assert second != first and _authenticates(database, second)
        assert stack.key_file.read_text().strip() == second and _mode(stack.key_file) == 0o600
        stack.key_file.write_text("not a key\n")
        third, _ = stack._stable_key(database)
        assert third not in (first, second) and _authenticates(database, third)
        # Another tenant's valid key in the file is not this stack's key.
        other = admin.create_tenant(database, "someone-else")
        _, foreign = admin.create_key(database, other.id)
        stack.key_file.write_text(foreign)
        fourth, _ = stack._stable_key(database)
        assert fourth != foreign and stack.key_file.read_text().strip() == fourth
    finally:
        database.dispose()
