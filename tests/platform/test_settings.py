from __future__ import annotations

from pathlib import Path

import pytest

from shared.platform.settings import Settings, get_settings


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path)
    assert settings.embedded is True
    assert settings.database_url == f"sqlite:///{tmp_path / 'goha.sqlite3'}"
    assert settings.broker_url == "filesystem://"
    assert settings.broker_folder == tmp_path / "broker"
    assert settings.storage_backend == "local"
    assert settings.local_storage_dir == tmp_path / "storage"
    assert settings.auto_migrate is True
    assert settings.is_sqlite


def test_environment_overrides_with_goha_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOHA_EMBEDDED", "false")
    monkeypatch.setenv("GOHA_DATABASE_URL", "postgresql+psycopg://u@db/goha")
    monkeypatch.setenv("GOHA_BROKER_URL", "redis://cache:6379/1")
    monkeypatch.setenv("GOHA_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("GOHA_S3_SECRET_KEY", "s3cr3t")
    monkeypatch.setenv("GOHA_MAX_VIDEO_SECONDS", "12.5")
    monkeypatch.setenv("GOHA_ALLOWED_VIDEO_CODECS", '["h264"]')
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings.embedded is False and settings.auto_migrate is False
        assert settings.database_url.startswith("postgresql")
        assert settings.storage_backend == "s3"
        assert settings.s3_secret_key.get_secret_value() == "s3cr3t"
        assert "s3cr3t" not in repr(settings)
        assert settings.max_video_seconds == 12.5
        assert settings.allowed_video_codecs == ["h264"]
        assert settings.effective_rate_limit_redis_url == "redis://cache:6379/1"
    finally:
        get_settings.cache_clear()


def test_invalid_backend_is_refused() -> None:
    with pytest.raises(ValueError):
        Settings(storage_backend="ftp")  # type: ignore[arg-type]


def test_retain_freed_memory_is_opt_in_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("GOHA_RETAIN_FREED_MEMORY", raising=False)
    assert Settings(var_dir=tmp_path).retain_freed_memory is False
    for value, expected in (("true", True), ("1", True), ("yes", True), ("0", False), ("false", False)):
        monkeypatch.setenv("GOHA_RETAIN_FREED_MEMORY", value)
        assert Settings(var_dir=tmp_path).retain_freed_memory is expected, value
