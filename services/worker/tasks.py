"""The Celery app of the worker: ``celery -A services.worker.tasks worker``.

One task, ``goha.reenact(job_id)``, late-acknowledged so a killed worker's job is redelivered.
Transient inference/storage failures are retried with exponential backoff; past the budget
(``Settings.worker_retries``, ``worker_retry_max_delay_s``) the job fails with its code.
"""

from __future__ import annotations

import logging
import os
import threading

from celery import Task
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown

from services.worker.context import build_context
from services.worker.errors import TRANSIENT_ERRORS, transient_code
from services.worker.pipeline import ReenactmentPipeline
from shared.platform import webhooks
from shared.platform.jobs import TERMINAL_STATES
from shared.platform.logging import configure_logging, job_context
from shared.platform.metrics import InstrumentedInference, mark_process_dead
from shared.platform.queue import REENACT_TASK, make_celery
from shared.platform.settings import get_settings

log = logging.getLogger("goha.worker")

app = make_celery(get_settings(), name="goha-worker")

_pipeline: ReenactmentPipeline | None = None
_pipeline_lock = threading.Lock()


def get_pipeline() -> ReenactmentPipeline:
    """Built on first use in each process: DB, storage and gRPC clients never cross a fork."""
    global _pipeline
    with _pipeline_lock:
        if _pipeline is None:
            context = build_context(get_settings())
            context.inference = InstrumentedInference.wrap(context.inference)  # latency per Triton model
            _pipeline = ReenactmentPipeline(context)
        return _pipeline


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    global _pipeline
    _pipeline = None


@setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_: object) -> None:
    """JSON lines instead of Celery's own format; the level is the worker's ``--loglevel``."""
    configure_logging(loglevel or get_settings().log_level)


@worker_process_shutdown.connect
def _drop_live_metrics(**_: object) -> None:
    mark_process_dead(os.getpid())  # this child's share of the live gauges (jobs running) stops counting


@app.task(
    name=REENACT_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,  # the budget is the settings', checked in the task body
    # Not shared: a shared task would be copied into every Celery app created later in the process.
    shared=False,
)
def reenact(self: Task, job_id: str) -> str:
    with job_context(job_id):  # every log line of the job carries its id
        pipeline = get_pipeline()
        try:
            return notify(pipeline, job_id, pipeline.run(job_id))
        except TRANSIENT_ERRORS as exc:
            code = transient_code(exc)
            settings = get_settings()
            attempt = self.request.retries
            if attempt >= settings.worker_retries:
                failed = pipeline.fail_job(job_id, code, f"gave up after {attempt} retries: {exc}")
                return notify(pipeline, job_id, failed)
            countdown = retry_delay(attempt, settings.worker_retry_max_delay_s)
            log.warning(
                "transient failure, retrying",
                extra={"job_id": job_id, "error_code": code, "retry": attempt + 1, "countdown_s": countdown},
            )
            raise self.retry(exc=exc, countdown=countdown) from exc


def notify(pipeline: ReenactmentPipeline, job_id: str, state: str) -> str:
    """The job-finished webhook's first attempt, right away (the reconciler retries); returns ``state``."""
    if state in TERMINAL_STATES:  # not for a duplicate delivery's "missing" or "skipped"
        try:
            webhooks.deliver_pending(pipeline.ctx.session_factory, get_settings(), job_ids=[job_id])
        except Exception:  # the job is done whatever happens to its notification
            log.exception("webhook delivery failed", extra={"job_id": job_id})
    return state


def retry_delay(attempt: int, max_delay_s: float) -> float:
    """Seconds before retry ``attempt + 1``: 1, 2, 4... capped at ``max_delay_s``."""
    return min(max_delay_s, 2.0 ** min(attempt, 62))
