"""Re-enqueue jobs stuck in ``queued`` (the broker was down at submit time, or a message was lost),
and retry job-finished webhooks that were not delivered (``shared.platform.webhooks``).

A job is stuck when it is queued and either its publish failed (``enqueued_at`` is NULL) or its last
publish is older than ``reconcile_stale_after_s``. Re-publishing a job that *is* still in the queue
is harmless: the worker claims jobs with a compare-and-swap, so only one delivery runs it. A job
published ``reconcile_max_enqueues`` times without ever starting fails with ``queue_timeout`` (counted in
``goha_job_failures_total{code="queue_timeout"}``).

Rows are claimed with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL) so several reconcilers can run; the
stamp is committed *before* publishing, like every enqueue.

    python -m shared.platform.reconciler [--once]
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
from shared.platform.jobs import JobState, transition
from shared.platform.metrics import ENQUEUE_FAILURES, JOBS_REENQUEUED, record_job_failure
from shared.platform.models import Job, utcnow
from shared.platform.repository import audit, mark_enqueue_failed
from shared.platform.settings import Settings, get_settings

log = logging.getLogger(__name__)

QUEUE_TIMEOUT = "queue_timeout"


@dataclass
class ReconcileReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    publish_errors: list[str] = field(default_factory=list)


def reconcile_once(
    db: Database,
    enqueue: Callable[[str], object],
    *,
    stale_after_s: float,
    max_enqueues: int,
    batch_size: int = 500,
    now: dt.datetime | None = None,
) -> ReconcileReport:
    report = ReconcileReport()
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=stale_after_s)
    to_publish: list[str] = []
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
            if job.enqueue_count >= max_enqueues:
                try:
                    transition(
                        session,
                        job,
                        JobState.FAILED,
                        reason="never started by a worker",
                        error_code=QUEUE_TIMEOUT,
                        error_message=f"the job was queued {job.enqueue_count} times and no worker started it",
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

    db = Database.from_settings(settings)
    app = make_celery(settings)
    while True:
        report = reconcile_once(
            db,
            lambda job_id: enqueue_job(job_id, app),
            stale_after_s=settings.reconcile_stale_after_s,
            max_enqueues=settings.reconcile_max_enqueues,
        )
        if report.requeued or report.failed or report.publish_errors:
            log.info("reconciled: %s", report)
        try:
            delivered = webhooks.deliver_pending(db.sessionmaker, settings)
            if delivered.delivered or delivered.failed:
                log.info("webhooks: %s", delivered)
        except Exception:  # a webhook problem must not stop the re-enqueueing
            log.exception("webhook pass failed")
        if once:
            return
        time.sleep(settings.reconcile_interval_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.platform.reconciler", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    from shared.platform.logging import configure_logging

    configure_logging("INFO")
    run_forever(get_settings(), once=args.once)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
