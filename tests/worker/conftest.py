"""Shared fixtures of the worker tests: a random-weight tiny checkpoint (the product ships a trained
one; tests must not depend on it), a migrated database, storage, and job submission helpers."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from services.worker.local_job import submit_local_job
from shared.model.checkpoint import save_checkpoint
from shared.model.config import tiny_config
from shared.model.network import GOHANetwork
from shared.platform.db import Database
from shared.platform.migrate import upgrade
from shared.platform.settings import Settings
from shared.platform.storage import LocalStorage, ObjectStorage


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "goha-tiny-test.pt"
    save_checkpoint(GOHANetwork(tiny_config()).eval(), path)
    return path


def portrait_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def embedded_settings(tmp_path: Path, tiny_checkpoint: Path) -> Settings:
    return Settings(
        var_dir=tmp_path / "var",
        embedded=True,
        checkpoint_path=tiny_checkpoint,
        inference_backend="in_process",
        worker_chunk_frames=8,
    )


@pytest.fixture()
def embedded_db(embedded_settings: Settings) -> Iterator[Database]:
    embedded_settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(embedded_settings.database_url)
    database = Database.from_settings(embedded_settings)
    yield database
    database.dispose()


SubmitJob = Callable[..., str]


def make_submitter(settings: Settings, database: Database, storage: ObjectStorage) -> SubmitJob:
    """Creates tenant, assets and a queued job the way the gateway does (``submit_local_job``)."""

    def submit(
        driving: Path | None,
        *,
        job_type: str = "reenact",
        options: dict | None = None,
        portrait: bytes | None = None,
    ) -> str:
        return submit_local_job(
            settings,
            database.session,
            storage,
            tenant_name=f"tenant-{np.random.default_rng().integers(1e9)}",
            portrait=portrait if portrait is not None else portrait_png(),
            driving=driving.read_bytes() if driving else None,
            consent={"subject": "test subject", "method": "written", "obtained_at": "2026-11-24"},
            job_type=job_type,
            options=options,
        )

    return submit


@pytest.fixture()
def local_storage(embedded_settings: Settings) -> LocalStorage:
    return LocalStorage(embedded_settings.local_storage_dir)
