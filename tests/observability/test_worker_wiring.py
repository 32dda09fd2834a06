"""The worker's Celery task with the real pipeline: metrics, the inference wrapper and job-scoped logs.

The job's portrait is not an image, so the real pipeline claims it, fails it at the first stage
(``image_unreadable``) and no model has to run.
"""

from __future__ import annotations

import io
import json
import logging

import pytest
from celery import signals
from prometheus_client import REGISTRY

from shared.platform.db import Database
from shared.platform.logging import JsonFormatter, configure_logging
from shared.platform.metrics import InstrumentedInference
from shared.platform.models import Job
from shared.platform.settings import Settings
from shared.platform.storage import LocalStorage
from tests.support.factories import make_job_for_tests


@pytest.mark.slow  # builds the worker's context: torch, the tiny network, a dev C2PA chain (~6 s)
def test_a_failing_job_is_counted_timed_and_logged_with_its_ids(worker_env: Settings) -> None:
    import services.worker.tasks as tasks

    db = Database.from_settings(worker_env)
    try:
        with db.session() as session:
            job = make_job_for_tests(session)
            job_id, tenant_id, key = job.id, job.tenant_id, job.portrait_asset.storage_key
        LocalStorage(worker_env.local_storage_dir).put_bytes(key, b"these bytes are not an image")

        before = {
            "failures": REGISTRY.get_sample_value("goha_job_failures_total", {"code": "image_unreadable"})
            or 0,
            "runs": REGISTRY.get_sample_value(
                "goha_job_duration_seconds_count", {"job_type": "reenact", "outcome": "failed"}
            )
            or 0,
            "fetch": REGISTRY.get_sample_value("goha_worker_stage_seconds_count", {"stage": "fetch"}) or 0,
        }
        stream = io.StringIO()
        root = logging.getLogger()
        level = root.level
        # What Celery does at worker start: our receiver configures JSON logging; then into a buffer.
        signals.setup_logging.send(
            sender=None, loglevel=logging.INFO, logfile=None, format="", colorize=False
        )
        assert any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
        configure_logging(logging.INFO, json=True, stream=stream, take_over=())
        try:
            state = tasks.reenact.apply(args=[job_id]).get()
        finally:
            for handler in [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]:
                root.removeHandler(handler)
            root.setLevel(level)

        assert state == "failed"
        with db.session() as session:
            stored = session.get(Job, job_id)
            assert stored is not None and stored.state == "failed" and stored.error_code == "image_unreadable"
        assert isinstance(tasks.get_pipeline().ctx.inference, InstrumentedInference)
        assert REGISTRY.get_sample_value("goha_job_failures_total", {"code": "image_unreadable"}) == (
            before["failures"] + 1
        )
        assert REGISTRY.get_sample_value(
            "goha_job_duration_seconds_count", {"job_type": "reenact", "outcome": "failed"}
        ) == (before["runs"] + 1)
        assert REGISTRY.get_sample_value("goha_worker_stage_seconds_count", {"stage": "fetch"}) == (
            before["fetch"] + 1
        )
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        (failed,) = [line for line in lines if line["message"] == "job failed"]
        # job_id is passed explicitly there; tenant_id comes only from the pipeline's log context.
        assert failed["job_id"] == job_id and failed["tenant_id"] == tenant_id
        assert failed["error_code"] == "image_unreadable" and failed["logger"] == "goha.worker"
        job_lines = [line for line in lines if line["logger"].startswith("goha.")]
        assert job_lines and all(line.get("job_id") == job_id for line in job_lines)
    finally:
        db.dispose()
