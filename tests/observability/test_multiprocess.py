"""Prometheus multiprocess mode: what several worker processes record is served summed by one scrape."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.platform import metrics
from shared.platform.db import Database
from shared.platform.jobs import JobState
from shared.platform.queue import make_celery
from shared.platform.settings import Settings
from tests.observability.conftest import MakeJobs

REPO_ROOT = Path(__file__).resolve().parents[2]

# One "Celery child": a finished job run (or one left running), frames, a failure and inference calls.
WRITER = textwrap.dedent(
    """
    import os, sys, time
    from dataclasses import dataclass, field
    from shared.platform import metrics

    @dataclass
    class Stats:
        frames: int = 0
        timings: dict = field(default_factory=dict)

    mode, frames = sys.argv[1], int(sys.argv[2])
    if mode == "left-running":
        metrics.JOBS_RUNNING.inc()  # a job in progress when the scrape comes
    else:
        stats = Stats()
        with metrics.observe_job_run("reenact", stats) as run:
            stats.frames = frames
            metrics.record_frames("reenact", frames)
            stats.timings.update(animate_s=1.5, encode_s=0.2)
            run.outcome = mode
        if mode == "failed":
            metrics.record_job_failure("driving_no_face")
        metrics.INFERENCE_LATENCY.labels(model="animate").observe(0.3)
    print(os.getpid())
    """
)


def run_writer(env: dict[str, str], mode: str, frames: int) -> int:
    result = subprocess.run(
        [sys.executable, "-c", WRITER, mode, str(frames)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(result.stdout.strip())


def value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert match, f"{series} missing from:\n{text}"
    return float(match[1])


def test_two_processes_are_summed_and_the_gateway_collectors_join_the_scrape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_db: Database, jobs_in: MakeJobs
) -> None:
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc), "PYTHONPATH": str(REPO_ROOT)}
    run_writer(env, "succeeded", 40)
    run_writer(env, "failed", 8)
    running_pid = run_writer(env, "left-running", 0)
    assert any(p.name.startswith("histogram_") for p in multiproc.iterdir())

    jobs_in(sqlite_db, JobState.QUEUED, 2)
    settings = Settings(var_dir=tmp_path / "var", queue_name="obs-multiproc")
    make_celery(settings)  # as the gateway does: creates the filesystem broker's folders
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc))
    text = metrics.render_latest(metrics.gateway_collectors(sqlite_db.sessionmaker, settings))[0].decode()

    assert value(text, 'goha_frames_rendered_total{job_type="reenact"}') == 48
    assert value(text, 'goha_job_duration_seconds_count{job_type="reenact",outcome="succeeded"}') == 1
    assert value(text, 'goha_job_duration_seconds_count{job_type="reenact",outcome="failed"}') == 1
    assert value(text, 'goha_job_frames_per_second_count{job_type="reenact"}') == 1  # successes only
    assert value(text, 'goha_worker_stage_seconds_count{stage="animate"}') == 2
    assert value(text, 'goha_worker_stage_seconds_sum{stage="animate"}') == pytest.approx(3.0)
    assert value(text, 'goha_job_failures_total{code="driving_no_face"}') == 1
    assert value(text, 'goha_inference_request_seconds_count{model="animate"}') == 2
    # livesum: the two finished runs are back to 0, the third process still counts one running job.
    assert value(text, "goha_worker_jobs_running") == 1
    # Scrape-time series from the database and the broker, next to the aggregated files.
    assert value(text, 'goha_jobs_by_state{state="queued"}') == 2
    assert value(text, 'goha_queue_depth{queue="obs-multiproc"}') == 0
    assert value(text, 'goha_scrape_collector_up{collector="jobs"}') == 1

    # The worker's worker_process_shutdown hook: a dead child's running jobs stop counting.
    metrics.mark_process_dead(running_pid)
    text = metrics.render_latest()[0].decode()
    assert value(text, "goha_worker_jobs_running") == 0
    assert value(text, 'goha_frames_rendered_total{job_type="reenact"}') == 48  # counters are kept
    assert "goha_jobs_by_state" not in text  # collectors run only where they are passed (the gateway)
