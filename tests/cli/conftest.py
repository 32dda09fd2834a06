"""Fixtures of the client/CLI tests: a real gateway served by uvicorn in a thread (no worker: jobs stay
queued unless a test runs the reference job), sample inputs, and the checkpoint for the embedded stack."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from services.gateway.app import create_app
from shared.media.samples import write_clip, write_portrait
from shared.platform import admin
from shared.platform.db import Database
from shared.platform.processes import free_ports
from shared.platform.settings import Settings
from tests.worker.conftest import tiny_checkpoint as random_tiny_checkpoint  # noqa: F401

SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "goha-tiny.pt"
CONSENT_FLAGS = ["--consent-subject", "Eileen Collins", "--consent-method", "written_release"]


@dataclass(frozen=True)
class Gateway:
    url: str
    api_key: str
    settings: Settings


@contextlib.contextmanager
def serve_gateway(settings: Settings) -> Iterator[Gateway]:
    """The real gateway app on a free loopback port (uvicorn in a thread), with a fresh tenant and key."""
    app = create_app(settings)  # embedded settings migrate the SQLite file here
    db = Database.from_settings(settings)
    tenant = admin.create_tenant(db, f"cli-{secrets.token_hex(4)}")
    _, key = admin.create_key(db, tenant.id, label="cli-tests")
    db.dispose()
    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the gateway did not start")
        time.sleep(0.05)
    try:
        yield Gateway(f"http://127.0.0.1:{port}", key, settings)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    settings = Settings(
        var_dir=tmp_path_factory.mktemp("cli-var"),
        embedded=True,
        queue_name=f"goha-cli-{secrets.token_hex(4)}",
        rate_limit_per_minute=10_000,
    )
    with serve_gateway(settings) as gateway:
        yield gateway


@pytest.fixture(scope="session")
def sample_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The astronaut portrait and a short 25 fps driving clip of that face (with audio)."""
    folder = tmp_path_factory.mktemp("cli-inputs")
    portrait = write_portrait(folder / "portrait.png")
    driving = write_clip(folder / "driving.mp4", 8, fps=25, size=128, audio=True)
    return portrait, driving


@pytest.fixture(scope="session")
def stack_checkpoint(random_tiny_checkpoint: Path) -> Path:  # noqa: F811
    """The shipped trained checkpoint once it exists, else random weights (same architecture)."""
    return SHIPPED_CHECKPOINT if SHIPPED_CHECKPOINT.exists() else random_tiny_checkpoint


@pytest.fixture(scope="session")
def uses_trained_model(stack_checkpoint: Path) -> bool:
    return stack_checkpoint == SHIPPED_CHECKPOINT
