"""Recover jobs whose message or worker was lost, and deliver job-finished webhooks
(``shared.platform.webhooks``: a dispatcher thread, every ``webhook_interval_s``).

Queued: a job is re-published when its publish failed (``enqueued_at`` is NULL), or its last publish is
older than ``reconcile_stale_after_s`` *and its message is no longer in the broker* (neither waiting
in the queue nor held unacknowledged by a worker: ``queue.pending_job_ids``). A job simply waiting in
a backlog is left alone, however long the backlog: it is never published twice and never failed for
waiting. A job whose message was lost ``reconcile_max_enqueues`` times fails with ``queue_timeout``
(counted in ``goha_job_failures_total{code="queue_timeout"}``). When the broker cannot be inspected the
pass falls back to the age alone (harmless: workers claim jobs with a compare-and-swap).

Running: a job whose lease expired (its worker died, hung or lost the database: no heartbeat for
``worker_lease_s``) is handed back to the queue and re-published, or failed with ``worker_crashed``
once it has been started ``worker_max_attempts`` times (``shared.platform.jobs.claim``).

Rows are claimed with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL) so several reconcilers can run; the
stamp is committed *before* publishing, like every enqueue.

    python -m services.reconciler [--once]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import or_, select

from shared.platform import webhooks
from shared.platform.db import Database
from shared.platform.errors import IllegalTransition
from shared.platform.jobs import JobState, fail_crashed, transition
from shared.platform.metrics import ENQUEUE_FAILURES, JOBS_REENQUEUED, record_job_failure
from shared.platform.models import Job, utcnow
from shared.platform.production import require_production_ready
from shared.platform.repository import audit, mark_enqueue_failed
from shared.platform.settings import Settings, get_settings

log = logging.getLogger(__name__)

QUEUE_TIMEOUT = "queue_timeout"


@dataclass
class ReconcileReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    publish_errors: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # stale but their message is in the broker
    recovered: list[str] = field(default_factory=list)  # running with an expired lease: handed back
    crashed: list[str] = field(default_factory=list)  # running with an expired lease, out of attempts


def reconcile_once(
    db: Database,
    enqueue: Callable[[str], object],
    *,
    stale_after_s: float,
    max_enqueues: int,
    pending: Callable[[], set[str] | None] | None = None,
    max_attempts: int = 3,
    batch_size: int = 500,
    now: dt.datetime | None = None,
) -> ReconcileReport:
    """One pass. ``pending`` returns the job ids whose message is in the broker (None: unknown)."""
    report = ReconcileReport()
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=stale_after_s)
    to_publish: list[str] = []
    with db.session() as session:
        expired = (
            select(Job)
            .where(
                Job.state == JobState.RUNNING.value,
                or_(
                    Job.lease_expires_at < now,
                    # running without a lease (claimed before leases existed): judged by its last write
                    (Job.lease_expires_at.is_(None)) & (Job.updated_at < cutoff),
                ),
            )
            .order_by(Job.created_at)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        for job in session.scalars(expired):
            lease = job.lease_expires_at
            still_expired = (
                [Job.lease_expires_at == lease] if lease is not None else [Job.lease_expires_at.is_(None)]
            )
            try:
                if job.attempts >= max_attempts:
                    fail_crashed(session, job, reason="lease expired after the last attempt")
                    report.crashed.append(job.id)
                    continue
                transition(
                    session,
                    job,
                    JobState.QUEUED,
                    reason="lease expired: the worker stopped renewing it",
                    details={"owner": job.owner_id, "attempts": job.attempts},
                    where=still_expired,  # a heartbeat that just renewed it wins
                )
            except IllegalTransition:
                continue
            job.enqueued_at = now
            to_publish.append(job.id)
            report.recovered.append(job.id)
        if report.recovered or report.crashed:
            audit(
                session,
                actor="reconciler",
                action="job.recover_expired_lease",
                details={"requeued": report.recovered, "failed": report.crashed},
            )
    in_broker = pending() if pending is not None else None
    with db.session() as session:
        query = (
            select(Job)
            .where(
                Job.state == JobState.QUEUED.value, or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff)
            )
            .order_by(Job.created_at)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        for job in session.scalars(query):
            if job.enqueued_at is not None and in_broker is not None and job.id in in_broker:
                report.waiting.append(job.id)  # in a backlog, not lost: leave it where it is
                continue
            if job.enqueue_count >= max_enqueues:
                try:
                    transition(
                        session,
                        job,
                        JobState.FAILED,
                        reason="never started by a worker",
                        error_code=QUEUE_TIMEOUT,
                        error_message=f"the job's message was lost {job.enqueue_count} times and no worker "
                        "started it",
                    )
                except IllegalTransition:
                    continue
                report.failed.append(job.id)
                continue
            job.enqueue_count += 1
            job.enqueued_at = now
            to_publish.append(job.id)
        if report.failed:
            audit(
                session, actor="reconciler", action="job.fail_unstarted", details={"job_ids": report.failed}
            )
    # Counted once the failed transitions are committed (like the worker's fail_job): a rolled-back
    # pass fails nothing, and the failure-ratio alert must see jobs that never started too.
    for _ in report.failed:
        record_job_failure(QUEUE_TIMEOUT)
    for _ in report.crashed:
        record_job_failure("worker_crashed")
    for job_id in to_publish:  # after commit, like every enqueue
        try:
            enqueue(job_id)
        except Exception as exc:
            log.warning("re-enqueue of %s failed: %s", job_id, exc)
            ENQUEUE_FAILURES.inc()
            report.publish_errors.append(job_id)
            with db.session() as session:
                mark_enqueue_failed(session, job_id)
            continue
        JOBS_REENQUEUED.inc()
        report.requeued.append(job_id)
    if report.requeued:
        with db.session() as session:
            audit(session, actor="reconciler", action="job.reenqueue", details={"job_ids": report.requeued})
    return report


def run_forever(settings: Settings, *, once: bool = False) -> None:
    from shared.platform.queue import enqueue_job, make_celery

    require_production_ready(settings, "reconciler")  # GOHA_PRODUCTION: no embedded default, no placeholder
    db = Database.from_settings(settings)
    app = make_celery(settings)
    dispatcher: webhooks.Dispatcher | None = None
    while True:
        report = reconcile_once(
            db,
            lambda job_id: enqueue_job(job_id, app),
            stale_after_s=settings.reconcile_stale_after_s,
            max_enqueues=settings.reconcile_max_enqueues,
            pending=lambda: _pending_or_none(app),
            max_attempts=settings.worker_max_attempts,
        )
        if report.requeued or report.failed or report.publish_errors or report.crashed:
            log.info("reconciled: %s", report)
        if once:
            try:
                delivered = webhooks.deliver_pending(db.sessionmaker, settings)
                if delivered.delivered or delivered.failed:
                    log.info("webhooks: %s", delivered)
            except Exception:  # a webhook problem must not stop the re-enqueueing
                log.exception("webhook pass failed")
            return
        if dispatcher is None:  # job-finished webhooks, every webhook_interval_s, in their own thread
            dispatcher = webhooks.Dispatcher(db.sessionmaker, settings).start()
        time.sleep(settings.reconcile_interval_s)


def _pending_or_none(app: object) -> set[str] | None:
    from shared.platform.queue import pending_job_ids

    try:
        return pending_job_ids(app)  # type: ignore[arg-type]
    except Exception as exc:  # the broker is down: the age alone decides, as before
        log.warning("cannot inspect the broker's queue: %s", exc)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.reconciler", description=__doc__.split("\n")[0])
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    from shared.platform.logging import configure_logging

    configure_logging("INFO")
    run_forever(get_settings(), once=args.once)
    return 0
