"""The Celery app of the worker: ``celery -A services.worker.tasks worker``.

One task, ``goha.reenact(job_id)``, late-acknowledged so a killed worker's job is redelivered.
Each delivery claims the job under a lease (``shared.platform.leases``): a delivery of a job that is
running under another worker's live lease does nothing, a job started ``worker_max_attempts`` times
fails with ``worker_crashed``, and a heartbeat renews the lease while the job runs (a dead worker's
job is recovered by the reconciler once its lease expires). Transient inference/storage/database
failures are retried with exponential backoff under the same claim; past the budget
(``Settings.worker_retries``, ``worker_retry_max_delay_s``) the job fails with its code. The task never
calls a job-finished webhook: the reconciler's dispatcher does (``shared.platform.webhooks``), so no
receiver can hold a worker.
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
from shared.platform import leases
from shared.platform.errors import IllegalTransition
from shared.platform.jobs import ClaimOutcome, JobState, holding_claim
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
def reenact(self: Task, job_id: str, owner_id: str | None = None) -> str:
    """``owner_id`` is set only by this task's own retries: the retry resumes the same claim."""
    with job_context(job_id):  # every log line of the job carries its id
        pipeline = get_pipeline()
        settings = get_settings()
        sessions = pipeline.ctx.session_factory
        owner_id = owner_id or leases.new_owner_id()
        try:
            outcome = leases.claim_job(
                sessions,
                job_id,
                owner_id,
                lease_s=settings.worker_lease_s,
                max_attempts=settings.worker_max_attempts,
            )
            if outcome is ClaimOutcome.EXHAUSTED:
                return JobState.FAILED.value
            if not outcome.runs:
                return outcome.value
            with leases.leased(sessions, job_id, owner_id, lease_s=settings.worker_lease_s):
                state = pipeline.run(job_id)
            leases.discard_unrecorded_result(sessions, pipeline.ctx.storage, job_id, owner_id)
            return state
        except IllegalTransition as exc:
            # The job was handed to another claim (our lease expired) or cancelled: what this delivery
            # made is not recorded, and must not stay behind either.
            log.warning("claim lost; the job's outcome is not ours to write: %s", exc)
            leases.discard_unrecorded_result(sessions, pipeline.ctx.storage, job_id, owner_id)
            return "superseded"
        except (*TRANSIENT_ERRORS, *leases.DATABASE_UNAVAILABLE_ERRORS) as exc:
            database_down = isinstance(exc, leases.DATABASE_UNAVAILABLE_ERRORS)
            code = "database_unavailable" if database_down else transient_code(exc)
            attempt = self.request.retries
            if attempt >= settings.worker_retries:
                try:
                    with holding_claim(owner_id):
                        failed = pipeline.fail_job(job_id, code, f"gave up after {attempt} retries: {exc}")
                except (IllegalTransition, *leases.DATABASE_UNAVAILABLE_ERRORS) as final:
                    # The database is still down (or the job is no longer ours): the lease runs out and
                    # the reconciler recovers the job; nothing is lost by giving up here.
                    log.warning("could not record the failure: %s", final)
                    return "abandoned"
                return failed
            countdown = retry_delay(attempt, settings.worker_retry_max_delay_s)
            log.warning(
                "transient failure, retrying",
                extra={"job_id": job_id, "error_code": code, "retry": attempt + 1, "countdown_s": countdown},
            )
            try:  # the job stays this claim's while the retry waits
                leases.extend_lease(sessions, job_id, owner_id, countdown + settings.worker_lease_s)
            except Exception as renew_error:  # the database is down: the retry's claim resumes or recovers
                log.warning("could not extend the lease before retrying: %s", renew_error)
            raise self.retry(
                exc=exc, countdown=countdown, args=[job_id], kwargs={"owner_id": owner_id}
            ) from exc


def retry_delay(attempt: int, max_delay_s: float) -> float:
    """Seconds before retry ``attempt + 1``: 1, 2, 4... capped at ``max_delay_s``."""
    return min(max_delay_s, 2.0 ** min(attempt, 62))
