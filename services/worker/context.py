"""Builds the per-process resources of a worker from the settings (lazily, after Celery forks)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from services.inference.backend import InferenceBackend
from services.worker.pipeline import PipelineConfig, PipelineContext
from services.worker.settings import WorkerOutputSettings
from shared.face.morphable import load_morphable_model
from shared.media.c2pa_sign import SigningChain, ensure_dev_chain, load_signing_chain
from shared.media.video import DecodeLimits, set_decode_limits
from shared.platform.db import Database
from shared.platform.errors import ConfigurationError
from shared.platform.mediasandbox import SandboxLimits, check_video
from shared.platform.production import require_production_ready
from shared.platform.provenance import load_signing_key
from shared.platform.settings import Settings
from shared.platform.storage import make_storage

log = logging.getLogger("goha.worker")


def default_checkpoint(settings: Settings) -> Path:
    """The configured checkpoint, else the tiny checkpoint the project ships."""
    if settings.checkpoint_path is not None:
        return Path(settings.checkpoint_path)
    return Path(__file__).resolve().parents[2] / "models" / f"goha-{settings.model_profile}.pt"


def make_inference(settings: Settings) -> InferenceBackend:
    if settings.inference_backend == "triton":
        from services.inference.client import InferenceClient

        token = settings.triton_access_token.get_secret_value() if settings.triton_access_token else None
        return InferenceClient(settings.triton_url, access_token=token)
    from services.inference.engine import InProcessInference

    # Before the checkpoint loads, so its tensors come from the heap kept from then on; the
    # in-process backend runs the network on CPU.
    from shared.model.cpu_memory import retain_for_serving

    retain_for_serving(settings.retain_freed_memory, "cpu")
    return InProcessInference.from_checkpoint(default_checkpoint(settings), profile=settings.model_profile)


def watermark_secret(settings: Settings, provenance_key: bytes) -> bytes:
    """The watermark payload key: configured, or derived from the provenance key (one secret to manage)."""
    if settings.watermark_secret is not None:
        return settings.watermark_secret.get_secret_value().encode("utf-8")
    return hmac.new(provenance_key, b"goha-watermark-secret-v1", hashlib.sha256).digest()


def signing_chain(settings: Settings) -> SigningChain:
    """Production chain from settings; otherwise a dev chain generated on first run (embedded mode, or
    when a dev chain directory is configured explicitly)."""
    if settings.c2pa_certificate_chain_path and settings.c2pa_private_key_path:
        return load_signing_chain(
            settings.c2pa_certificate_chain_path,
            settings.c2pa_private_key_path,
            settings.c2pa_trust_anchors_path,
        )
    if not settings.embedded and settings.c2pa_dev_chain_dir is None:
        raise ConfigurationError(
            "no C2PA signing chain: set GOHA_C2PA_CERTIFICATE_CHAIN_PATH and GOHA_C2PA_PRIVATE_KEY_PATH"
        )
    return ensure_dev_chain(settings.c2pa_dev_chain_dir or settings.var_dir / "c2pa")


def build_context(settings: Settings) -> PipelineContext:
    require_production_ready(settings, "worker")  # GOHA_PRODUCTION: no embedded default, no placeholder
    database = Database.from_settings(settings)
    inference = make_inference(settings)
    provenance_key = load_signing_key(settings)
    image_size = _image_size(inference)
    output = WorkerOutputSettings()
    # Every decoded frame is held to the admission limits (a stream may change size after its header).
    set_decode_limits(DecodeLimits(settings.max_video_width, settings.max_video_height))
    sandbox = SandboxLimits.from_settings(settings)
    log.info("worker ready", extra={"model_version": inference.model_version(), "image_size": image_size})
    return PipelineContext(
        session_factory=database.sessionmaker,
        storage=make_storage(settings),
        inference=inference,
        face_model=load_morphable_model(settings.morphable_model),
        image_size=image_size,
        signing_chain=signing_chain(settings),
        watermark_secret=watermark_secret(settings, provenance_key),
        provenance_key=provenance_key,
        config=PipelineConfig(
            chunk_frames=settings.worker_chunk_frames,
            max_missing_face_ratio=settings.max_missing_face_ratio,
            paste_back_max_side=output.paste_back_max_side,
            allowed_audio_codecs=frozenset(c.lower() for c in settings.allowed_audio_codecs),
            expression_supersample=output.expression_supersample,
        ),
        check_video=lambda path: check_video(path, sandbox),
    )


def _image_size(inference: InferenceBackend) -> int:
    return int(inference.contract.shapes.image_size)  # type: ignore[attr-defined]
