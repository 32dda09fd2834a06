"""deploy/k8s validated without a cluster: schemas, hygiene rules, and agreement with settings and compose."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from shared.platform.settings import Settings
from tests.deploy import deployfiles as df

# Oldest Kubernetes minor the manifests promise to work on (autoscaling/v2, policy/v1, batch/v1 TTL).
KUBERNETES_VERSION = "1.30.0"
# Custom resources kubernetes-validate has no schema for; checked field by field below.
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "PodMonitor"}
PLATFORM_DEPLOYMENTS = ("goha-gateway", "goha-worker", "goha-reconciler")
SECRETISH = re.compile(
    r"PASSWORD|SECRET|TOKEN|PRIVATE|ACCESS_KEY|SIGNING_KEY|DATABASE_URL|BROKER_URL|RESULT_BACKEND"
)


def is_secretish(name: str) -> bool:
    """Names of values that are secrets (a *_PATH to a mounted secret file is not one)."""
    return bool(SECRETISH.search(name)) and not name.endswith("_PATH")


def by_kind(resources: list[df.Resource], kind: str) -> dict[str, df.Resource]:
    return {r.name: r for r in resources if r.kind == kind}


def workloads(resources: list[df.Resource]) -> Iterator[tuple[df.Resource, dict[str, Any]]]:
    for resource in resources:
        spec = df.pod_spec(resource)
        if spec is not None:
            yield resource, spec


def main_container(resource: df.Resource) -> dict[str, Any]:
    spec = df.pod_spec(resource)
    assert spec is not None
    return spec["containers"][0]


def secrets_example() -> tuple[set[str], dict[str, set[str]]]:
    """Keys of goha-secrets (KEY= lines) and, per file Secret (``create secret generic NAME
    --from-file=KEY=...``), its keys, from secrets.example.env."""
    text = (df.K8S_DIR / "secrets.example.env").read_text()
    plain = {line.split("=", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}
    files: dict[str, set[str]] = {}
    commands = re.split(r"create secret generic ", text.replace("\\\n#", " "))[1:]
    for command in commands:
        name = command.split()[0]
        keys = set(re.findall(r"--from-file=([A-Za-z0-9_.-]+)=", command.split("kubectl")[0]))
        if keys:
            files[name] = keys
    return plain, files


# --- parsing and schemas ----------------------------------------------------------------------------------


def test_every_listed_file_parses_and_names_are_unique(k8s: list[df.Resource]) -> None:
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "ScaledObject"} <= {
        r.kind for r in k8s
    }
    keys = [(r.kind, r.name) for r in k8s]
    assert len(keys) == len(set(keys)), "duplicate resource"
    listed = set(df.kustomization()["resources"])
    on_disk = {p.name for p in df.K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed, "every manifest is applied by the kustomization (and only those)"


def test_every_resource_matches_the_kubernetes_schema(k8s: list[df.Resource]) -> None:
    failures: list[str] = []
    for resource in k8s:
        if resource.kind in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(resource.doc, KUBERNETES_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            failures.append(f"{resource}: {exc}")
    assert failures == []
    assert {r.kind for r in k8s} & CUSTOM_KINDS == {"ScaledObject", "TriggerAuthentication"}


def test_schema_validation_rejects_a_misspelled_field(k8s: list[df.Resource]) -> None:
    gateway = copy.deepcopy(by_kind(k8s, "Deployment")["goha-gateway"].doc)
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    container["readinessprobe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES_VERSION, strict=True)


def test_kustomize_renders_the_same_resources(k8s: list[df.Resource]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not installed: the kustomization was checked by reading its resources directly"
        )
    result = subprocess.run(
        [kubectl, "kustomize", str(df.K8S_DIR)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == sorted(
        (r.kind, r.name) for r in k8s
    )
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "goha", doc["metadata"]["name"]
    assert set(df.image_refs(rendered)) == set(df.image_refs([r.doc for r in k8s])), "images: retagged"


# --- hygiene ----------------------------------------------------------------------------------------------


def test_every_container_has_cpu_and_memory_requests_and_limits(k8s: list[df.Resource]) -> None:
    checked = 0
    for resource, spec in workloads(k8s):
        for container in df.containers(spec):
            resources = container.get("resources") or {}
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(section) or {}), (
                    f"{resource} container {container['name']}: {section} lacks cpu/memory"
                )
            checked += 1
    assert checked >= 10


def test_gateway_and_triton_have_probes_on_real_endpoints(k8s: list[df.Resource]) -> None:
    deployments = by_kind(k8s, "Deployment")
    gateway = main_container(deployments["goha-gateway"])
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    triton = main_container(deployments["goha-triton"])
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "startupProbe" in triton, "model loading must not trip the liveness probe"
    for container in (gateway, triton):
        names = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            port = container[probe]["httpGet"]["port"]
            assert port in names or port in names.values(), f"{container['name']}: probe port {port}"


def test_gateway_routes_exist_for_the_probes() -> None:
    from services.gateway.routers import health

    paths = {route.path for route in health.router.routes}  # type: ignore[attr-defined]
    assert {"/healthz", "/readyz", "/metrics"} <= paths


def test_triton_requests_a_gpu_and_tolerates_gpu_nodes(k8s: list[df.Resource]) -> None:
    triton = by_kind(k8s, "Deployment")["goha-triton"]
    resources = main_container(triton)["resources"]
    assert str(resources["requests"]["nvidia.com/gpu"]) == str(resources["limits"]["nvidia.com/gpu"]) == "1"
    tolerations = df.pod_spec(triton)["tolerations"]  # type: ignore[index]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def test_no_image_uses_latest_or_no_tag(k8s: list[df.Resource]) -> None:
    refs = list(df.image_refs([r.doc for r in k8s]))
    assert refs
    for ref in refs:
        _, tag = df.split_image(ref)
        assert tag and tag != "latest", ref
    for entry in df.kustomization()["images"]:
        assert entry.get("newTag", entry.get("digest")) not in (None, "latest"), entry


def test_secrets_are_referenced_never_inlined(k8s: list[df.Resource]) -> None:
    assert not by_kind(k8s, "Secret"), "Secrets are created out of band (docs/deploy.md), never committed"
    for name, data in df.config_maps(k8s).items():
        leaked = [key for key in data if is_secretish(key)]
        assert not leaked, f"ConfigMap {name} carries secrets: {leaked}"
    for resource, spec in workloads(k8s):
        for container in df.containers(spec):
            for item in container.get("env") or []:
                if is_secretish(item["name"]) and "value" in item:
                    # Allowed only as an expansion of values that themselves come from a Secret.
                    assert "$(" in item["value"], f"{resource} {container['name']}: {item['name']} inlined"
                    assert not re.search(r"//[^:/@]*:[^$@]+@", item["value"]), item["value"]
            for source in container.get("envFrom") or []:
                assert "secretRef" not in source, "secretKeyRef makes each secret a container reads explicit"


def test_secret_keys_match_the_documented_template(k8s: list[df.Resource]) -> None:
    documented, c2pa_files = secrets_example()
    used = set(df.secret_key_refs([r.doc for r in k8s]))
    assert {name for name, _ in used} == {"goha-secrets"}
    assert {key for _, key in used} == documented, "secrets.example.env and the manifests disagree"
    keda_keys = {
        ref["key"]
        for auth in by_kind(k8s, "TriggerAuthentication").values()
        for ref in auth.doc["spec"]["secretTargetRef"]
    }
    assert keda_keys <= documented
    # The C2PA files: every path a container's settings name lies in a mounted file Secret holding it.
    assert set(c2pa_files) == {"goha-c2pa-signer", "goha-c2pa-trust"}
    maps = df.config_maps(k8s)
    checked = 0
    for resource, spec in workloads(k8s):
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for container in df.containers(spec):
            mounted = {
                mount["mountPath"]: volumes[mount["name"]]["secret"]["secretName"]
                for mount in container.get("volumeMounts") or []
                if "secret" in volumes.get(mount["name"], {})
            }
            assert set(mounted.values()) <= set(c2pa_files), (resource, mounted)
            if not mounted:
                continue
            env = df.container_env(container, maps)
            for key in (
                "GOHA_C2PA_CERTIFICATE_CHAIN_PATH",
                "GOHA_C2PA_PRIVATE_KEY_PATH",
                "GOHA_C2PA_TRUST_ANCHORS_PATH",
            ):
                if key in env:
                    directory, _, file = env[key].rpartition("/")
                    assert directory in mounted and file in c2pa_files[mounted[directory]], (resource, key)
                    checked += 1
    assert checked >= 4  # worker: chain, key, anchors; gateway: anchors


def test_the_gateway_never_holds_the_c2pa_signing_key(k8s: list[df.Resource]) -> None:
    """Issue 16, item 8: the internet-facing gateway verifies with the trust anchors only; the signer
    (chain + private key) is a Secret only the workers mount."""
    maps = df.config_maps(k8s)
    gateway = by_kind(k8s, "Deployment")["goha-gateway"]
    spec = df.pod_spec(gateway)
    assert spec is not None
    secrets = {v["secret"]["secretName"] for v in spec.get("volumes") or [] if "secret" in v}
    assert secrets == {"goha-c2pa-trust"}
    env = df.container_env(main_container(gateway), maps)
    assert "GOHA_C2PA_PRIVATE_KEY_PATH" not in env and "GOHA_C2PA_CERTIFICATE_CHAIN_PATH" not in env
    assert env["GOHA_C2PA_TRUST_ANCHORS_PATH"]
    signer_users = {
        str(resource)
        for resource, pod in workloads(k8s)
        for v in pod.get("volumes") or []
        if v.get("secret", {}).get("secretName") == "goha-c2pa-signer"
    }
    assert signer_users and all("goha-worker" in user for user in signer_users), signer_users


def test_volume_mounts_name_declared_volumes(k8s: list[df.Resource]) -> None:
    for resource, spec in workloads(k8s):
        declared = {v["name"] for v in spec.get("volumes") or []}
        claims = {c["metadata"]["name"] for c in resource.doc["spec"].get("volumeClaimTemplates") or []}
        for container in df.containers(spec):
            for mount in container.get("volumeMounts") or []:
                assert mount["name"] in declared | claims, f"{resource} {container['name']}: {mount['name']}"


def test_read_only_containers_write_only_to_mounted_volumes(k8s: list[df.Resource]) -> None:
    maps = df.config_maps(k8s)
    for resource, spec in workloads(k8s):
        for container in df.containers(spec):
            if not (container.get("securityContext") or {}).get("readOnlyRootFilesystem"):
                continue
            mounts = [m["mountPath"].rstrip("/") + "/" for m in container.get("volumeMounts") or []]
            env = df.container_env(container, maps)
            for key in ("GOHA_VAR_DIR", "PROMETHEUS_MULTIPROC_DIR"):
                if key in env:
                    assert any((env[key].rstrip("/") + "/").startswith(m) for m in mounts), (
                        str(resource),
                        key,
                    )


# --- settings ---------------------------------------------------------------------------------------------


def test_every_goha_variable_is_a_settings_field(
    k8s: list[df.Resource], settings_env_names: set[str]
) -> None:
    maps = df.config_maps(k8s)
    used = {key for data in maps.values() for key in data if key.startswith("GOHA_")}
    for _, spec in workloads(k8s):
        for container in df.containers(spec):
            used |= {item["name"] for item in container.get("env") or [] if item["name"].startswith("GOHA_")}
    assert len(used) > 10
    assert used - settings_env_names == set()


def test_platform_containers_build_the_same_production_settings(
    k8s: list[df.Resource], settings_from_env: Callable[[Mapping[str, str]], Settings]
) -> None:
    maps = df.config_maps(k8s)
    deployments = by_kind(k8s, "Deployment")
    built = {
        name: settings_from_env(df.container_env(main_container(deployments[name]), maps))
        for name in PLATFORM_DEPLOYMENTS
    }
    built["migrate"] = settings_from_env(
        df.container_env(main_container(by_kind(k8s, "Job")["goha-migrate"]), maps)
    )
    for name, settings in built.items():
        assert not settings.embedded and not settings.auto_migrate, name
        assert settings.database_url == df.SECRET_PLACEHOLDER, (
            f"{name}: database URL must come from the Secret"
        )
    shared = (
        "broker_url",
        "result_backend",
        "queue_name",
        "s3_endpoint",
        "s3_bucket",
        "model_profile",
        "triton_url",
    )
    for field in shared:
        values = {name: getattr(s, field) for name, s in built.items() if name != "migrate"}
        assert len(set(values.values())) == 1, f"{field}: {values}"
    worker = built["goha-worker"]
    assert worker.inference_backend == "triton" and worker.storage_backend == "s3"
    assert worker.triton_access_token is not None
    assert built["goha-gateway"].rate_limit_backend == "redis"


def test_the_retention_cronjob_purges_the_workers_storage(
    k8s: list[df.Resource], settings_from_env: Callable[[Mapping[str, str]], Settings]
) -> None:
    """`goha purge` must reach the same database and bucket as the worker, with a retention period
    (without one the command refuses to run)."""
    maps = df.config_maps(k8s)
    cron = by_kind(k8s, "CronJob")["goha-retention"]
    container = main_container(cron)
    assert container["command"] == ["goha", "purge"]
    purge = settings_from_env(df.container_env(container, maps))
    worker = settings_from_env(
        df.container_env(main_container(by_kind(k8s, "Deployment")["goha-worker"]), maps)
    )
    assert purge.retention_days is not None and purge.retention_days >= 1
    assert purge.database_url == df.SECRET_PLACEHOLDER
    for field in ("storage_backend", "s3_endpoint", "s3_bucket", "s3_access_key", "s3_secret_key"):
        assert getattr(purge, field) == getattr(worker, field), field
    assert cron.doc["spec"]["concurrencyPolicy"] == "Forbid"  # two passes must not race


def test_service_urls_point_at_the_manifests(
    k8s: list[df.Resource], settings_from_env: Callable[[Mapping[str, str]], Settings]
) -> None:
    maps = df.config_maps(k8s)
    services = by_kind(k8s, "Service")
    worker = settings_from_env(
        df.container_env(main_container(by_kind(k8s, "Deployment")["goha-worker"]), maps)
    )

    def service_port(host: str, port: int) -> None:
        name, namespace = host.split(".")[:2]
        assert namespace == "goha" and name in services, host
        assert port in {p["port"] for p in services[name].doc["spec"]["ports"]}, f"{host}:{port}"

    for url in (worker.broker_url, worker.result_backend):
        parts = urlsplit(url)
        assert parts.password == df.SECRET_PLACEHOLDER, "the Redis password comes from the Secret"
        service_port(parts.hostname or "", parts.port or 0)
    host, port = worker.s3_endpoint.rsplit(":", 1)
    service_port(host, int(port))
    host, port = worker.triton_url.rsplit(":", 1)
    service_port(host, int(port))
    triton_ports = {p["name"]: p["port"] for p in services["goha-triton"].doc["spec"]["ports"]}
    assert int(port) == triton_ports["grpc"], "the worker's client speaks gRPC"


def test_service_selectors_and_target_ports_match_pods(k8s: list[df.Resource]) -> None:
    pods = [(r, df.pod_labels(r), spec) for r, spec in workloads(k8s)]
    for service in by_kind(k8s, "Service").values():
        spec = service.doc["spec"]
        if spec.get("type") == "ExternalName":
            continue
        matches = [(r, s) for r, labels, s in pods if spec["selector"].items() <= labels.items()]
        assert len(matches) == 1, f"Service {service.name} selects {len(matches)} workloads"
        _, pod = matches[0]
        ports = {p.get("name"): p["containerPort"] for c in pod["containers"] for p in c.get("ports") or []}
        for port in spec["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), f"{service.name}: targetPort {target}"


def test_metrics_annotations_name_real_container_ports(k8s: list[df.Resource]) -> None:
    annotated = 0
    for resource, spec in workloads(k8s):
        annotations = (df.pod_template(resource) or {}).get("metadata", {}).get("annotations") or {}
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        annotated += 1
        ports = {p["containerPort"] for c in spec["containers"] for p in c.get("ports") or []}
        assert int(annotations["prometheus.io/port"]) in ports, str(resource)
    assert annotated >= 5  # gateway, worker, reconciler, triton, redis


def test_model_profile_and_checkpoint_match_the_triton_repository(k8s: list[df.Resource]) -> None:
    config = df.config_maps(k8s)["goha-config"]
    triton = by_kind(k8s, "Deployment")["goha-triton"]
    mounts = [m["mountPath"] for m in main_container(triton)["volumeMounts"]]
    fetch = df.pod_spec(triton)["initContainers"][0]  # type: ignore[index]
    for model, parameters in df.model_config_parameters().items():
        assert parameters["profile"] == config["GOHA_MODEL_PROFILE"], model
        assert any(parameters["checkpoint"].startswith(m.rstrip("/") + "/") for m in mounts), model
        assert parameters["checkpoint"] in fetch["command"], (
            "the init container fetches what config.pbtxt loads"
        )


# --- autoscaling ------------------------------------------------------------------------------------------


def test_gateway_hpa_targets_the_gateway(k8s: list[df.Resource]) -> None:
    hpas = by_kind(k8s, "HorizontalPodAutoscaler")
    deployments = by_kind(k8s, "Deployment")
    assert set(hpas) == {"goha-gateway"}
    spec = hpas["goha-gateway"].doc["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "goha-gateway"}
    assert 1 < spec["minReplicas"] < spec["maxReplicas"]
    # CPU utilisation is relative to requests: the gateway must declare them.
    assert "cpu" in main_container(deployments["goha-gateway"])["resources"]["requests"]


def test_workers_scale_on_the_celery_queue(
    k8s: list[df.Resource], settings_from_env: Callable[[Mapping[str, str]], Settings]
) -> None:
    deployments = by_kind(k8s, "Deployment")
    scaled = by_kind(k8s, "ScaledObject")["goha-worker"].doc["spec"]
    assert scaled["scaleTargetRef"]["name"] == "goha-worker"
    assert "replicas" not in deployments["goha-worker"].doc["spec"], "KEDA owns the worker replica count"
    assert 0 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "redis"
    worker = settings_from_env(
        df.container_env(main_container(deployments["goha-worker"]), df.config_maps(k8s))
    )
    broker = urlsplit(worker.broker_url)
    metadata = trigger["metadata"]
    assert metadata["listName"] == worker.queue_name
    assert metadata["address"] == f"{broker.hostname}:{broker.port}"
    assert metadata["databaseIndex"] == broker.path.lstrip("/")
    assert int(metadata["listLength"]) >= 1
    auth = by_kind(k8s, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    assert {ref["parameter"] for ref in auth.doc["spec"]["secretTargetRef"]} == {"password"}
    # The dashboard's queue-depth series reads the same list.
    exporter = next(
        c
        for c in df.pod_spec(by_kind(k8s, "StatefulSet")["goha-redis"])["containers"]  # type: ignore[index]
        if c["name"] == "redis-exporter"
    )
    keys = {e["name"]: e.get("value") for e in exporter["env"]}["REDIS_EXPORTER_CHECK_SINGLE_KEYS"]
    assert keys == f"db{metadata['databaseIndex']}={metadata['listName']}"
    assert not by_kind(k8s, "HorizontalPodAutoscaler").get("goha-worker"), "HPA and KEDA would fight"


def test_worker_grace_period_lets_a_job_finish(k8s: list[df.Resource]) -> None:
    worker = by_kind(k8s, "Deployment")["goha-worker"]
    assert df.pod_spec(worker)["terminationGracePeriodSeconds"] >= 600  # type: ignore[index]


def test_worker_caps_glibc_malloc_arenas(k8s: list[df.Resource]) -> None:
    worker = main_container(by_kind(k8s, "Deployment")["goha-worker"])
    assert worker["name"] == "worker"
    assert df.container_env(worker, df.config_maps(k8s)).get("MALLOC_ARENA_MAX") == "2"


# --- agreement with docker-compose.yml --------------------------------------------------------------------


def test_images_agree_with_compose_and_the_project_version(
    k8s: list[df.Resource], compose: dict[str, Any], pyproject: dict[str, Any]
) -> None:
    k8s_images = set(df.image_refs([r.doc for r in k8s]))
    compose_images = {service["image"] for service in compose["services"].values()}
    version = pyproject["project"]["version"]
    built = {service["image"] for service in compose["services"].values() if "build" in service}
    assert {df.split_image(i)[1] for i in built} == {version}
    # Same app/Triton images, and the same third-party versions where both run a component.
    assert built <= k8s_images
    by_repo = {df.split_image(i)[0]: i for i in compose_images}
    for image in k8s_images:
        repository = df.split_image(image)[0]
        if repository in by_repo:
            assert by_repo[repository] == image, f"compose runs {by_repo[repository]}, k8s {image}"
    for entry in df.kustomization()["images"]:
        assert entry["newTag"] == version and any(i.startswith(entry["name"] + ":") for i in k8s_images)


def test_ports_agree_with_compose(k8s: list[df.Resource], compose: dict[str, Any]) -> None:
    deployments = by_kind(k8s, "Deployment")
    gateway = main_container(deployments["goha-gateway"])
    k8s_port = {p["name"]: p["containerPort"] for p in gateway["ports"]}["http"]
    args = gateway["args"]
    assert args[args.index("--port") + 1] == str(k8s_port)
    compose_args = compose["services"]["gateway"]["command"]
    assert compose_args[compose_args.index("--port") + 1] == str(k8s_port)
    triton = {p["name"]: p["containerPort"] for p in main_container(deployments["goha-triton"])["ports"]}
    assert {str(v) for v in triton.values()} == set(compose["services"]["triton"]["expose"])
    exporter_ports = {
        str(p["containerPort"])
        for name in ("goha-worker", "goha-reconciler")
        for c in df.pod_spec(deployments[name])["containers"]  # type: ignore[index]
        if c["name"] == "metrics-exporter"
        for p in c["ports"]
    }
    compose_exporter = {
        compose["services"][name]["environment"]["METRICS_EXPORTER_PORT"] for name in ("worker", "reconciler")
    }
    assert exporter_ports == compose_exporter == {"9200"}


def test_monitoring_podmonitors_name_real_ports(k8s: list[df.Resource]) -> None:
    monitors = df.k8s_resources(df.K8S_DIR / "monitoring")
    pods = [(df.pod_labels(r), spec) for r, spec in workloads(k8s)]
    assert len(monitors) == 5
    for monitor in monitors:
        selector = monitor.doc["spec"]["selector"]["matchLabels"]
        matches = [spec for labels, spec in pods if selector.items() <= labels.items()]
        assert len(matches) == 1, monitor.name
        names = {p.get("name") for c in matches[0]["containers"] for p in c.get("ports") or []}
        for endpoint in monitor.doc["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in names, f"{monitor.name}: no container port named {endpoint['port']}"


def test_presigned_result_urls_are_https(
    k8s: list[df.Resource], settings_from_env: Callable[[Mapping[str, str]], Settings]
) -> None:
    """Issue 16, item 11: the gateway presigns with the public endpoint over https, whatever the
    internal connection to MinIO speaks."""
    from shared.platform.storage import S3Storage

    maps = df.config_maps(k8s)
    gateway = settings_from_env(
        df.container_env(main_container(by_kind(k8s, "Deployment")["goha-gateway"]), maps)
    )
    url = S3Storage.from_settings(gateway).presigned_get_url("tenants/t/jobs/j/result.mp4", 60)
    assert url.startswith(f"https://{gateway.s3_public_endpoint}/"), url
