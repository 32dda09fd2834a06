"""Production mode (issue 16, items 7 and 8): with ``GOHA_PRODUCTION=true`` (the app image, compose and
k8s set it) gateway, worker and reconciler refuse to start on an embedded default, a placeholder or a
short secret, and name each; the gateway also refuses the C2PA private key."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from shared.platform.errors import ConfigurationError
from shared.platform.production import production_problems, require_production_ready
from shared.platform.settings import Settings
from tests.deploy import deployfiles as df

ROLES = {"gateway": "gateway", "worker": "worker", "reconciler": "reconciler"}


def _filled(env_example: Mapping[str, str]) -> dict[str, str]:
    """.env as an operator following the instructions makes it: every change-me replaced."""
    return {k: (secrets.token_hex(24) if "change-me" in v else v) for k, v in env_example.items()}


def test_every_deployment_runs_in_production_mode(
    compose: dict[str, Any],
    k8s: list[df.Resource],
    settings_from_env: Callable[[Mapping[str, str]], Settings],
) -> None:
    for name in ROLES:
        assert settings_from_env(df.compose_environment(compose["services"][name])).production, name
    maps = df.config_maps(k8s)
    assert maps["goha-config"]["GOHA_PRODUCTION"] == "true"
    dockerfile = (df.DEPLOY / "docker" / "app.Dockerfile").read_text()
    assert "GOHA_PRODUCTION=true" in dockerfile  # a container started from the image is strict by default


def test_the_env_example_placeholders_are_refused_by_name(
    env_example: dict[str, str], settings_from_env: Callable[[Mapping[str, str]], Settings]
) -> None:
    compose = df.load_compose(env_example)
    for service, role in ROLES.items():
        settings = settings_from_env(df.compose_environment(compose["services"][service]))
        with pytest.raises(ConfigurationError) as refused:
            require_production_ready(settings, role)  # type: ignore[arg-type]
        message = str(refused.value)
        assert refused.value.code == "configuration_error"
        for name in (
            "GOHA_PROVENANCE_SIGNING_KEY",
            "GOHA_S3_SECRET_KEY",
            "GOHA_DATABASE_URL",
            "GOHA_BROKER_URL",
        ):
            assert f"{name} " in message and "placeholder" in message, (service, name, message)
        if role == "gateway":
            assert "GOHA_METRICS_TOKEN is a placeholder" in message
        if role == "worker":
            assert "GOHA_WATERMARK_SECRET is a placeholder" in message
            assert "GOHA_TRITON_ACCESS_TOKEN is a placeholder" in message


def test_filled_secrets_pass_in_compose_and_k8s(
    env_example: dict[str, str],
    k8s: list[df.Resource],
    settings_from_env: Callable[[Mapping[str, str]], Settings],
) -> None:
    compose = df.load_compose(_filled(env_example))
    for service, role in ROLES.items():
        settings = settings_from_env(df.compose_environment(compose["services"][service]))
        assert production_problems(settings, role) == [], service  # type: ignore[arg-type]
    maps = df.config_maps(k8s)
    deployments = {r.name: r for r in k8s if r.kind == "Deployment"}
    for role in ROLES:
        spec = df.pod_spec(deployments[f"goha-{role}"])
        assert spec is not None
        settings = settings_from_env(df.container_env(spec["containers"][0], maps))
        assert production_problems(settings, role) == [], role  # type: ignore[arg-type]


def _strong(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "embedded": False,
        "production": True,
        "database_url": "postgresql+psycopg://goha:" + "p" * 24 + "@db/goha",
        "broker_url": "redis://:" + "r" * 24 + "@redis:6379/0",
        "result_backend": "redis://:" + "r" * 24 + "@redis:6379/1",
        "storage_backend": "s3",
        "s3_access_key": "goha-app",
        "s3_secret_key": "s" * 32,
        "provenance_signing_key": "k" * 40,
        "watermark_secret": "w" * 32,
        "triton_access_token": "t" * 32,
        "metrics_token": "m" * 32,
        "inference_backend": "triton",
        "c2pa_certificate_chain_path": "/run/secrets/chain.pem",
        "c2pa_private_key_path": "/run/secrets/signer.key",
    }
    values.update(overrides)
    return Settings(**values)


def test_short_secrets_default_credentials_and_the_gateways_private_key_are_named() -> None:
    worker = _strong(provenance_signing_key="k" * 20, watermark_secret="short-secret")
    problems = " | ".join(production_problems(worker, "worker"))
    assert "GOHA_PROVENANCE_SIGNING_KEY is shorter than 32" in problems
    assert "GOHA_WATERMARK_SECRET is shorter than 16" in problems
    root = _strong(s3_access_key="minioadmin", s3_secret_key="minioadmin")
    assert any("MinIO's default root credentials" in p for p in production_problems(root, "reconciler"))
    unsigned = _strong(c2pa_certificate_chain_path=None, c2pa_private_key_path=None)
    assert any("development chain" in p for p in production_problems(unsigned, "worker"))
    gateway = production_problems(_strong(), "gateway")
    assert len(gateway) == 1 and "must not hold the C2PA private key" in gateway[0]
    assert (
        production_problems(_strong(c2pa_private_key_path=None, c2pa_certificate_chain_path=None), "gateway")
        == []
    )
    assert production_problems(_strong(), "worker") == []


def test_a_production_gateway_needs_a_metrics_token() -> None:
    """Issue 16 (Low): /metrics is on the internet-facing API port; production never serves it open."""
    problems = production_problems(_strong(metrics_token=None, c2pa_private_key_path=None), "gateway")
    assert problems == ["GOHA_METRICS_TOKEN is not set"]
    short = production_problems(_strong(metrics_token="m" * 8, c2pa_private_key_path=None), "gateway")
    assert short == ["GOHA_METRICS_TOKEN is shorter than 16 characters"]
    assert production_problems(_strong(metrics_token=None), "worker") == []  # only the gateway serves it


def test_tests_and_the_embedded_mode_are_not_production() -> None:
    assert Settings().production is False
    require_production_ready(Settings(), "gateway")  # nothing enforced outside production mode


def test_the_gateway_app_refuses_to_start_in_production_mode_with_embedded_defaults(tmp_path: Path) -> None:
    from services.gateway.app import create_app

    with pytest.raises(ConfigurationError) as refused:
        create_app(Settings(var_dir=tmp_path, production=True))
    message = str(refused.value)
    for name in ("GOHA_EMBEDDED", "GOHA_DATABASE_URL", "GOHA_BROKER_URL", "GOHA_STORAGE_BACKEND"):
        assert name in message
    assert not (tmp_path / "goha.sqlite3").exists()  # refused before anything was made


def test_a_reconciler_process_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOHA_")}
    env.update({"GOHA_PRODUCTION": "true", "GOHA_EMBEDDED": "false", "GOHA_VAR_DIR": str(tmp_path)})
    run = subprocess.run(
        [sys.executable, "-m", "services.reconciler", "--once"],
        cwd=df.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    for name in (
        "GOHA_DATABASE_URL is SQLite",
        "GOHA_STORAGE_BACKEND is local",
        "GOHA_PROVENANCE_SIGNING_KEY",
    ):
        assert name in run.stderr, run.stderr[-2000:]
    assert not list(tmp_path.iterdir())  # no database, key or queue folder made
