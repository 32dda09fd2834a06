"""The one configuration object of the platform (gateway, worker, reconciler, CLI).

Every field is read from the environment with the ``GOHA_`` prefix (``GOHA_DATABASE_URL``,
``GOHA_STORAGE_BACKEND``...). The defaults are the *embedded* mode: one machine, nothing to install —
a SQLite file, Celery's filesystem transport and a local storage directory, all under ``./var``.
Production sets PostgreSQL / Redis / S3 URLs, ``GOHA_EMBEDDED=false`` and ``GOHA_PRODUCTION=true`` (then
every server process refuses to start on an embedded default, a placeholder or a short secret:
``shared.platform.production``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


# Audio codecs a driving clip may carry (GOHA_ALLOWED_AUDIO_CODECS); FFmpeg decoder names.
DEFAULT_AUDIO_CODECS: tuple[str, ...] = (
    "aac",
    "mp3",
    "opus",
    "vorbis",
    "flac",
    "alac",
    "ac3",
    "pcm_s16le",
    "pcm_s16be",
    "pcm_s24le",
    "pcm_s24be",
    "pcm_f32le",
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GOHA_", extra="ignore", validate_default=True)

    # -- mode and places -------------------------------------------------------------------------------
    embedded: bool = True  # single machine: streams results instead of redirecting, may auto-migrate
    # Production mode (set by the app image, compose and k8s): gateway, worker and reconciler refuse to
    # start with an embedded default, a placeholder or a short secret (shared.platform.production).
    production: bool = False
    var_dir: Path = Path("var")  # root of every embedded default below

    # -- database --------------------------------------------------------------------------------------
    database_url: str = ""  # "" -> sqlite:///<var_dir>/goha.sqlite3
    db_pool_size: int = 5
    db_max_overflow: int = 15
    auto_migrate: bool | None = None  # None -> migrate on gateway start only in embedded mode

    # -- queue -----------------------------------------------------------------------------------------
    broker_url: str = ""  # "" -> filesystem:// under <var_dir>/broker
    result_backend: str = ""  # "" -> db+sqlite:///<var_dir>/celery-results.sqlite3
    broker_folder: Path | None = None  # filesystem transport only; None -> <var_dir>/broker
    queue_name: str = "goha"  # tests use a unique name so parallel runs never steal each other's tasks
    broker_connect_timeout_s: float = 3.0
    reconcile_stale_after_s: float = 300.0  # a job queued this long without starting is re-enqueued
    reconcile_max_enqueues: int = 20  # after this many enqueues without a start the job fails
    reconcile_interval_s: float = 60.0

    # -- object storage --------------------------------------------------------------------------------
    storage_backend: Literal["local", "s3"] = "local"
    local_storage_dir: Path | None = None  # None -> <var_dir>/storage
    s3_endpoint: str = "127.0.0.1:9000"  # host:port as the gateway/worker reach it
    s3_public_endpoint: str | None = (
        None  # host:port clients reach, for presigned URLs (default: s3_endpoint)
    )
    s3_access_key: str = "minioadmin"
    s3_secret_key: SecretStr = SecretStr("minioadmin")
    s3_bucket: str = "goha"
    s3_secure: bool = False  # TLS to s3_endpoint (the internal connection)
    # Scheme of presigned URLs (clients reach s3_public_endpoint); None: as s3_secure.
    s3_public_secure: bool | None = None
    s3_region: str = "us-east-1"  # fixed so presigning never needs a network round trip
    presign_ttl_s: int = 900

    # -- input limits (every refusal is a 4xx with a code) ----------------------------------------------
    max_upload_bytes: int = 200 * MiB  # per file
    max_image_pixels: int = 25_000_000  # checked from the header, before any decode
    min_image_side: int = 64
    max_video_seconds: float = 300.0
    max_video_fps: float = 60.0
    max_video_width: int = 1920
    max_video_height: int = 1920
    max_video_frames: int = 18_000
    allowed_video_codecs: list[str] = Field(
        default_factory=lambda: ["h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg"]
    )
    # Every audio stream of a driving clip must use one of these (the worker decodes audio it cannot copy
    # into the MP4 as is); a clip with any other audio codec is refused at admission.
    allowed_audio_codecs: list[str] = Field(default_factory=lambda: list(DEFAULT_AUDIO_CODECS))
    max_output_size: int = 1024
    max_form_fields: int = 64
    max_form_field_bytes: int = 64 * 1024  # one text field of a multipart form
    # Upload bodies read at once (per gateway process): over either cap a request waits up to
    # upload_slot_wait_s with its body unread, then is a 429 too_many_uploads. Parts are streamed to
    # upload_dir (None: the system temp dir), one file per part; an upload that sends nothing for
    # upload_idle_timeout_s is a 408 upload_timeout.
    max_concurrent_uploads: int = Field(32, ge=1)
    max_concurrent_uploads_per_key: int = Field(4, ge=1)
    upload_slot_wait_s: float = Field(10.0, ge=0)
    upload_idle_timeout_s: float = Field(30.0, gt=0)
    upload_dir: Path | None = None

    # -- rate limits -----------------------------------------------------------------------------------
    rate_limit_per_minute: int = 120  # per API key, unless the key carries its own limit
    rate_limit_backend: Literal["memory", "redis"] = "memory"
    rate_limit_redis_url: str | None = None  # None -> broker_url when it is a redis:// URL
    # Queued + running jobs one tenant may have at once (a new submission over it is a 429
    # too_many_active_jobs, nothing stored), so one tenant cannot fill the queue for all. None: no limit.
    max_active_jobs_per_tenant: int | None = Field(None, ge=1)

    # -- provenance, watermark, C2PA -------------------------------------------------------------------
    provenance_signing_key: SecretStr | None = None  # HMAC secret; wins over the path
    provenance_key_path: Path | None = None  # None -> <var_dir>/provenance.key (created in embedded mode)
    watermark_secret: SecretStr | None = None  # HMAC key of the 32-bit watermark payload (>= 16 bytes)
    c2pa_trust_anchors_path: Path | None = None  # PEM roots a manifest must chain to for "trusted"
    verifier: Literal["auto", "none"] = "auto"  # "auto": use shared.media.verify when importable

    # -- model / inference (read by the worker and inference services) ---------------------------------
    model_profile: str = "tiny"
    checkpoint_path: Path | None = None
    triton_url: str = "127.0.0.1:8000"
    inference_backend: Literal["in_process", "triton"] = "in_process"  # embedded default: no server needed
    triton_access_token: SecretStr | None = None  # PyTriton's token for the shared-memory API
    # Bearer token the gateway's /metrics requires (Authorization: Bearer <token>); Prometheus reads it from
    # a file (deploy/prometheus). None: /metrics is open (embedded mode); a production gateway requires it.
    metrics_token: SecretStr | None = None
    morphable_model: str | None = None  # None: the shipped procedural head; else a BFM_model_front.mat path
    # CPU in-process backend only: glibc keeps freed activations for reuse (far fewer page faults, much
    # faster network calls) but the resident size then stays at the largest call's peak.
    retain_freed_memory: bool = False

    # Days after which the retention pass (``admin purge``, a daily CronJob in k8s) erases a finished
    # job's media and unused uploads; records and signed provenance stay. None: keep until deleted.
    retention_days: float | None = Field(None, gt=0)

    # -- webhooks (shared.platform.webhooks) -----------------------------------------------------------
    # Total deadline of one attempt: DNS, connect, TLS, request and the answer's status line together.
    webhook_timeout_s: float = Field(10.0, gt=0)
    webhook_max_attempts: int = Field(8, ge=1)  # first try + retries 30 s, 1, 2, 4... min apart
    webhook_interval_s: float = Field(2.0, gt=0)  # the dispatcher's pass (reconciler, goha up)
    webhook_concurrency: int = Field(8, ge=1)  # deliveries in flight at once per dispatcher
    # Ports a callback URL may name besides 443 (and 80 where http is allowed).
    webhook_allowed_ports: list[int] = Field(default_factory=list)
    # None: allowed in the embedded (single machine) mode only. Production keeps https, public hosts
    # and the allowed ports.
    webhook_allow_http: bool | None = None
    webhook_allow_private_hosts: bool | None = None
    webhook_allow_any_port: bool | None = None

    # -- worker ----------------------------------------------------------------------------------------
    worker_chunk_frames: int = 16  # driving frames decoded, fitted and animated together (bounds memory)
    max_missing_face_ratio: float = 0.5  # more driving frames without a face than this fails the job
    # Transient failures (inference or object storage unreachable) are retried this many times, waiting
    # 1, 2, 4... s capped at worker_retry_max_delay_s, before the job fails with the failure's code.
    # The default rides out ~2 minutes of outage; raise both to outlast longer ones.
    worker_retries: int = Field(5, ge=0)
    worker_retry_max_delay_s: float = Field(60.0, gt=0)
    # A running job is leased to its worker, which renews the lease every worker_lease_s / 4; a job
    # whose lease expired is recovered by the reconciler. A job started worker_max_attempts times
    # without finishing (its worker crashed, ran out of memory or was killed) fails with worker_crashed.
    worker_lease_s: float = Field(120.0, gt=0)
    # Untrusted videos are decoded once in a child process with these bounds before anything else
    # decodes them (worker: the driving clip; gateway: POST /v1/verify): shared.platform.mediasandbox.
    decode_sandbox_memory_mb: int = Field(2048, ge=256)
    decode_sandbox_timeout_s: float = Field(300.0, gt=0)
    worker_max_attempts: int = Field(3, ge=1)
    c2pa_certificate_chain_path: Path | None = None  # production signer: leaf (+ intermediates) PEM
    c2pa_private_key_path: Path | None = None  # production signer: PKCS#8 PEM key
    # Embedded/dev signing chain, generated on first run; None -> <var_dir>/c2pa.
    c2pa_dev_chain_dir: Path | None = None

    # -- HTTP ------------------------------------------------------------------------------------------
    public_base_url: str = ""  # prefix for absolute links; "" -> links are relative paths
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        var = self.var_dir
        if not self.database_url:
            self.database_url = f"sqlite:///{var / 'goha.sqlite3'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.result_backend:
            self.result_backend = f"db+sqlite:///{var / 'celery-results.sqlite3'}"
        if self.broker_folder is None:
            self.broker_folder = var / "broker"
        if self.local_storage_dir is None:
            self.local_storage_dir = var / "storage"
        if self.provenance_key_path is None:
            self.provenance_key_path = var / "provenance.key"
        if self.auto_migrate is None:
            self.auto_migrate = self.embedded
        return self

    # -- derived ---------------------------------------------------------------------------------------
    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def max_request_bytes(self) -> int:
        """Whole multipart body: two files plus form fields and boundaries."""
        return 2 * self.max_upload_bytes + MiB

    @property
    def effective_rate_limit_redis_url(self) -> str | None:
        if self.rate_limit_redis_url:
            return self.rate_limit_redis_url
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://")) else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment (cached: call ``get_settings.cache_clear()`` in tests)."""
    return Settings()
