"""Prometheus metrics, safe with several processes (uvicorn workers, Celery prefork children).

Multiprocess mode is on when ``PROMETHEUS_MULTIPROC_DIR`` names an (empty at start) directory and
is set *before* ``prometheus_client`` is first imported; each process then writes its samples to
files there and ``render_latest`` aggregates them all. Without it, one process's registry is served.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

HTTP_REQUESTS = Counter("goha_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "goha_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
JOBS_SUBMITTED = Counter("goha_jobs_submitted_total", "Jobs accepted", ["job_type"])
INPUT_REFUSALS = Counter("goha_input_refusals_total", "Requests refused with a 4xx", ["code"])
ENQUEUE_FAILURES = Counter("goha_enqueue_failures_total", "Job publishes that failed (reconciler retries)")
JOB_TRANSITIONS = Counter("goha_job_transitions_total", "Job state changes", ["to_state"])
JOBS_REENQUEUED = Counter("goha_jobs_reenqueued_total", "Stuck queued jobs re-enqueued by the reconciler")


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def render_latest() -> tuple[bytes, str]:
    """The exposition text for ``/metrics`` and its content type."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(DEFAULT_REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Call from a gunicorn/uvicorn worker-exit hook so a dead worker's live gauges are dropped."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)
