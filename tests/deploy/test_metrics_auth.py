"""Issue 16 (Low): the gateway's /metrics is on the internet-facing API port, so every deployment gives the
gateway a metrics bearer token and every scrape config sends the same token (compose, the plain Prometheus
config for k8s, the Prometheus Operator's PodMonitor). A production gateway without the token refuses to start:
test_production_mode.py::test_a_production_gateway_needs_a_metrics_token."""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy import deployfiles as df
from tests.deploy.test_k8s import by_kind, main_container

PROMETHEUS = df.DEPLOY / "prometheus" / "prometheus.yml"
PROMETHEUS_K8S = df.DEPLOY / "prometheus" / "prometheus-k8s.yml"


def test_compose_prometheus_scrapes_the_gateway_with_the_gateways_token(compose: dict[str, Any]) -> None:
    raw = df.load_compose_raw()
    gateway_env = raw["services"]["gateway"]["environment"]
    assert (
        "${GOHA_METRICS_TOKEN:?" in gateway_env["GOHA_METRICS_TOKEN"]
    )  # compose refuses to start without it
    secret = raw["secrets"]["metrics_token"]
    assert secret == {"environment": "GOHA_METRICS_TOKEN"}  # Prometheus reads the very same value
    assert "metrics_token" in compose["services"]["prometheus"]["secrets"]
    assert "metrics_token" not in (compose["services"]["gateway"].get("secrets") or [])
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    auth = jobs["goha-gateway"]["authorization"]
    assert auth == {"type": "Bearer", "credentials_file": "/run/secrets/metrics_token"}


def test_k8s_gateway_and_scrapers_share_the_metrics_token(k8s: list[df.Resource]) -> None:
    gateway = main_container(by_kind(k8s, "Deployment")["goha-gateway"])
    refs = {item["name"]: item.get("valueFrom", {}).get("secretKeyRef") for item in gateway["env"]}
    assert refs["GOHA_METRICS_TOKEN"] == {"name": "goha-secrets", "key": "metrics-token"}
    monitors = {m.name: m for m in df.k8s_resources(df.K8S_DIR / "monitoring")}
    (endpoint,) = monitors["goha-gateway"].doc["spec"]["podMetricsEndpoints"]
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "goha-secrets", "key": "metrics-token"},
    }
    (job,) = yaml.safe_load(PROMETHEUS_K8S.read_text())["scrape_configs"]
    assert job["authorization"]["type"] == "Bearer" and job["authorization"]["credentials_file"]
