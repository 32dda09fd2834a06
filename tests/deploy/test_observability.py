"""Prometheus scrape configs, Grafana provisioning and dashboard, and the workers' metrics exporter."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from shared.platform.jobs import JobState
from shared.platform.settings import Settings
from tests.deploy import deployfiles as df

DASHBOARD = df.DEPLOY / "grafana" / "dashboards" / "goha-overview.json"
PROMETHEUS = df.DEPLOY / "prometheus" / "prometheus.yml"
PROMETHEUS_K8S = df.DEPLOY / "prometheus" / "prometheus-k8s.yml"
EXPORTER = df.DEPLOY / "docker" / "metrics_exporter.py"
ENTRYPOINT = df.DEPLOY / "docker" / "entrypoint.sh"
# Triton's per-model and per-GPU metrics (Triton's metrics documentation); Triton is not ours to import.
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count",
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_power_usage",
}
# redis_exporter's series used for the queue depth (REDIS_EXPORTER_CHECK_SINGLE_KEYS) and liveness.
REDIS_EXPORTER_METRICS = {"redis_key_size", "redis_up"}
REDIS_EXPORTER_PORT = 9121  # redis_exporter's default listen port (its images do not EXPOSE it to compose)


def project_series() -> set[str]:
    """Every series name shared.platform.metrics exports (counter -> _total, histogram -> _bucket...)."""
    from prometheus_client.metrics import MetricWrapperBase

    import shared.platform.metrics as metrics

    series: set[str] = set()
    families = [f for v in vars(metrics).values() if isinstance(v, MetricWrapperBase) for f in v.describe()]
    # Gauges the gateway computes at scrape time (jobs by state, queue depth) are collectors, not wrappers.
    families += metrics.scrape_time_families()
    for family in families:
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
        series |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return series


def dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels") or [])  # panels of collapsed rows
    return panels


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's built-in range variables by durations so the expression parses as PromQL."""
    return re.sub(r"\$__(rate_interval|interval|range)", "5m", expr)


def selectors(node: Any) -> Iterator[Any]:
    """Every VectorSelector of a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
        return
    for attribute in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, attribute, None)
        if child is not None:
            yield from selectors(child)
    for argument in getattr(node, "args", None) or []:
        yield from selectors(argument)


# --- Prometheus -------------------------------------------------------------------------------------------


def test_compose_scrape_targets_are_compose_services_on_their_metrics_ports(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert len(jobs) == len(set(jobs))
    services = compose["services"]
    gateway_args = services["gateway"]["command"]
    expected = {
        "gateway": int(gateway_args[gateway_args.index("--port") + 1]),
        "worker": int(services["worker"]["environment"]["METRICS_EXPORTER_PORT"]),
        "reconciler": int(services["reconciler"]["environment"]["METRICS_EXPORTER_PORT"]),
        "triton": 8002,
        "redis-exporter": REDIS_EXPORTER_PORT,
        "localhost": 9090,
    }
    assert "8002" in services["triton"]["expose"]
    found: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs") or []:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                found[host] = int(port)
        for dns in job.get("dns_sd_configs") or []:
            for name in dns["names"]:
                found[name] = int(dns["port"])
    assert found == expected
    for host in found:
        assert host == "localhost" or host in services, host
    # Every replica of a scaled service is scraped, not whichever one DNS answers first.
    scaled = {n for n, s in services.items() if "replicas" in (s.get("deploy") or {})} | {"gateway"}
    dns_names = {
        n for job in config["scrape_configs"] for d in job.get("dns_sd_configs") or [] for n in d["names"]
    }
    assert scaled <= dns_names


def test_k8s_scrape_config_keeps_annotated_pods() -> None:
    config = yaml.safe_load(PROMETHEUS_K8S.read_text())
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["goha"]
    relabel = job["relabel_configs"]
    keep = relabel[0]
    assert keep["action"] == "keep" and keep["regex"] == "true"
    address = next(r for r in relabel if r.get("target_label") == "__address__")
    pattern = re.compile(address["regex"])  # Prometheus anchors the regex; same syntax for this one
    match = pattern.fullmatch("10.1.2.3:8080;9200")
    assert match and address["replacement"].replace("$1", match[1]).replace("$2", match[2]) == "10.1.2.3:9200"


# --- Grafana ----------------------------------------------------------------------------------------------


def test_grafana_provisioning_matches_compose_mounts(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(tuple(m.split(":")[:2]) for m in grafana["volumes"] if m.startswith("./"))
    provisioning = df.REPO_ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    assert any(p.endswith(":9090") for p in compose["services"]["prometheus"]["ports"])
    providers = yaml.safe_load((provisioning / "dashboards" / "goha.yml").read_text())
    (provider,) = providers["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    datasources = yaml.safe_load(
        (df.DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uid = datasources["datasources"][0]["uid"]
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel id"
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_dashboard_queries_parse_and_use_only_metrics_that_exist() -> None:
    ours = project_series()
    assert "goha_job_transitions_total" in ours and "goha_http_request_duration_seconds_bucket" in ours
    queue_name = Settings.model_fields["queue_name"].default
    states = {state.value for state in JobState}
    used: set[str] = set()
    for panel in dashboard_panels():
        for target in panel.get("targets") or []:
            expr = grafana_to_promql(target["expr"])
            try:
                tree = promql_parser.parse(expr)
            except ValueError as exc:
                pytest.fail(f"{panel['title']}: {exc}: {expr}")
            for selector in selectors(tree):
                name = selector.name
                used.add(name)
                if name.startswith("goha_"):
                    assert name in ours, (
                        f"{panel['title']}: {name} is not defined in shared/platform/metrics.py"
                    )
                elif name.startswith("nv_"):
                    assert name in TRITON_METRICS, f"{panel['title']}: {name} is not a Triton metric"
                else:
                    assert name in REDIS_EXPORTER_METRICS, f"{panel['title']}: unknown metric {name}"
                for matcher in selector.matchers.matchers:
                    if name == "redis_key_size" and matcher.name == "key":
                        assert matcher.value == queue_name
                    if matcher.name == "to_state":
                        assert set(matcher.value.split("|")) <= states, matcher.value
    # The views the runbook relies on.
    assert {"goha_job_transitions_total", "goha_input_refusals_total", "redis_key_size"} <= used
    assert {"nv_inference_request_duration_us", "nv_inference_request_success"} <= used


def test_a_query_on_an_undefined_metric_would_be_caught() -> None:
    tree = promql_parser.parse(
        grafana_to_promql("sum(rate(goha_job_durations_seconds_bucket[$__rate_interval]))")
    )
    names = {s.name for s in selectors(tree)}
    assert names == {"goha_job_durations_seconds_bucket"}
    assert not names <= project_series()


# --- metrics exporter and entry point ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(url: str, process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "exporter exited"
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{url} did not answer")


def test_exporter_serves_what_worker_processes_wrote(tmp_path: Path) -> None:
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    # Two short-lived "worker children" record job transitions, as Celery's prefork children do.
    writer = (
        "import sys; from shared.platform.metrics import JOB_TRANSITIONS; "
        "JOB_TRANSITIONS.labels(to_state=sys.argv[1]).inc(int(sys.argv[2]))"
    )
    for state, count in (("succeeded", 2), ("failed", 3)):
        subprocess.run([sys.executable, "-c", writer, state, str(count)], env=env, check=True, timeout=60)
    written = sorted(p.name for p in multiproc.iterdir())
    port = free_port()
    exporter = subprocess.Popen(
        [sys.executable, str(EXPORTER), "--port", str(port), "--host", "127.0.0.1", "--dir", str(multiproc)],
        env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/healthz", exporter)
        status, body = get(base + "/metrics")
        assert status == 200
        assert re.search(r'^goha_job_transitions_total\{to_state="failed"\} 3\.0$', body, re.M), body
        assert re.search(r'^goha_job_transitions_total\{to_state="succeeded"\} 2\.0$', body, re.M), body
        assert get(base + "/healthz")[0] == 200
        assert get(base + "/nothing")[0] == 404
        assert sorted(p.name for p in multiproc.iterdir()) == written, "the exporter must not write samples"
        exporter.send_signal(signal.SIGTERM)
        assert exporter.wait(timeout=10) == 0
    finally:
        if exporter.poll() is None:
            exporter.kill()
            exporter.wait()


def test_exporter_health_fails_without_its_directory(tmp_path: Path) -> None:
    port = free_port()
    exporter = subprocess.Popen(
        [
            sys.executable,
            str(EXPORTER),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--dir",
            str(tmp_path / "no"),
        ]
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", exporter)
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 503
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)


def test_entrypoint_empties_the_multiprocess_directory_then_runs_the_command(tmp_path: Path) -> None:
    stale = tmp_path / "prometheus"
    (stale / "sub").mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"old samples")
    env = {"PATH": os.environ["PATH"], "PROMETHEUS_MULTIPROC_DIR": str(stale)}
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "sh", "-c", 'ls -A "$PROMETHEUS_MULTIPROC_DIR"; echo "ran $0"', "arg0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ran arg0"
    missing = tmp_path / "new" / "prometheus"
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "true"],
        env={"PATH": os.environ["PATH"], "PROMETHEUS_MULTIPROC_DIR": str(missing)},
        timeout=30,
    )
    assert result.returncode == 0 and missing.is_dir()
    assert os.access(ENTRYPOINT, os.X_OK)
