"""Prometheus metrics, safe with several processes (uvicorn workers, Celery prefork children).

Multiprocess mode is on when ``PROMETHEUS_MULTIPROC_DIR`` names an (empty at start) directory and
is set *before* ``prometheus_client`` is first imported; each process then writes its samples to
files there and ``render_latest`` aggregates them all. Without it, one process's registry is served.

Three kinds of series (docs/observability.md lists them all):

- counters and histograms written where things happen (gateway requests, worker job runs, inference
  calls); every process writes its own, the scrape sums them;
- ``goha_worker_jobs_running``, a gauge in ``livesum`` mode: a dead Celery child's share disappears once
  ``mark_process_dead`` ran for it (the worker calls it from ``worker_process_shutdown``);
- scrape-time gauges computed from shared state by collectors the *gateway* passes to ``render_latest``:
  jobs by state and the age of the oldest queued job (one ``GROUP BY`` on the jobs table), and the
  broker's queue depth. They are never registered globally, so a worker or the reconciler never
  queries the database on behalf of Prometheus, and several gateway replicas report the same value
  (aggregate them with ``max``, not ``sum``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from shared.platform.settings import Settings

log = logging.getLogger(__name__)

# --- gateway ------------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter("goha_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "goha_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
JOBS_SUBMITTED = Counter("goha_jobs_submitted_total", "Jobs accepted", ["job_type"])
INPUT_REFUSALS = Counter("goha_input_refusals_total", "Requests refused with a 4xx", ["code"])

# --- state machine and reconciler (any process) ---------------------------------------------------------
ENQUEUE_FAILURES = Counter("goha_enqueue_failures_total", "Job publishes that failed (reconciler retries)")
JOB_TRANSITIONS = Counter("goha_job_transitions_total", "Job state changes", ["to_state"])
RATE_LIMITER_FALLBACKS = Counter(
    "goha_rate_limiter_fallbacks_total",
    "Requests rate-limited by the process's own buckets because the shared backend (Redis) did not answer",
)
JOBS_REENQUEUED = Counter("goha_jobs_reenqueued_total", "Stuck queued jobs re-enqueued by the reconciler")

# --- worker -----------------------------------------------------------------------------------------------
# Jobs run from seconds (tiny profile, short clip) to an hour (paper profile, five-minute clip).
JOB_DURATION = Histogram(
    "goha_job_duration_seconds",
    "Worker time of one job run, from claiming the job to its outcome",
    ["job_type", "outcome"],
    buckets=(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0),
)
JOB_FRAMES_PER_SECOND = Histogram(
    "goha_job_frames_per_second",
    "Output frames per second of worker time, one observation per succeeded job",
    ["job_type"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0),
)
FRAMES_RENDERED = Counter(
    "goha_frames_rendered_total", "Output frames encoded (counted per chunk, so rate() is live)", ["job_type"]
)
JOB_FAILURES = Counter(
    "goha_job_failures_total", "Jobs moved to failed (worker, reconciler), by error code", ["code"]
)
WORKER_STAGE = Histogram(
    "goha_worker_stage_seconds",
    "Time one job run spent in a pipeline stage (summed over its chunks)",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
)
JOBS_RUNNING = Gauge(
    "goha_worker_jobs_running",
    "Jobs being executed by worker processes now",
    multiprocess_mode="livesum",  # summed over live processes; a dead child's file is dropped
)
INFERENCE_LATENCY = Histogram(
    "goha_inference_request_seconds",
    "Latency of one inference call seen by the worker (Triton round trip or in-process)",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
INFERENCE_FAILURES = Counter(
    "goha_inference_failures_total", "Inference calls that raised, by model and error code", ["model", "code"]
)

# The stage keys ReenactmentPipeline records in RunStats.timings ("<stage>_s"); anything else is not a stage.
WORKER_STAGES = (
    "fetch",
    "portrait_analysis",
    "reconstruct",
    "face_fit",
    "expression_render",
    "animate",
    "guardrails",
    "encode",
    "sign",
    "upload",
)
OUTCOME_RETRY = "retry"  # a transient failure left the run: the task retries the job


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class _DefaultRegistryView(Collector):
    """The process-wide registry as one collector, so extra collectors can be served beside it."""

    def collect(self) -> Iterable[Metric]:
        return DEFAULT_REGISTRY.collect()


def render_latest(collectors: Iterable[Collector] = ()) -> tuple[bytes, str]:
    """The exposition text for ``/metrics`` and its content type.

    ``collectors`` are scrape-time collectors (``gateway_collectors``) served beside the recorded
    series; they run in the scraping process only.
    """
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_enabled():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_DefaultRegistryView())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Call when a worker process exits (uvicorn/gunicorn hook, Celery ``worker_process_shutdown``) so its
    live gauges stop counting."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)


# --- worker helpers ---------------------------------------------------------------------------------------
class StageStats(Protocol):
    """What the pipeline's ``RunStats`` offers: frames written and seconds per ``<stage>_s`` key."""

    frames: int
    timings: dict[str, float]


@dataclass
class JobRun:
    """Filled in by the code inside ``observe_job_run``; read when the block ends."""

    job_type: str
    stats: StageStats
    outcome: str = OUTCOME_RETRY
    started: float = field(default_factory=time.perf_counter)


@contextmanager
def observe_job_run(job_type: str, stats: StageStats) -> Iterator[JobRun]:
    """Records one job run: the running gauge while inside, then duration by outcome, stage timings and
    (for a success) frames per second. Set ``run.outcome`` to the job's final state before leaving the
    block; leaving by an exception records ``retry`` (the task retries transient failures) and re-raises."""
    run = JobRun(job_type=job_type, stats=stats)
    JOBS_RUNNING.inc()
    try:
        yield run
    except BaseException:
        run.outcome = OUTCOME_RETRY
        raise
    finally:
        JOBS_RUNNING.dec()
        record_job_run(run.job_type, run.outcome, time.perf_counter() - run.started, run.stats)


def record_job_run(job_type: str, outcome: str, seconds: float, stats: StageStats) -> None:
    JOB_DURATION.labels(job_type=job_type, outcome=outcome).observe(seconds)
    for key, value in stats.timings.items():
        stage = key.removesuffix("_s")
        if stage in WORKER_STAGES:
            WORKER_STAGE.labels(stage=stage).observe(value)
    if outcome == "succeeded" and stats.frames > 0 and seconds > 0:
        JOB_FRAMES_PER_SECOND.labels(job_type=job_type).observe(stats.frames / seconds)


def record_frames(job_type: str, count: int) -> None:
    FRAMES_RENDERED.labels(job_type=job_type).inc(count)


def record_job_failure(code: str) -> None:
    JOB_FAILURES.labels(code=code).inc()


def error_code_of(exc: BaseException) -> str:
    """The machine-readable code of a platform error, else the exception's class name."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else type(exc).__name__


class InstrumentedInference:
    """Wraps an inference backend (``services.inference.backend.InferenceBackend``: Triton client or
    in-process) and times ``reconstruct`` and ``animate`` per call. Anything else is passed through,
    so it satisfies the same protocol and exposes the wrapped backend's extra attributes (``contract``).
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    @classmethod
    def wrap(cls, backend: Any) -> Any:
        return backend if isinstance(backend, cls) else cls(backend)

    def model_version(self) -> str:
        return str(self.backend.model_version())

    @property
    def planes_dtype(self) -> Any:
        return self.backend.planes_dtype

    def reconstruct(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("reconstruct", self.backend.reconstruct, args, kwargs)

    def animate(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("animate", self.backend.animate, args, kwargs)

    def close(self) -> None:
        self.backend.close()

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not defined here: the backend's own extras.
        if name == "backend":  # not set yet (copy, unpickling): never recurse
            raise AttributeError(name)
        return getattr(self.backend, name)

    @staticmethod
    def _timed(model: str, call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        start = time.perf_counter()
        try:
            result = call(*args, **kwargs)
        except Exception as exc:
            INFERENCE_FAILURES.labels(model=model, code=error_code_of(exc)).inc()
            raise
        INFERENCE_LATENCY.labels(model=model).observe(time.perf_counter() - start)
        return result


# --- scrape-time collectors (gateway only) ----------------------------------------------------------------
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")  # shared.platform.jobs.JobState


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


def _collector_up() -> GaugeMetricFamily:
    return _gauge(
        "goha_scrape_collector_up",
        "1 when the collector's last query answered (database, broker), else 0",
        ["collector"],
    )


def _jobs_by_state(counts: Mapping[str, int]) -> GaugeMetricFamily:
    family = _gauge("goha_jobs_by_state", "Jobs in the database per state (at scrape time)", ["state"])
    for state, count in sorted(counts.items()):
        family.add_metric([state], float(count))
    return family


def _oldest_queued(age: float | None) -> GaugeMetricFamily:
    family = _gauge(
        "goha_oldest_queued_job_age_seconds", "Age of the oldest queued job (0 when none is queued)"
    )
    if age is not None:
        family.add_metric([], age)
    return family


def _queue_depth(queue_name: str | None, depth: int | None) -> GaugeMetricFamily:
    family = _gauge("goha_queue_depth", "Messages waiting in the broker queue (at scrape time)", ["queue"])
    if queue_name is not None and depth is not None:
        family.add_metric([queue_name], float(depth))
    return family


def _stuck_running(count: int | None) -> GaugeMetricFamily:
    family = _gauge(
        "goha_running_jobs_lease_expired",
        "Running jobs whose worker stopped renewing its lease (at scrape time); the reconciler "
        "should recover them within a pass",
    )
    if count is not None:
        family.add_metric([], float(count))
    return family


# A running job without a lease (claimed by code older than leases) counts as stuck after this long
# without a write.
UNLEASED_RUNNING_STUCK_AFTER_S = 600.0


class ScrapeTimeCollector(Collector):
    """Runs scrape-time sources (``families()`` each) and reports each one's health in a single
    ``goha_scrape_collector_up{collector}`` family: a failing source never breaks the whole scrape."""

    def __init__(self, sources: Iterable[Any]) -> None:
        self.sources = list(sources)

    def describe(self) -> Iterable[Metric]:
        described = [family for source in self.sources for family in source.describe_families()]
        return [*described, _collector_up()]

    def collect(self) -> Iterable[Metric]:
        up = _collector_up()
        families: list[Metric] = []
        for source in self.sources:
            if not source.enabled:
                continue
            try:
                families.extend(source.families())
            except Exception as exc:  # the database or broker being down is itself worth a series
                log.warning("%s collector failed: %s: %s", source.name, type(exc).__name__, exc)
                up.add_metric([source.name], 0.0)
            else:
                up.add_metric([source.name], 1.0)
        return [*families, up]


class JobStateCollector(Collector):
    """``goha_jobs_by_state{state}`` and ``goha_oldest_queued_job_age_seconds`` from the jobs table.

    One ``SELECT state, count(*) ... GROUP BY state`` (served by the ``(state, enqueued_at)`` index) and
    one ``min(created_at)`` over queued jobs; a result is reused for ``min_interval_s`` so several
    scrapers do not multiply the load.
    """

    name = "jobs"

    def __init__(self, session_factory: Callable[[], Session], *, min_interval_s: float = 5.0) -> None:
        self.session_factory = session_factory
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, int], float | None] | None = None
        self._stuck = 0

    enabled = True

    def describe_families(self) -> list[Metric]:
        return [_jobs_by_state({}), _oldest_queued(None), _stuck_running(None)]

    def families(self) -> list[Metric]:
        counts, oldest_age = self.query()
        return [
            _jobs_by_state(counts),
            _oldest_queued(oldest_age or 0.0),
            _stuck_running(self._stuck),
        ]

    def describe(self) -> Iterable[Metric]:
        return ScrapeTimeCollector([self]).describe()

    def collect(self) -> Iterable[Metric]:
        return ScrapeTimeCollector([self]).collect()

    def query(self) -> tuple[dict[str, int], float | None]:
        """Counts per state (every known state present, 0 when none) and the oldest queued job's age."""
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.min_interval_s:
                return self._cached[1], self._cached[2]
            counts, oldest_age = self._query_database()
            self._cached = (now, counts, oldest_age)
            return counts, oldest_age

    def _query_database(self) -> tuple[dict[str, int], float | None]:
        from sqlalchemy import and_, func, or_, select

        from shared.platform.models import Job

        counts = dict.fromkeys(JOB_STATES, 0)
        with self.session_factory() as session:
            for state, count in session.execute(select(Job.state, func.count()).group_by(Job.state)):
                counts[str(state)] = int(count)
            oldest = session.scalar(select(func.min(Job.created_at)).where(Job.state == "queued"))
            now = dt.datetime.now(dt.UTC)
            unleased_cutoff = now - dt.timedelta(seconds=UNLEASED_RUNNING_STUCK_AFTER_S)
            self._stuck = int(
                session.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(
                        Job.state == "running",
                        or_(
                            Job.lease_expires_at < now,
                            and_(Job.lease_expires_at.is_(None), Job.updated_at < unleased_cutoff),
                        ),
                    )
                )
                or 0
            )
        if oldest is None:
            return counts, None
        if oldest.tzinfo is None:  # a driver that hands back naive UTC
            oldest = oldest.replace(tzinfo=dt.UTC)
        return counts, max(0.0, (dt.datetime.now(dt.UTC) - oldest).total_seconds())


# kombu's Redis transport keeps one list per priority step: the queue itself, then "<queue>\x06\x16<p>".
REDIS_PRIORITY_SEPARATOR = "\x06\x16"
REDIS_PRIORITY_STEPS = (3, 6, 9)


class QueueDepthCollector(Collector):
    """``goha_queue_depth{queue}``: messages waiting in the broker (not yet taken by a worker).

    Redis: ``LLEN`` of the queue's lists (one per priority step). Filesystem transport: the message
    files of the queue in its folder. Other brokers: the series is absent.
    """

    name = "queue"

    def __init__(
        self, broker_url: str, queue_name: str, *, folder: Path | None = None, timeout_s: float = 3.0
    ) -> None:
        self.broker_url = broker_url
        self.queue_name = queue_name
        self.folder = folder
        self.timeout_s = timeout_s
        self._redis: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> QueueDepthCollector:
        # The folder shared.platform.queue gives kombu's filesystem transport.
        folder = Path(settings.broker_folder) / "queue" if settings.broker_folder else None
        return cls(
            settings.broker_url,
            settings.queue_name,
            folder=folder,
            timeout_s=settings.broker_connect_timeout_s,
        )

    @property
    def kind(self) -> str | None:
        if self.broker_url.startswith(("redis://", "rediss://")):
            return "redis"
        if self.broker_url.startswith("filesystem://"):
            return "filesystem"
        return None

    @property
    def enabled(self) -> bool:
        return self.kind is not None

    def describe_families(self) -> list[Metric]:
        return [_queue_depth(None, None)]

    def families(self) -> list[Metric]:
        return [_queue_depth(self.queue_name, self.depth())]

    def describe(self) -> Iterable[Metric]:
        return ScrapeTimeCollector([self]).describe()

    def collect(self) -> Iterable[Metric]:
        return ScrapeTimeCollector([self]).collect()

    def depth(self) -> int:
        if self.kind == "redis":
            return self._redis_depth()
        if self.kind == "filesystem":
            return self._folder_depth()
        raise ValueError(f"queue depth is not supported for broker {self.broker_url.split(':', 1)[0]}")

    def _redis_depth(self) -> int:
        with self._lock:
            if self._redis is None:
                import redis

                self._redis = redis.Redis.from_url(
                    self.broker_url, socket_connect_timeout=self.timeout_s, socket_timeout=self.timeout_s
                )
            client = self._redis
        keys = [self.queue_name] + [
            f"{self.queue_name}{REDIS_PRIORITY_SEPARATOR}{step}" for step in REDIS_PRIORITY_STEPS
        ]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        return int(sum(pipe.execute()))

    def _folder_depth(self) -> int:
        if self.folder is None:
            raise ValueError("the filesystem broker needs its queue folder")
        # kombu names each message "<ms>_<uuid>.<queue>.msg" and moves it away when a worker takes it.
        wanted = f"{self.queue_name}.msg"
        with os.scandir(self.folder) as entries:
            return sum(1 for entry in entries if entry.name.partition(".")[2] == wanted)

    def close(self) -> None:
        with self._lock:
            if self._redis is not None:
                self._redis.close()
                self._redis = None


def gateway_collectors(session_factory: Callable[[], Session], settings: Settings) -> list[Collector]:
    """The scrape-time collectors the gateway serves on ``/metrics``."""
    return [
        ScrapeTimeCollector([JobStateCollector(session_factory), QueueDepthCollector.from_settings(settings)])
    ]


def scrape_time_families() -> list[Metric]:
    """Every family the scrape-time collectors can emit (for checks of dashboard queries)."""
    return [
        _jobs_by_state({}),
        _oldest_queued(None),
        _stuck_running(None),
        _queue_depth(None, None),
        _collector_up(),
    ]
