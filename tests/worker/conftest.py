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

from shared.media.hashing import sha256_file
from shared.model.checkpoint import save_checkpoint
from shared.model.config import tiny_config
from shared.model.network import GOHANetwork
from shared.platform import repository
from shared.platform.db import Database
from shared.platform.migrate import upgrade
from shared.platform.provenance import load_signing_key
from shared.platform.settings import Settings
from shared.platform.storage import LocalStorage, ObjectStorage, input_key


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
    """Creates tenant, assets and a queued job the way the gateway does (repository layer)."""
    key = load_signing_key(settings)

    def submit(
        driving: Path | None,
        *,
        job_type: str = "reenact",
        options: dict | None = None,
        portrait: bytes | None = None,
    ) -> str:
        with database.session() as session:
            tenant = repository.create_tenant(session, f"tenant-{np.random.default_rng().integers(1e9)}")
            assets = []
            for kind, blob, media in (
                ("portrait", portrait if portrait is not None else portrait_png(), "image/png"),
                ("driving", driving.read_bytes() if driving else None, "video/mp4"),
            ):
                if blob is None:
                    assets.append(None)
                    continue
                tmp = Path(settings.var_dir) / f"upload-{kind}"
                tmp.write_bytes(blob)
                digest = sha256_file(tmp)
                storage_key = input_key(tenant.id, digest)
                storage.put_file(storage_key, tmp, content_type=media)
                asset, _ = repository.get_or_create_asset(
                    session,
                    tenant_id=tenant.id,
                    sha256=digest,
                    size_bytes=len(blob),
                    media_type=media,
                    kind=kind,
                    storage_key=storage_key,
                    media_info={},
                )
                assets.append(asset)
            job = repository.create_job(
                session,
                tenant_id=tenant.id,
                api_key_id=None,
                job_type=job_type,
                options=options or {},
                consent={"subject": "test subject", "method": "written", "obtained_at": "2026-11-24"},
                portrait=assets[0],
                driving=assets[1],
                idempotency_key=None,
                request_hash="0" * 64,
                signing_key=key,
            )
            return job.id

    return submit


@pytest.fixture()
def local_storage(embedded_settings: Settings) -> LocalStorage:
    return LocalStorage(embedded_settings.local_storage_dir)
