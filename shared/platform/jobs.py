"""The job state machine: the one place that decides which state changes are legal.

Every change is a compare-and-swap (``UPDATE ... WHERE id = :id AND state = :expected``), so two
processes racing on the same job (a duplicated queue message, a cancel arriving while a worker
starts) cannot both win: the loser gets ``IllegalTransition``. Each change appends a ``JobEvent``.

    queued  -> running | cancelled | failed
    running -> succeeded | failed | cancelled | queued   (queued: handed back for a retry)
    succeeded, failed, cancelled: terminal
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.platform.errors import IllegalTransition
from shared.platform.metrics import JOB_TRANSITIONS
from shared.platform.models import Job, JobEvent, utcnow


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


class JobType(enum.StrEnum):
    REENACT = "reenact"
    ORBIT = "orbit"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


def job_links(job: Job, base_url: str = "") -> dict[str, str]:
    """The job's API links as clients see them (API answers, webhooks): ``cancel`` while it can be,
    ``result`` once it succeeded and until its data are deleted."""
    link = f"{base_url.rstrip('/')}/v1/jobs/{job.id}"
    links = {"self": link, "provenance": f"{link}/provenance"}
    state = JobState(job.state)
    if not state.terminal:
        links["cancel"] = f"{link}/cancel"
    if state is JobState.SUCCEEDED and job.media_deleted_at is None:
        links["result"] = f"{link}/result"
    return links


LEGAL_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def is_legal(current: JobState | str, requested: JobState | str) -> bool:
    return JobState(requested) in LEGAL_TRANSITIONS[JobState(current)]


def record_event(
    session: Session,
    job: Job,
    from_state: JobState | None,
    to_state: JobState,
    *,
    reason: str = "",
    error_code: str | None = None,
    details: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> JobEvent:
    event = JobEvent(
        job_id=job.id,
        at=at or utcnow(),
        from_state=from_state.value if from_state else None,
        to_state=to_state.value,
        reason=reason[:200],
        error_code=error_code,
        details=dict(details or {}),
    )
    session.add(event)
    return event


def transition(
    session: Session,
    job: Job,
    new_state: JobState | str,
    *,
    reason: str = "",
    error_code: str | None = None,
    error_message: str | None = None,
    details: dict[str, Any] | None = None,
) -> JobEvent:
    """Move ``job`` to ``new_state`` if legal and nobody moved it meanwhile; append the event.

    ``failed`` requires an ``error_code``. Raises ``IllegalTransition`` when the change is not allowed
    from the job's current state in the database (the in-memory job is refreshed in that case).
    The caller commits.
    """
    requested = JobState(new_state)
    current = JobState(job.state)
    if requested not in LEGAL_TRANSITIONS[current]:
        raise IllegalTransition(job.id, current.value, requested.value)
    if requested is JobState.FAILED and not error_code:
        raise ValueError("a failed job needs an error_code")

    now = utcnow()
    values: dict[str, Any] = {"state": requested.value, "updated_at": now}
    if requested is JobState.RUNNING:
        values["attempts"] = Job.attempts + 1
        values["started_at"] = now
        values["error_code"] = None
        values["error_message"] = None
    if requested is JobState.QUEUED:
        values["enqueued_at"] = None  # handed back: the next enqueue stamps it
    if requested.terminal:
        values["finished_at"] = now
    if requested is JobState.FAILED:
        values["error_code"] = error_code
        values["error_message"] = (error_message or error_code or "")[:4000]

    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == current.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(job)
        raise IllegalTransition(job.id, job.state, requested.value)
    session.refresh(job)  # pick up server-side expressions (attempts + 1)
    JOB_TRANSITIONS.labels(to_state=requested.value).inc()
    return record_event(
        session, job, current, requested, reason=reason, error_code=error_code, details=details
    )


def update_progress(session: Session, job: Job, frames_done: int, frames_total: int | None = None) -> bool:
    """Write progress of a running job. Returns False when the job is no longer running (e.g. cancelled):
    the worker should stop. Progress is not an event (too frequent); state changes are."""
    values: dict[str, Any] = {"frames_done": max(0, int(frames_done)), "updated_at": utcnow()}
    if frames_total is not None:
        values["frames_total"] = max(0, int(frames_total))
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == JobState.RUNNING.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.refresh(job)
    return result.rowcount == 1  # type: ignore[attr-defined]


def set_result(
    session: Session,
    job: Job,
    *,
    storage_key: str,
    sha256: str,
    size_bytes: int,
    media_type: str = "video/mp4",
    timings: dict[str, float] | None = None,
) -> None:
    """Attach the output object to a running job (before ``transition(..., SUCCEEDED)``)."""
    if JobState(job.state) is not JobState.RUNNING:
        raise IllegalTransition(job.id, job.state, "result attached")
    job.result_key = storage_key
    job.result_sha256 = sha256
    job.result_size_bytes = size_bytes
    job.result_media_type = media_type
    if timings:
        job.timings = {**(job.timings or {}), **{k: round(float(v), 4) for k, v in timings.items()}}
    job.updated_at = utcnow()
    session.flush()
