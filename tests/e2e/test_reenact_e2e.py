"""The main job end to end on real servers: gateway (FastAPI) -> Redis -> a real Celery worker process
running ``goha.reenact`` -> Triton (PyTriton) for reconstruct/animate -> SeaweedFS S3 -> PostgreSQL.

Also the fault case: the worker's child is killed mid-job; the job is redelivered and still completes
with exactly one output and one provenance record."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from shared.platform import admin
from shared.platform.db import Database
from shared.platform.models import Job, ProvenanceRecord
from shared.platform.processes import stop_process_group
from shared.platform.provenance import signature_valid
from shared.platform.settings import Settings
from shared.platform.storage import make_storage
from tests.worker.clips import write_clip

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CONSENT = {
    "consent_subject": "Jane Doe",
    "consent_method": "written_release",
    "consent_obtained_at": "2026-11-01T10:00:00Z",
}


def settings_env(settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    """The worker process gets the same settings through the environment (GOHA_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOHA_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, list):
            value = json.dumps(value)  # pydantic-settings reads complex fields as JSON
        env[f"GOHA_{name.upper()}"] = str(value)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def triton(e2e_checkpoint: Path) -> Iterator[Any]:
    from services.inference.server import launch_server

    with launch_server(e2e_checkpoint, profile="tiny", threads=1, max_frames_per_forward=8) as handle:
        yield handle


@pytest.fixture(scope="module")
def e2e_settings(
    goha_postgres_url: str,
    goha_redis_url: str,
    goha_s3_settings: dict[str, Any],
    e2e_checkpoint: Path,
    triton: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    return Settings(
        embedded=False,
        var_dir=tmp_path_factory.mktemp("e2e-var"),
        database_url=goha_postgres_url,
        broker_url=goha_redis_url,
        result_backend=goha_redis_url,
        queue_name=f"goha-e2e-{secrets.token_hex(4)}",
        provenance_signing_key="e2e-tests-signing-key-0123456789abcdef",
        watermark_secret="e2e-watermark-secret-0123456789",
        checkpoint_path=e2e_checkpoint,
        inference_backend="triton",
        triton_url=triton.grpc_url,
        triton_access_token=triton.access_token,
        c2pa_dev_chain_dir=tmp_path_factory.mktemp("c2pa"),
        worker_chunk_frames=8,
        rate_limit_per_minute=100_000,
        **goha_s3_settings,
    )


@pytest.fixture(scope="module")
def worker_process(e2e_settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    log = open(Path(e2e_settings.var_dir) / "worker.log", "wb")  # noqa: SIM115 - closed below
    env = settings_env(e2e_settings, {"GOHA_EMBEDDED": "false"})
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "services.worker.tasks",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "-Q",
            e2e_settings.queue_name,
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield process
    stop_process_group(process, grace_s=30, name="celery worker")
    log.close()


@pytest.fixture(scope="module")
def gateway(
    e2e_settings: Settings, worker_process: Any
) -> Iterator[tuple[TestClient, Database, dict[str, str]]]:
    db = Database.from_settings(e2e_settings)
    tenant = admin.create_tenant(db, f"e2e-{secrets.token_hex(4)}")
    _, key = admin.create_key(db, tenant.id, label="e2e")
    with TestClient(create_app(e2e_settings, db=db, storage=make_storage(e2e_settings))) as client:
        yield client, db, {"Authorization": f"Bearer {key}"}
    db.dispose()


def submit(client: TestClient, headers: dict[str, str], portrait: bytes, driving: bytes, **form: str) -> str:
    response = client.post(
        "/v1/jobs",
        files={
            "portrait": ("portrait.png", portrait, "image/png"),
            "driving_video": ("d.mp4", driving, "video/mp4"),
        },
        data={**CONSENT, **form},
        headers=headers,
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def worker_log_tail(settings: Settings, lines: int = 40) -> str:
    path = Path(settings.var_dir) / "worker.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def wait(
    client: TestClient, headers: dict[str, str], job_id: str, settings: Settings, timeout_s: float = 400
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if body["state"] in ("succeeded", "failed", "cancelled"):
            return body
        if "raised unexpected" in worker_log_tail(settings, 400):
            raise AssertionError(f"the worker crashed:\n{worker_log_tail(settings)}")
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {body}\n{worker_log_tail(settings)}")


@pytest.fixture(scope="module")
def portrait_png() -> bytes:
    from tests.worker.conftest import portrait_png

    return portrait_png()


def test_submit_run_download_verify(
    gateway, e2e_settings, portrait_png, uses_trained_model, tmp_path: Path
) -> None:
    client, db, headers = gateway
    driving = write_clip(tmp_path / "driver.mp4", 12, fps=25, audio=True).read_bytes()
    job_id = submit(client, headers, portrait_png, driving)
    body = wait(client, headers, job_id, e2e_settings)
    assert body["state"] == "succeeded", body

    result = client.get(f"/v1/jobs/{job_id}/result", headers=headers, follow_redirects=False)
    assert result.status_code in (302, 303, 307)
    video = httpx.get(result.headers["location"], timeout=30).content
    out = tmp_path / "out.mp4"
    out.write_bytes(video)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == pytest.approx(25.0)
        assert len(container.streams.audio) == 1
        assert sum(1 for _ in container.decode(video=0)) == 12

    provenance = client.get(f"/v1/jobs/{job_id}/provenance", headers=headers)
    assert provenance.status_code == 200
    with db.session() as session:
        record = session.query(ProvenanceRecord).filter_by(job_id=job_id).one()
        assert signature_valid(record, b"e2e-tests-signing-key-0123456789abcdef")
        assert record.output_sha256 is not None and record.watermark_payload is not None

    verify = client.post("/v1/verify", files={"video": ("out.mp4", video, "video/mp4")}, headers=headers)
    assert verify.status_code == 200, verify.text
    report = verify.json()
    assert report["status"] == "checked", report
    assert report["manifest"]["valid"] is True, report
    assert report["manifest"]["job_id"] == job_id, report
    if uses_trained_model:
        assert report["watermark"]["found"] is True, report
        assert report["job_id"] == job_id, report
        assert report["checks"] == {
            "provenance_signature_valid": True,
            "file_is_exact_output": True,
            "manifest_names_same_job": True,
        }, report


def test_worker_child_killed_mid_job_still_completes_once(
    gateway, e2e_settings, worker_process, portrait_png, tmp_path: Path
) -> None:
    client, db, headers = gateway
    driving = write_clip(tmp_path / "driver.mp4", 48, fps=25, audio=False).read_bytes()
    job_id = submit(client, headers, portrait_png, driving)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if body["state"] == "running" and (body.get("progress") or {}).get("frames_done", 0) > 0:
            break
        time.sleep(0.2)
    children = subprocess.run(
        ["pgrep", "-P", str(worker_process.pid)], capture_output=True, text=True
    ).stdout.split()
    assert children, "the worker has no child process to kill"
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)

    body = wait(client, headers, job_id, e2e_settings)
    assert body["state"] == "succeeded", body
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job.attempts >= 1
        assert session.query(ProvenanceRecord).filter_by(job_id=job_id).count() == 1
        tenant_id = job.tenant_id
        result_key = job.result_key
    # One output object: the claim that finished wrote it (result-<claim>.mp4); the killed claim's
    # partial output, if any, is gone.
    storage = make_storage(e2e_settings)
    assert storage.list_keys(f"tenants/{tenant_id}/jobs/{job_id}/") == [result_key]
    assert result_key.rsplit("/", 1)[-1].startswith("result-")
