"""One job written and run in process, without the gateway or a queue (benches, tests, tools).

``submit_local_job`` writes a tenant, the two input assets and a queued job the way the gateway does
(the repository layer; the gateway's upload checks are its own and are not repeated here), and
``run_local_job`` runs it through the worker pipeline on an embedded (SQLite + local storage) stack.
The benches that measure the served output (``bench_quality``, ``bench_watermark``) and the worker
tests use these, so there is one way to make a job outside the gateway.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.media.hashing import sha256_file
from shared.platform import repository
from shared.platform.provenance import load_signing_key
from shared.platform.settings import Settings
from shared.platform.storage import ObjectStorage, input_key

# The consent record of jobs made on the bundled public-domain portrait (NASA's astronaut photograph).
ASTRONAUT_CONSENT = {
    "subject": "NASA astronaut portrait (public domain)",
    "method": "self",
    "obtained_at": "2026-01-01",
}


def submit_local_job(
    settings: Settings,
    session_factory: Any,
    storage: ObjectStorage,
    *,
    tenant_name: str,
    portrait: bytes,
    driving: bytes | None,
    consent: dict[str, str],
    job_type: str = "reenact",
    options: dict | None = None,
) -> str:
    """A new tenant, its input assets and a queued job; returns the job id. ``portrait`` is an encoded
    image (PNG), ``driving`` an MP4's bytes (``None`` for job types without one)."""
    signing_key = load_signing_key(settings)
    with session_factory() as session:
        tenant = repository.create_tenant(session, tenant_name)
        assets = []
        for kind, blob, media in (("portrait", portrait, "image/png"), ("driving", driving, "video/mp4")):
            if blob is None:
                assets.append(None)
                continue
            upload = Path(settings.var_dir) / f"upload-{kind}"
            upload.write_bytes(blob)
            digest = sha256_file(upload)
            key = input_key(tenant.id, digest)
            storage.put_file(key, upload, content_type=media)
            asset, _ = repository.get_or_create_asset(
                session, tenant_id=tenant.id, sha256=digest, size_bytes=len(blob), media_type=media,
                kind=kind, storage_key=key, media_info={},
            )  # fmt: skip
            assets.append(asset)
        job = repository.create_job(
            session, tenant_id=tenant.id, api_key_id=None, job_type=job_type, options=options or {},
            consent=consent, portrait=assets[0], driving=assets[1], idempotency_key=None,
            request_hash="0" * 64, signing_key=signing_key,
        )  # fmt: skip
        job_id = str(job.id)
        session.commit()
    return job_id


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class LocalJob:
    job_id: str
    result_key: str
    timings: dict[str, float]
    context: Any  # the WorkerContext it ran in (storage, sessions)


def run_local_job(
    workdir: Path,
    checkpoint: Path,
    portrait: np.ndarray,
    driving: Path,
    options: dict,
    *,
    tenant_name: str,
    consent: dict[str, str] = ASTRONAUT_CONSENT,
) -> LocalJob:
    """Submit one job on an embedded stack under ``workdir`` and run it with the worker pipeline
    (in-process inference); raises ``RuntimeError`` with the job's error when it does not succeed."""
    from services.worker.context import build_context
    from services.worker.pipeline import ReenactmentPipeline
    from shared.platform.migrate import upgrade
    from shared.platform.models import Job

    settings = Settings(
        var_dir=workdir / "var", embedded=True, checkpoint_path=checkpoint, inference_backend="in_process"
    )
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    context = build_context(settings)
    job_id = submit_local_job(
        settings, context.session_factory, context.storage, tenant_name=tenant_name,
        portrait=png_bytes(portrait), driving=driving.read_bytes(), consent=consent, options=options,
    )  # fmt: skip
    state = ReenactmentPipeline(context).run(job_id)
    with context.session_factory() as session:
        job = session.get(Job, job_id)
        if state != "succeeded":
            raise RuntimeError(f"the job {state}: {job.error_code}: {job.error_message}")
        return LocalJob(
            job_id=job_id,
            result_key=job.result_key,
            timings={k: float(v) for k, v in (job.timings or {}).items()},
            context=context,
        )
