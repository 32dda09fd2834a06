"""Production mode (``GOHA_PRODUCTION=true``, set by the app image, compose and k8s): a process refuses
to start while any setting still has an embedded default, a placeholder or a short secret, and says
which (every problem at once).

The embedded defaults are fine on one machine and wrong anywhere else: each container would make its
own SQLite database, filesystem queue, local storage, provenance key and dev C2PA chain. Placeholders
are the ``change-me-*`` values of ``.env.example`` (and the like); a secret shorter than
``MIN_SECRET_CHARS`` (``MIN_PROVENANCE_KEY_CHARS`` for the provenance HMAC key) is refused too.

Roles: every process checks the shared settings; the worker also needs its production C2PA signer;
the internet-facing gateway must *not* be given the C2PA private key (it verifies with the trust
anchors only).
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from shared.platform.errors import ConfigurationError
from shared.platform.settings import Settings

Role = Literal["gateway", "worker", "reconciler", "admin"]

MIN_SECRET_CHARS = 16
MIN_PROVENANCE_KEY_CHARS = 32
PLACEHOLDER = re.compile(
    r"change[-_]?me|replace[-_]?me|placeholder|your[-_]?(secret|password|key)|^(secret|password|minioadmin)$",
    re.IGNORECASE,
)


def _value(secret: SecretStr | str | None) -> str | None:
    if secret is None:
        return None
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def _secret(name: str, secret: SecretStr | str | None, *, required: bool, min_chars: int) -> list[str]:
    value = _value(secret)
    env = f"GOHA_{name.upper()}"
    if not value:
        return [f"{env} is not set"] if required else []
    if PLACEHOLDER.search(value):
        return [f"{env} is a placeholder ({value[:12]}...): generate one, e.g. `openssl rand -hex 24`"]
    if len(value) < min_chars:
        return [f"{env} is shorter than {min_chars} characters"]
    return []


def _url_password(name: str, url: str) -> list[str]:
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    if password and PLACEHOLDER.search(password):
        return [f"GOHA_{name.upper()} holds a placeholder password ({password[:12]}...)"]
    return []


def production_problems(settings: Settings, role: Role) -> list[str]:
    """Every reason ``settings`` is not fit for production, in words naming the variable."""
    problems: list[str] = []
    if settings.embedded:
        problems.append("GOHA_EMBEDDED is true (the single-machine mode)")
    if settings.is_sqlite:
        problems.append("GOHA_DATABASE_URL is SQLite (the embedded default): use PostgreSQL")
    if settings.broker_url.startswith("filesystem://"):
        problems.append("GOHA_BROKER_URL is the filesystem transport (the embedded default): use Redis")
    if settings.result_backend.startswith(("db+sqlite", "sqlite")):
        problems.append("GOHA_RESULT_BACKEND is SQLite (the embedded default)")
    if settings.storage_backend == "local":
        problems.append("GOHA_STORAGE_BACKEND is local (the embedded default): use s3")
    else:
        if (
            settings.s3_access_key == "minioadmin"
            or settings.s3_secret_key.get_secret_value() == "minioadmin"
        ):
            problems.append("GOHA_S3_ACCESS_KEY / GOHA_S3_SECRET_KEY are MinIO's default root credentials")
        problems += _secret(
            "s3_secret_key", settings.s3_secret_key, required=True, min_chars=MIN_SECRET_CHARS
        )
    default_key_file = settings.provenance_key_path in (None, settings.var_dir / "provenance.key")
    if settings.provenance_signing_key is None and default_key_file:
        problems.append(
            "GOHA_PROVENANCE_SIGNING_KEY is not set (each process would use its own key file under GOHA_VAR_DIR)"
        )
    problems += _secret(
        "provenance_signing_key",
        settings.provenance_signing_key,
        required=False,
        min_chars=MIN_PROVENANCE_KEY_CHARS,
    )
    problems += _secret(
        "watermark_secret", settings.watermark_secret, required=role == "worker", min_chars=MIN_SECRET_CHARS
    )
    problems += _secret(
        "triton_access_token",
        settings.triton_access_token,
        required=role == "worker" and settings.inference_backend == "triton",
        min_chars=MIN_SECRET_CHARS,
    )
    problems += _secret(
        "metrics_token", settings.metrics_token, required=role == "gateway", min_chars=MIN_SECRET_CHARS
    )
    for name in ("database_url", "broker_url", "result_backend", "rate_limit_redis_url"):
        problems += _url_password(name, getattr(settings, name) or "")
    if role == "worker":
        if not (settings.c2pa_certificate_chain_path and settings.c2pa_private_key_path):
            problems.append(
                "GOHA_C2PA_CERTIFICATE_CHAIN_PATH and GOHA_C2PA_PRIVATE_KEY_PATH are not both set "
                "(the worker would sign with a generated development chain)"
            )
        if settings.c2pa_dev_chain_dir is not None:
            problems.append("GOHA_C2PA_DEV_CHAIN_DIR is set (a development signing chain)")
    if role == "gateway" and settings.c2pa_private_key_path is not None:
        problems.append(
            "GOHA_C2PA_PRIVATE_KEY_PATH is set: the gateway signs nothing and must not hold the C2PA "
            "private key (give it GOHA_C2PA_TRUST_ANCHORS_PATH only)"
        )
    return problems


def require_production_ready(settings: Settings, role: Role) -> None:
    """In production mode, raise ``ConfigurationError`` (code ``configuration_error``) listing every
    problem; outside it, do nothing."""
    if not settings.production:
        return
    problems = production_problems(settings, role)
    if problems:
        raise ConfigurationError(
            f"GOHA_PRODUCTION is true and the {role} refuses to start: " + "; ".join(problems)
        )
