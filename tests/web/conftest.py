"""Web page rig: the real gateway under uvicorn on a loopback port, a Celery worker thread running the
reference ``goha.reenact`` task (it drives the job through the real state machine and stores the driving
clip as the result), a tenant with a key, and headless Debian ``chromium`` driven over CDP.

Two deployments: embedded (SQLite, filesystem broker, local storage: the result is streamed) and
production-like (PostgreSQL, Redis, SeaweedFS S3: the result is a presigned URL on another origin)."""

from __future__ import annotations

import io
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from services.gateway.app import create_app
from services.worker.reference import register_reference_task
from shared.media.synthetic import make_video_file
from shared.platform import admin
from shared.platform.db import Database
from shared.platform.processes import free_ports
from shared.platform.queue import make_celery
from shared.platform.settings import Settings
from tests.support.embedded_worker import embedded_worker
from tests.web.cdp import Browser, chromium_path, launch


@dataclass(frozen=True)
class WebStack:
    base_url: str
    key: str
    settings: Settings

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="session")
def chromium_bin() -> str:
    found = chromium_path()
    if found is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: a missing browser there is a broken pipeline, not a skip
        pytest.skip(message)
    return found


class ServerThread:
    """uvicorn in a daemon thread, stopped through ``should_exit`` like a SIGTERM would."""

    def __init__(self, app: object, port: int) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="web-gateway", daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@contextmanager
def running_stack(settings: Settings) -> Iterator[WebStack]:
    """The gateway on a free loopback port plus a reference worker thread on the same queue and storage."""
    app = create_app(settings)  # migrates the database in embedded mode
    db = Database(settings.database_url)
    tenant = admin.create_tenant(db, f"web-{secrets.token_hex(3)}")
    _row, key = admin.create_key(db, tenant.id, label="web-tests")
    db.dispose()
    worker_app = make_celery(settings)
    register_reference_task(worker_app, settings)
    port = free_ports(1)[0]
    # Not Celery's start_worker: tests/gateway's session worker is still running in a full session, and
    # start_worker's worker would share its event loop and task registry (see embedded_worker).
    with ServerThread(app, port), embedded_worker(worker_app, stop_timeout_s=120):
        yield WebStack(f"http://127.0.0.1:{port}", key, settings)


@pytest.fixture(scope="session")
def web_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    """Embedded defaults (SQLite, filesystem broker, local storage: results are streamed), with the real
    watermark/C2PA detector behind /v1/verify."""
    settings = Settings(var_dir=tmp_path_factory.mktemp("web-var"), verifier="auto", queue_name="goha-web")
    with running_stack(settings) as stack:
        yield stack


@pytest.fixture(scope="session")
def s3_web_stack(
    goha_postgres_url: str,
    goha_redis_url: str,
    goha_queue_name: str,
    goha_s3_settings: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WebStack]:
    """Production-like: PostgreSQL, Redis broker, SeaweedFS S3 — results are presigned URLs on another origin."""
    settings = Settings(
        embedded=False,
        var_dir=tmp_path_factory.mktemp("web-s3-var"),
        database_url=goha_postgres_url,
        broker_url=goha_redis_url,
        result_backend=goha_redis_url,
        queue_name=f"{goha_queue_name}-web",
        provenance_signing_key="web-tests-signing-key-0123456789abcdef",
        verifier="none",
        **goha_s3_settings,
    )
    with running_stack(settings) as stack:
        yield stack


@pytest.fixture
def api(web_stack: WebStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=web_stack.base_url, headers=web_stack.headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real face photo (scikit-image's astronaut, cropped to the head) and a small H.264 clip."""
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("web-media")
    portrait = folder / "portrait.png"
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()[20:276, 120:376]).save(buffer, format="PNG")
    portrait.write_bytes(buffer.getvalue())
    driving = make_video_file(folder / "driving.mp4", frames=24, fps=12, size=(160, 160), faststart=True)
    return {"portrait": portrait, "driving": driving}


@pytest.fixture
def browser(chromium_bin: str) -> Iterator[Browser]:
    with launch(chromium_bin) as opened:
        opened.open_page()
        yield opened


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web-screenshots")
