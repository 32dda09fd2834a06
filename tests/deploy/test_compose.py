"""docker-compose.yml and .env.example, validated without a Docker engine.

The file is resolved the way ``docker compose --env-file .env.example config`` resolves it, checked against
the Compose Specification schema, and cross-checked with the settings model, the Triton model repository
and the other deployment files.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest

from shared.platform.settings import Settings
from tests.deploy import deployfiles as df

PLATFORM_SERVICES = ("migrate", "gateway", "worker", "reconciler")
# Settings every platform process must share: one database, queue, bucket and set of keys.
SHARED_SETTINGS = (
    "database_url",
    "broker_url",
    "result_backend",
    "queue_name",
    "storage_backend",
    "s3_endpoint",
    "s3_public_endpoint",
    "s3_bucket",
    "s3_access_key",
    "s3_secret_key",
    "s3_secure",
    "provenance_signing_key",
    "watermark_secret",
    "model_profile",
    "inference_backend",
    "triton_url",
    "triton_access_token",
    "embedded",
)


def compose_spec_schema() -> dict[str, Any]:
    # The Compose Specification's JSON schema as vendored by check-jsonschema (a pinned dev dependency).
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def schema_errors(document: Mapping[str, Any]) -> list[str]:
    schema = compose_spec_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return [f"{e.json_path}: {e.message}" for e in validator_class(schema).iter_errors(document)]


def argument_after(command: list[str], flag: str) -> str:
    for index, item in enumerate(command):
        if item == flag:
            return command[index + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {command}")


def comparable(value: object) -> object:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


# --- structure --------------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(df.load_compose_raw()) == []
    assert schema_errors(compose) == []


def test_schema_check_rejects_a_misspelled_key(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["triton"]["shmsize"] = "4gb"
    broken["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"][0].pop("capabilities")
    errors = schema_errors(broken)
    assert any("shmsize" in error for error in errors), errors
    assert any("capabilities" in error for error in errors), errors


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on PATH; the Compose Specification schema check above covers the file")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(
            "the docker client has no compose plugin here (`docker compose version` fails: "
            f"{(probe.stderr or probe.stdout).strip().splitlines()[0][:120]}); the schema check above covers the file"
        )
    result = subprocess.run(
        [
            docker,
            "compose",
            "--env-file",
            str(df.ENV_EXAMPLE),
            "-f",
            str(df.COMPOSE_FILE),
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=df.REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_required_secrets_stop_compose_when_missing(env_example: dict[str, str]) -> None:
    env = {k: v for k, v in env_example.items() if k != "POSTGRES_PASSWORD"}
    with pytest.raises(df.InterpolationError, match="POSTGRES_PASSWORD"):
        df.load_compose(env)


def test_every_service_dependency_exists_and_can_be_waited_for(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        conditions = depends if isinstance(depends, dict) else {d: {} for d in depends}
        for target, spec in conditions.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = (spec or {}).get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health: it has none"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} is a one-shot job"


def test_images_are_pinned_and_app_images_carry_the_project_version(
    compose: dict[str, Any], pyproject: dict[str, Any]
) -> None:
    version = pyproject["project"]["version"]
    for name, service in compose["services"].items():
        image, tag = df.split_image(service["image"])
        assert tag and tag != "latest", f"{name}: image {service['image']} is not pinned"
        if "build" in service:
            assert tag == version, f"{name} builds the project: tag {tag} != pyproject version {version}"
            assert (df.REPO_ROOT / service["build"]["dockerfile"]).is_file()


# --- environment <-> settings -----------------------------------------------------------------------------


def test_every_variable_compose_reads_is_documented_in_env_example(env_example: dict[str, str]) -> None:
    referenced = df.referenced_variables(df.COMPOSE_FILE.read_text())
    assert referenced - set(env_example) == set()
    # ...and .env.example documents nothing compose ignores.
    assert set(env_example) - referenced == set()


def test_every_goha_variable_is_a_settings_field(
    compose: dict[str, Any], env_example: dict[str, str], settings_env_names: set[str]
) -> None:
    used = {n for n in df.referenced_variables(df.COMPOSE_FILE.read_text()) if n.startswith("GOHA_")}
    used |= {n for n in env_example if n.startswith("GOHA_")}
    for service in compose["services"].values():
        used |= {n for n in df.compose_environment(service) if n.startswith("GOHA_")}
    assert used, "no GOHA_ variable found: the parser is broken"
    assert used - settings_env_names == set()


def test_platform_services_build_production_settings(
    compose: dict[str, Any], settings_from_env: Callable[[Mapping[str, str]], Settings]
) -> None:
    built = {
        name: settings_from_env(df.compose_environment(compose["services"][name]))
        for name in PLATFORM_SERVICES
    }
    for name, settings in built.items():
        assert not settings.embedded, name
        assert not settings.auto_migrate, f"{name}: migrations are the migrate service's job"
        assert settings.database_url.startswith("postgresql+psycopg://"), name
        assert settings.broker_url.startswith("redis://"), name
        assert settings.storage_backend == "s3", name
        assert settings.inference_backend == "triton", name
    for field in SHARED_SETTINGS:
        values = {name: comparable(getattr(s, field)) for name, s in built.items()}
        assert len(set(map(repr, values.values()))) == 1, f"{field} differs between services: {values}"
    worker = built["worker"]
    assert worker.c2pa_certificate_chain_path and worker.c2pa_private_key_path, "production signer missing"
    assert built["gateway"].rate_limit_backend == "redis", "replicas must share the rate limiter"


def test_connection_settings_point_at_compose_services(
    compose: dict[str, Any], settings_from_env: Callable[[Mapping[str, str]], Settings]
) -> None:
    services = compose["services"]
    settings = settings_from_env(df.compose_environment(services["worker"]))
    database = urlsplit(settings.database_url)
    assert (database.hostname, database.port, database.path) == ("postgres", 5432, "/goha")
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "goha"
    assert services["postgres"]["environment"]["POSTGRES_USER"] == database.username
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == database.password
    for url in (settings.broker_url, settings.result_backend):
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == ("redis", 6379)
        assert parts.password == services["redis"]["environment"]["REDIS_PASSWORD"]
    assert settings.s3_endpoint == "minio:9000"
    published = {p.split(":")[-1]: p.split(":")[-2] for p in services["minio"]["ports"]}
    assert settings.s3_public_endpoint == f"localhost:{published['9000']}"
    init_env = services["minio-init"]["environment"]
    assert init_env["APP_ACCESS_KEY"] == settings.s3_access_key
    assert init_env["APP_SECRET_KEY"] == settings.s3_secret_key.get_secret_value()
    assert init_env["BUCKET"] == settings.s3_bucket
    host, port = settings.triton_url.rsplit(":", 1)
    assert host == "triton" and port in services["triton"]["expose"]
    assert port == triton_entrypoint_port("grpc"), "workers speak gRPC to Triton"
    assert services["triton"]["environment"]["GOHA_TRITON_ACCESS_TOKEN"] == (
        settings.triton_access_token.get_secret_value() if settings.triton_access_token else None
    )
    # The dashboard's queue depth and the broker must talk about the same list.
    broker_db = urlsplit(settings.broker_url).path.lstrip("/")
    keys = services["redis-exporter"]["environment"]["REDIS_EXPORTER_CHECK_SINGLE_KEYS"]
    assert keys == f"db{broker_db}={settings.queue_name}"


def triton_entrypoint_port(protocol: str) -> str:
    text = (df.DEPLOY / "docker" / "triton-entrypoint.sh").read_text()
    match = re.search(rf"--{protocol}-port=(\d+)", text)
    assert match, f"--{protocol}-port missing from triton-entrypoint.sh"
    return match.group(1)


def test_model_profile_matches_the_triton_model_repository(
    compose: dict[str, Any], settings_from_env: Callable[[Mapping[str, str]], Settings]
) -> None:
    settings = settings_from_env(df.compose_environment(compose["services"]["worker"]))
    parameters = df.model_config_parameters()
    assert {"goha_reconstruct", "goha_animate"} <= set(parameters)
    for model, values in parameters.items():
        assert values["profile"] == settings.model_profile, model


# --- ports, volumes, secrets ------------------------------------------------------------------------------


def test_gateway_port_agrees_everywhere(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    port = argument_after(gateway["command"], "--port")
    assert any(mapping.endswith(f":{port}") for mapping in gateway["ports"])
    assert f"127.0.0.1:{port}/readyz" in " ".join(gateway["healthcheck"]["test"])
    factory = argument_after(gateway["command"], "--factory")
    assert factory == "services.gateway.app:create_app"


def test_volumes_mounts_and_secrets_resolve(compose: dict[str, Any]) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    declared_secrets = set(compose.get("secrets") or {})
    for name, service in compose["services"].items():
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0]
            if source.startswith((".", "/")):
                path = (df.REPO_ROOT / source).resolve()
                # Local material (checkpoints) is the operator's; anything under deploy/ ships with the repo.
                if path.is_relative_to(df.DEPLOY):
                    assert path.exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        granted = set(service.get("secrets") or [])
        assert granted <= declared_secrets, name
        for key, value in df.compose_environment(service).items():
            if value.startswith("/run/secrets/"):
                assert value.removeprefix("/run/secrets/") in granted, (
                    f"{name}: {key} names a secret it lacks"
                )


def test_read_only_services_write_only_to_tmpfs(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if not service.get("read_only"):
            continue
        writable = [entry.split(":", 1)[0] for entry in service.get("tmpfs") or []]
        env = df.compose_environment(service)
        for key in ("GOHA_VAR_DIR", "PROMETHEUS_MULTIPROC_DIR"):
            assert any(env[key].startswith(root.rstrip("/") + "/") for root in writable), (name, key)


def test_worker_caps_glibc_malloc_arenas(compose: dict[str, Any]) -> None:
    # Per-thread arenas inflate the worker's RSS (docs/worker.md); read at start, so it must be in its env.
    assert df.compose_environment(compose["services"]["worker"]).get("MALLOC_ARENA_MAX") == "2"


def test_triton_service_reserves_a_gpu_and_mounts_the_checkpoint(compose: dict[str, Any]) -> None:
    triton = compose["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert triton["shm_size"], "the Python backend needs a large /dev/shm"
    checkpoints = {values["checkpoint"] for values in df.model_config_parameters().values()}
    targets = [mount.split(":")[1] for mount in triton["volumes"]]
    for checkpoint in checkpoints:
        assert any(checkpoint.startswith(target.rstrip("/") + "/") for target in targets), checkpoint
    assert set(triton["expose"]) == {triton_entrypoint_port(p) for p in ("http", "grpc", "metrics")}
