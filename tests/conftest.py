"""Fixtures shared across test packages; the real servers' session fixtures come from
``tests/support/pytest_plugin.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.platform.migrate import upgrade
from shared.platform.settings import Settings, get_settings

pytest_plugins = ("tests.support.pytest_plugin",)


@pytest.fixture
def worker_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The Celery worker module (``services.worker.tasks``) set up from environment settings: a
    random-weight tiny checkpoint, in-process inference, a migrated SQLite database under tmp_path.
    Its pipeline is built on first use from these settings."""
    import torch

    from shared.model.checkpoint import save_checkpoint
    from shared.model.config import tiny_config
    from shared.model.network import GOHANetwork

    torch.manual_seed(0)
    checkpoint = tmp_path / "goha-tiny.pt"
    save_checkpoint(GOHANetwork(tiny_config()).eval(), checkpoint)
    monkeypatch.setenv("GOHA_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("GOHA_CHECKPOINT_PATH", str(checkpoint))
    monkeypatch.setenv("GOHA_INFERENCE_BACKEND", "in_process")
    get_settings.cache_clear()
    import services.worker.tasks as tasks

    monkeypatch.setattr(tasks, "_pipeline", None)  # built from these settings on first use
    settings = get_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)  # importing the tasks module may have made it
    upgrade(settings.database_url)
    try:
        yield settings
    finally:
        get_settings.cache_clear()
