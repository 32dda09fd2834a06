"""Readers for the deployment files the tests validate statically (no Docker engine, no cluster).

* ``interpolate``: docker compose's ``${VAR}`` / ``${VAR:-default}`` / ``${VAR:?error}`` / ``$$`` rules, so
  the compose file is checked as ``docker compose config`` would resolve it with ``.env.example``.
* ``k8s_resources``: every document of the resources a kustomization lists, in apply order.
* ``containers`` / ``container_env``: walk pod templates and resolve a container's environment
  (ConfigMap ``envFrom``, literal values, ``$(VAR)`` expansion, secret references as placeholders).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
K8S_DIR = DEPLOY / "k8s"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
MODEL_REPOSITORY = DEPLOY / "triton" / "model_repository"

# A secretKeyRef resolves to this in tests: long enough for every key-length rule, URL-safe.
SECRET_PLACEHOLDER = "secret0123456789abcdef0123456789"

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset or empty, as docker compose refuses it."""


_TOKEN = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate_string(text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("plain")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        unset_or_empty = value is None or value == ""
        if op in (":-", "-"):
            use_default = unset_or_empty if op == ":-" else value is None
            return interpolate_string(arg, env) if use_default else str(value)
        if op in (":?", "?"):
            missing = unset_or_empty if op == ":?" else value is None
            if missing:
                raise InterpolationError(f"{name}: {arg or 'required variable is missing'}")
            return str(value)
        if op in (":+", "+"):
            present = not unset_or_empty if op == ":+" else value is not None
            return interpolate_string(arg, env) if present else ""
        return "" if value is None else str(value)

    return _TOKEN.sub(replace, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value (not keys) of a parsed compose document."""
    if isinstance(node, str):
        return interpolate_string(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


def referenced_variables(text: str) -> set[str]:
    """Names of every ``${VAR...}`` / ``$VAR`` a compose file interpolates (``$$`` escapes excluded)."""
    return {m.group("braced") or m.group("plain") for m in _TOKEN.finditer(text) if not m.group("escaped")}


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a dotenv file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"{path.name}:{number}: not KEY=VALUE: {raw!r}")
        values[key] = value
    return values


def load_compose_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as ``docker compose --env-file .env.example config`` would resolve it."""
    env = read_env_file(ENV_EXAMPLE) if env is None else env
    return interpolate(load_compose_raw(), env)


def compose_environment(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):  # the "KEY=VALUE" list form
        return dict(item.split("=", 1) for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


# --- kubernetes ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    file: str
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}/{self.name}"


def kustomization(directory: Path = K8S_DIR) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def k8s_resources(directory: Path = K8S_DIR) -> list[Resource]:
    """Every document of the files the kustomization lists, in its order."""
    resources: list[Resource] = []
    for name in kustomization(directory)["resources"]:
        path = directory / name
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                resources.append(Resource(str(path.relative_to(REPO_ROOT)), doc))
    return resources


def pod_template(resource: Resource) -> dict[str, Any] | None:
    if resource.kind in POD_TEMPLATE_KINDS:
        return resource.doc["spec"]["template"]
    if resource.kind == "CronJob":
        return resource.doc["spec"]["jobTemplate"]["spec"]["template"]
    return None


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    template = pod_template(resource)
    return None if template is None else template["spec"]


def pod_labels(resource: Resource) -> dict[str, str]:
    template = pod_template(resource) or {}
    return dict((template.get("metadata") or {}).get("labels") or {})


def containers(spec: Mapping[str, Any], *, init: bool = True) -> Iterator[dict[str, Any]]:
    if init:
        yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


def config_maps(resources: list[Resource]) -> dict[str, dict[str, str]]:
    return {r.name: dict(r.doc.get("data") or {}) for r in resources if r.kind == "ConfigMap"}


_K8S_REF = re.compile(r"\$\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)")


def expand_k8s_refs(text: str, values: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in env values, command and args (unknown names stay as written)."""
    return _K8S_REF.sub(lambda m: values.get(m.group("name"), m.group(0)), text)


def container_env(container: Mapping[str, Any], maps: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The environment a container starts with; secret references become ``SECRET_PLACEHOLDER``."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
        elif "secretRef" in source:
            raise AssertionError("envFrom secretRef hides which keys a container reads; use secretKeyRef")
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = expand_k8s_refs(str(item["value"]), env)
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = SECRET_PLACEHOLDER
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = maps[ref["name"]][ref["key"]]
        else:
            env[item["name"]] = ""
    return env


def secret_key_refs(node: Any) -> Iterator[tuple[str, str]]:
    """Every (secret name, key) referenced by a secretKeyRef anywhere below ``node``."""
    if isinstance(node, dict):
        ref = node.get("secretKeyRef")
        if isinstance(ref, dict):
            yield ref["name"], ref["key"]
        for value in node.values():
            yield from secret_key_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from secret_key_refs(item)


def image_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from image_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from image_refs(item)


def split_image(ref: str) -> tuple[str, str | None]:
    """``registry/repo:tag`` -> (``registry/repo``, ``tag``); no tag -> None. A digest counts as pinned."""
    if "@" in ref:
        name, digest = ref.split("@", 1)
        return name, digest
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
        return name, tag
    return ref, None


def model_config_parameters() -> dict[str, dict[str, str]]:
    """``parameters`` of every config.pbtxt of the Triton model repository, by model name."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    configs: dict[str, dict[str, str]] = {}
    for path in sorted(MODEL_REPOSITORY.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        configs[config.name] = {key: value.string_value for key, value in config.parameters.items()}
    return configs
