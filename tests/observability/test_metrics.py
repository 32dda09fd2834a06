"""Worker metrics helpers, the inference wrapper, the gateway's scrape-time collectors and /metrics."""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from services.inference.backend import AnimateOutput, InferenceBackend
from services.inference.errors import InferenceUnavailable
from shared.platform import metrics
from shared.platform.db import Database
from shared.platform.jobs import JobState
from shared.platform.models import Job
from shared.platform.queue import enqueue_job, make_celery
from shared.platform.settings import Settings
from tests.observability.conftest import MakeJobs


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Stats:
    """Shaped like the pipeline's RunStats (frames + "<stage>_s" timings)."""

    frames: int = 0
    timings: dict[str, float] = field(default_factory=dict)


# --- worker helpers ---------------------------------------------------------------------------------------


def test_a_succeeded_run_records_duration_stages_frames_and_fps() -> None:
    job_type = f"t{secrets.token_hex(3)}"  # a label value of its own: deltas are this test's alone
    stages_before = {s: sample("goha_worker_stage_seconds_count", stage=s) for s in metrics.WORKER_STAGES}
    fetch_sum = sample("goha_worker_stage_seconds_sum", stage="fetch")
    stats = Stats()
    with metrics.observe_job_run(job_type, stats) as run:
        assert sample("goha_worker_jobs_running") >= 1  # visible while the job runs
        for chunk in (16, 16, 4):  # as the pipeline does after each encoded chunk
            stats.frames += chunk
            metrics.record_frames(job_type, chunk)
        stats.timings.update(fetch_s=0.25, animate_s=3.0, encode_s=0.5, total_s=4.0, unknown_s=9.0)
        run.outcome = JobState.SUCCEEDED.value
    assert sample("goha_frames_rendered_total", job_type=job_type) == 36
    assert sample("goha_job_duration_seconds_count", job_type=job_type, outcome="succeeded") == 1
    duration = sample("goha_job_duration_seconds_sum", job_type=job_type, outcome="succeeded")
    assert duration > 0
    assert sample("goha_job_frames_per_second_count", job_type=job_type) == 1
    assert sample("goha_job_frames_per_second_sum", job_type=job_type) == pytest.approx(36 / duration)
    observed = {
        s
        for s in metrics.WORKER_STAGES
        if sample("goha_worker_stage_seconds_count", stage=s) > stages_before[s]
    }
    assert observed == {"fetch", "animate", "encode"}  # total_s and unknown keys are not stages
    assert sample("goha_worker_stage_seconds_sum", stage="fetch") == pytest.approx(fetch_sum + 0.25)
    # A 3 s stage lands in the le=5 bucket but not in le=2.5 (the histogram is real, not a sum).
    assert sample("goha_worker_stage_seconds_bucket", stage="animate", le="5.0") > sample(
        "goha_worker_stage_seconds_bucket", stage="animate", le="2.5"
    )


def test_a_failed_or_transient_run_has_no_fps_and_leaves_the_running_gauge() -> None:
    job_type = f"t{secrets.token_hex(3)}"
    running = sample("goha_worker_jobs_running")
    with metrics.observe_job_run(job_type, Stats(frames=10)) as run:
        run.outcome = JobState.FAILED.value
    with pytest.raises(InferenceUnavailable):
        with metrics.observe_job_run(job_type, Stats()) as run:
            run.outcome = "succeeded"  # overwritten: leaving by an exception means the task retries
            raise InferenceUnavailable("triton is down")
    assert sample("goha_job_duration_seconds_count", job_type=job_type, outcome="failed") == 1
    assert sample("goha_job_duration_seconds_count", job_type=job_type, outcome="retry") == 1
    assert sample("goha_job_duration_seconds_count", job_type=job_type, outcome="succeeded") == 0
    assert sample("goha_job_frames_per_second_count", job_type=job_type) == 0
    assert sample("goha_worker_jobs_running") == running


def test_failures_are_counted_by_code() -> None:
    code = f"code_{secrets.token_hex(3)}"
    metrics.record_job_failure(code)
    metrics.record_job_failure(code)
    assert sample("goha_job_failures_total", code=code) == 2


# --- inference wrapper ------------------------------------------------------------------------------------


class ArrayBackend:
    """A deterministic backend that computes with numpy (the wrapper's contract is shape-agnostic)."""

    planes_dtype = np.dtype(np.float32)
    contract = "the backend's own attribute"

    def __init__(self) -> None:
        self.closed = False
        self.down = False

    def model_version(self) -> str:
        return "array/1"

    def reconstruct(self, portrait: np.ndarray, mask: np.ndarray, camera: np.ndarray) -> np.ndarray:
        return np.stack([portrait * mask] * 3, axis=1)

    def animate(self, planes: np.ndarray, expr_renders: np.ndarray, cameras: np.ndarray) -> AnimateOutput:
        if self.down:
            raise InferenceUnavailable("connection refused")
        frames = expr_renders + planes.mean()
        low_res = frames[:, :, ::2, ::2]
        return AnimateOutput(low_res=low_res, frames=frames, alpha=np.ones_like(low_res[:, :1]))

    def close(self) -> None:
        self.closed = True


def test_instrumented_inference_times_each_model_and_counts_failures() -> None:
    backend = ArrayBackend()
    wrapped = metrics.InstrumentedInference.wrap(backend)
    assert metrics.InstrumentedInference.wrap(wrapped) is wrapped  # never timed twice
    assert isinstance(wrapped, InferenceBackend)
    assert wrapped.contract == backend.contract and wrapped.model_version() == "array/1"
    before = {m: sample("goha_inference_request_seconds_count", model=m) for m in ("reconstruct", "animate")}
    failures = sample("goha_inference_failures_total", model="animate", code="inference_unavailable")

    portrait = np.ones((1, 3, 8, 8), np.float32)
    planes = wrapped.reconstruct(portrait, np.ones((1, 1, 8, 8), np.float32), np.zeros((1, 25), np.float32))[
        0
    ]
    assert planes.shape == (3, 3, 8, 8)
    for _ in range(3):
        low_res, frames = wrapped.animate(planes, np.zeros((2, 3, 8, 8), np.float32), np.zeros((2, 25)))
        assert frames.shape == (2, 3, 8, 8) and low_res.shape == (2, 3, 4, 4)
    backend.down = True
    with pytest.raises(InferenceUnavailable):
        wrapped.animate(planes, np.zeros((2, 3, 8, 8), np.float32), np.zeros((2, 25)))
    wrapped.close()

    assert backend.closed
    assert sample("goha_inference_request_seconds_count", model="reconstruct") == before["reconstruct"] + 1
    assert sample("goha_inference_request_seconds_count", model="animate") == before["animate"] + 3
    assert (
        sample("goha_inference_failures_total", model="animate", code="inference_unavailable") == failures + 1
    )


# --- scrape-time collectors -------------------------------------------------------------------------------


def collected(collector: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in collector.collect():
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def by_state(collector: metrics.JobStateCollector) -> dict[str, float]:
    return {dict(k)["state"]: v for k, v in collected(collector)["goha_jobs_by_state"].items()}


def test_job_state_collector_counts_jobs_by_state_in_the_database(
    any_db: Database, jobs_in: MakeJobs
) -> None:
    collector = metrics.JobStateCollector(any_db.sessionmaker, min_interval_s=0)
    before = by_state(collector)
    assert set(before) == {s.value for s in JobState}  # every state present, zeros included
    wanted = {JobState.QUEUED: 3, JobState.RUNNING: 2, JobState.SUCCEEDED: 1, JobState.FAILED: 2}
    for state, count in wanted.items():
        jobs_in(any_db, state, count)
    after = by_state(collector)
    assert {s: after[s] - before[s] for s in after} == {
        "queued": 3,
        "running": 2,
        "succeeded": 1,
        "failed": 2,
        "cancelled": 0,
    }
    assert collected(collector)["goha_scrape_collector_up"] == {(("collector", "jobs"),): 1.0}


def test_oldest_queued_age_and_the_result_cache(sqlite_db: Database, jobs_in: MakeJobs) -> None:
    cached = metrics.JobStateCollector(sqlite_db.sessionmaker, min_interval_s=3600)
    fresh = metrics.JobStateCollector(sqlite_db.sessionmaker, min_interval_s=0)
    assert collected(fresh)["goha_oldest_queued_job_age_seconds"] == {(): 0.0}
    assert by_state(cached)["queued"] == 0
    (old,) = jobs_in(sqlite_db, JobState.QUEUED, 1)
    jobs_in(sqlite_db, JobState.QUEUED, 1)
    with sqlite_db.session() as session:
        an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        session.execute(update(Job).where(Job.id == old).values(created_at=an_hour_ago))
    age = collected(fresh)["goha_oldest_queued_job_age_seconds"][()]
    assert 3600 <= age < 3600 + 120
    assert by_state(fresh)["queued"] == 2
    assert by_state(cached)["queued"] == 0  # reused within min_interval_s: scrapers do not multiply queries


def test_a_database_that_is_down_reports_the_collector_down(tmp_path: Path) -> None:
    broken = Database(f"sqlite:///{tmp_path / 'no-tables.sqlite3'}")  # never migrated: the query fails
    try:
        result = collected(metrics.JobStateCollector(broken.sessionmaker, min_interval_s=0))
    finally:
        broken.dispose()
    assert result == {"goha_scrape_collector_up": {(("collector", "jobs"),): 0.0}}


def test_queue_depth_of_the_filesystem_broker(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", queue_name=f"q-{secrets.token_hex(3)}")
    app = make_celery(settings)
    collector = metrics.QueueDepthCollector.from_settings(settings)
    assert collector.depth() == 0
    for _ in range(3):
        enqueue_job(secrets.token_hex(8), app)
    other = make_celery(settings.model_copy(update={"queue_name": "another-queue"}))
    enqueue_job("not-ours", other)  # same folder, other queue: not counted
    assert collected(collector)["goha_queue_depth"] == {(("queue", settings.queue_name),): 3.0}


@pytest.mark.integration
def test_queue_depth_of_the_redis_broker(goha_redis_url: str) -> None:
    import redis

    queue = f"goha-obs-{secrets.token_hex(4)}"
    settings = Settings(broker_url=goha_redis_url, result_backend=goha_redis_url, queue_name=queue)
    app = make_celery(settings)
    collector = metrics.QueueDepthCollector.from_settings(settings)
    client = redis.Redis.from_url(goha_redis_url)
    try:
        assert collector.depth() == 0
        for _ in range(4):
            enqueue_job(secrets.token_hex(8), app)
        # A prioritised message lands in kombu's "<queue>\x06\x16<step>" list: still waiting, still counted.
        app.send_task("goha.reenact", args=["urgent"], queue=queue, priority=9, ignore_result=True)
        assert collected(collector)["goha_queue_depth"] == {(("queue", queue),): 5.0}
    finally:
        collector.close()
        client.delete(queue, *(f"{queue}{metrics.REDIS_PRIORITY_SEPARATOR}{p}" for p in (3, 6, 9)))
        client.close()


def test_an_unreachable_broker_reports_the_collector_down() -> None:
    collector = metrics.QueueDepthCollector("redis://127.0.0.1:1/0", "goha", timeout_s=0.5)
    assert collected(collector) == {"goha_scrape_collector_up": {(("collector", "queue"),): 0.0}}
    assert collected(metrics.QueueDepthCollector("amqp://host//", "goha")) == {}


# --- the gateway's /metrics -------------------------------------------------------------------------------


def test_gateway_metrics_serves_recorded_and_scrape_time_series(tmp_path: Path, jobs_in: MakeJobs) -> None:
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app

    settings = Settings(var_dir=tmp_path / "var", provenance_signing_key="obs-tests-signing-key-0123456789")
    app = create_app(settings)
    with TestClient(app) as client:
        db = app.state.ctx.db
        jobs_in(db, JobState.QUEUED, 2)
        jobs_in(db, JobState.FAILED, 1)
        enqueue_job("waiting", app.state.ctx.celery)
        response = client.get("/metrics")
        assert response.status_code == 200
        text = response.text
        assert re.search(r'^goha_jobs_by_state\{state="queued"\} 2\.0$', text, re.M), text
        assert re.search(r'^goha_jobs_by_state\{state="failed"\} 1\.0$', text, re.M)
        assert re.search(r'^goha_jobs_by_state\{state="cancelled"\} 0\.0$', text, re.M)
        assert re.search(rf'^goha_queue_depth\{{queue="{settings.queue_name}"\}} 1\.0$', text, re.M)
        assert re.search(r'^goha_scrape_collector_up\{collector="jobs"\} 1\.0$', text, re.M)
        assert "goha_http_requests_total" in text  # the recorded series are still there
        # The collectors belong to this app; nothing was registered in the process-wide registry.
        assert REGISTRY.get_sample_value("goha_jobs_by_state", {"state": "queued"}) is None
