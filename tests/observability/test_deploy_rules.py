"""The Prometheus alerting rules and the dashboard use the metrics this project defines."""

from __future__ import annotations

import json
from pathlib import Path

import promql_parser
import yaml

from tests.deploy.test_observability import TRITON_METRICS, grafana_to_promql, project_series, selectors

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))


def test_alert_rules_parse_and_name_only_existing_metrics() -> None:
    assert RULES
    ours = project_series()
    alerts = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                alerts.append(rule["alert"])
                assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
                for selector in selectors(promql_parser.parse(rule["expr"])):
                    name = selector.name
                    assert name in ours or name in TRITON_METRICS or name == "up", f"{rule['alert']}: {name}"
    assert len(alerts) == len(set(alerts))
    # Prometheus loads the folder with a glob (absent folder: no rules, no start-up error).
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_dashboard_shows_the_job_worker_and_inference_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "goha-overview.json").read_text())
    used = {
        selector.name
        for panel in dashboard["panels"]
        for target in panel.get("targets") or []
        for selector in selectors(promql_parser.parse(grafana_to_promql(target["expr"])))
    }
    assert {
        "goha_jobs_by_state",
        "goha_queue_depth",
        "goha_oldest_queued_job_age_seconds",
        "goha_job_duration_seconds_bucket",
        "goha_job_frames_per_second_bucket",
        "goha_frames_rendered_total",
        "goha_job_failures_total",
        "goha_worker_stage_seconds_bucket",
        "goha_worker_jobs_running",
        "goha_inference_request_seconds_bucket",
        "goha_inference_failures_total",
    } <= used
