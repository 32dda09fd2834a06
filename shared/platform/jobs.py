"""The job state machine: the one place that decides which state changes are legal.

Every change is a compare-and-swap (``UPDATE ... WHERE id = :id AND state = :expected``), so two
processes racing on the same job (a duplicated queue message, a cancel arriving while a worker
starts) cannot both win: the loser gets ``IllegalTransition``. Each change appends a ``JobEvent``.

    queued  -> running | cancelled | failed
    running -> succeeded | failed | cancelled | queued   (queued: handed back for a retry)
    succeeded, failed, cancelled: terminal

A running job is *leased* to one worker claim (``claim``): ``owner_id`` names the claim and
``lease_expires_at`` is renewed by its heartbeat (``renew_lease``). Another delivery of the same job
finds the lease alive and leaves the job alone; once the lease has expired (the worker died or hung)
the reconciler hands the job back to the queue, or fails it with ``worker_crashed`` after
``max_attempts`` starts. A worker holding a claim fences its final writes on it (``holding_claim``):
if the job was handed to another claim meanwhile, its ``transition`` is an ``IllegalTransition`` and
nothing it computed overwrites the other's result.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import enum
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import ColumnElement, update
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

# The output frame rates a job may ask for (options.output_fps): the gateway's schema and the worker's
# options both hold to these, so nothing the gateway accepts fails in the worker. The gateway also caps
# it at GOHA_MAX_VIDEO_FPS when that is lower.
OUTPUT_FPS_MIN = 1.0
OUTPUT_FPS_MAX = 60.0

# What a running job is doing (jobs.progress_stage), in the order the worker goes through them, with the
# words clients show. "animating" covers the overlapped frame loop (animate, paste back, mark, encode);
# "marking" is its tail once every frame has been animated; "encoding" the encoder's flush and the audio.
STAGES: dict[str, str] = {
    "starting": "starting",
    "analysing_portrait": "analysing portrait",
    "reconstructing": "reconstructing",
    "preparing_paste_back": "preparing paste-back",
    "animating": "animating",
    "marking": "marking",
    "encoding": "encoding",
    "signing": "signing",
    "uploading": "uploading",
}
_UNSET: Any = object()


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


WORKER_CRASHED = "worker_crashed"

# The claim (owner id) the current thread's worker holds: its final writes are fenced on it.
_HELD_CLAIM: contextvars.ContextVar[str | None] = contextvars.ContextVar("goha_held_claim", default=None)


@contextmanager
def holding_claim(owner_id: str) -> Iterator[None]:
    """Within this block, every ``transition`` out of ``running`` also requires ``owner_id == owner_id``
    (the worker's claim): a worker whose lease was taken over cannot finish, fail or requeue the job."""
    token = _HELD_CLAIM.set(owner_id)
    try:
        yield
    finally:
        _HELD_CLAIM.reset(token)


def held_claim() -> str | None:
    """The owner id of the claim this thread holds (``holding_claim``), if any."""
    return _HELD_CLAIM.get()


def transition(
    session: Session,
    job: Job,
    new_state: JobState | str,
    *,
    reason: str = "",
    error_code: str | None = None,
    error_message: str | None = None,
    details: dict[str, Any] | None = None,
    owner_id: str | None = None,
    lease_until: dt.datetime | None = None,
    where: Sequence[ColumnElement[bool]] = (),
) -> JobEvent:
    """Move ``job`` to ``new_state`` if legal and nobody moved it meanwhile; append the event.

    ``failed`` requires an ``error_code``. Raises ``IllegalTransition`` when the change is not allowed
    from the job's current state in the database (the in-memory job is refreshed in that case), when
    the job is running under another claim than the one held (``holding_claim``), or when an extra
    ``where`` condition does not hold. ``running`` takes ``owner_id`` and ``lease_until`` (the claim);
    leaving ``running`` drops the lease. The caller commits.
    """
    requested = JobState(new_state)
    current = JobState(job.state)
    if requested not in LEGAL_TRANSITIONS[current]:
        raise IllegalTransition(job.id, current.value, requested.value)
    if requested is JobState.FAILED and not error_code:
        raise ValueError("a failed job needs an error_code")

    now = utcnow()
    values: dict[str, Any] = {"state": requested.value, "updated_at": now}
    conditions = [Job.id == job.id, Job.state == current.value, *where]
    held = _HELD_CLAIM.get()
    if current is JobState.RUNNING:
        values["lease_expires_at"] = None
        if held is not None:
            conditions.append(Job.owner_id == held)
    if requested is JobState.RUNNING:
        values["attempts"] = Job.attempts + 1
        values["started_at"] = now
        values["error_code"] = None
        values["error_message"] = None
        values["owner_id"] = owner_id
        values["lease_expires_at"] = lease_until
        values["progress_stage"] = "starting"
        values["progress_eta_s"] = None
    if requested is JobState.QUEUED:
        values["enqueued_at"] = None  # handed back: the next enqueue stamps it
    if requested.terminal:
        values["finished_at"] = now
    if requested is JobState.FAILED:
        values["error_code"] = error_code
        values["error_message"] = (error_message or error_code or "")[:4000]

    result = session.execute(
        update(Job).where(*conditions).values(**values).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(job)
        raise IllegalTransition(job.id, job.state, requested.value)
    session.refresh(job)  # pick up server-side expressions (attempts + 1)
    JOB_TRANSITIONS.labels(to_state=requested.value).inc()
    return record_event(
        session, job, current, requested, reason=reason, error_code=error_code, details=details
    )


def update_progress(
    session: Session,
    job: Job,
    frames_done: int,
    frames_total: int | None = None,
    *,
    stage: str | None = None,
    eta_s: float | None = _UNSET,
) -> bool:
    """Write progress of a running job. Returns False when the job is no longer running (e.g. cancelled):
    the worker should stop. Progress is not an event (too frequent); state changes are.

    ``stage``: one of ``STAGES`` (left as it was when None); ``eta_s``: the worker's estimate of the
    seconds left, as of now (None: no estimate; left as it was when not given)."""
    values: dict[str, Any] = {"frames_done": max(0, int(frames_done)), "updated_at": utcnow()}
    if frames_total is not None:
        values["frames_total"] = max(0, int(frames_total))
    if stage is not None:
        if stage not in STAGES:
            raise ValueError(f"unknown progress stage {stage!r}")
        values["progress_stage"] = stage
    if eta_s is not _UNSET:
        values["progress_eta_s"] = None if eta_s is None else round(max(0.0, float(eta_s)), 1)
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


# -- leases ------------------------------------------------------------------------------------------------
class ClaimOutcome(enum.StrEnum):
    CLAIMED = "claimed"  # queued -> running under this claim
    TAKEN_OVER = "taken_over"  # running under a claim whose lease had expired: now this one's
    RESUMED = "resumed"  # already running under this claim (a retry of the same delivery)
    BUSY = "busy"  # running under another claim whose lease is alive: leave it alone
    FINISHED = "finished"  # terminal already (a duplicate delivery)
    EXHAUSTED = "exhausted"  # started max_attempts times without finishing: failed, worker_crashed
    MISSING = "missing"

    @property
    def runs(self) -> bool:
        return self in (ClaimOutcome.CLAIMED, ClaimOutcome.TAKEN_OVER, ClaimOutcome.RESUMED)


def expire_lease(
    session: Session, job_id: str, owner_id: str | None, *, now: dt.datetime | None = None
) -> bool:
    """End the lease of ``owner_id`` on a running job now (compare-and-swap on the owner), so the next
    ``claim`` takes it over; False when the job is no longer that owner's. The caller commits."""
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING.value, Job.owner_id == owner_id)
        .values(lease_expires_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.expire_all()
    return result.rowcount == 1  # type: ignore[attr-defined]


def lease_expired(job: Job, now: dt.datetime) -> bool:
    return job.lease_expires_at is None or job.lease_expires_at <= now


def fail_crashed(session: Session, job: Job, *, reason: str) -> JobEvent:
    """Fail a job whose workers kept dying (native crash, out of memory, killed) — ``worker_crashed``."""
    return transition(
        session,
        job,
        JobState.FAILED,
        reason=reason,
        error_code=WORKER_CRASHED,
        error_message=f"the job was started {job.attempts} times and its worker never finished it "
        "(it crashed, ran out of memory or was killed); it is not retried again",
        details={"attempts": job.attempts},
    )


def claim(
    session: Session,
    job_id: str,
    owner_id: str,
    *,
    lease_s: float,
    max_attempts: int,
    now: dt.datetime | None = None,
) -> tuple[ClaimOutcome, Job | None]:
    """Take ``job_id`` for the worker claim ``owner_id`` (a fresh id per delivery, kept across retries).

    Every change is a compare-and-swap; a job that already started ``max_attempts`` times is failed
    (``worker_crashed``) instead of started again. The caller commits.
    """
    now = now or utcnow()
    lease_until = now + dt.timedelta(seconds=lease_s)
    job = session.get(Job, job_id)
    if job is None:
        return ClaimOutcome.MISSING, None
    state = JobState(job.state)
    if state.terminal:
        return ClaimOutcome.FINISHED, job
    if state is JobState.RUNNING and job.owner_id == owner_id:
        renew_lease(session, job_id, owner_id, lease_s=lease_s, now=now)
        return ClaimOutcome.RESUMED, job
    if state is JobState.RUNNING and not lease_expired(job, now):
        return ClaimOutcome.BUSY, job
    if job.attempts >= max_attempts:
        fail_crashed(session, job, reason=f"started {job.attempts} times without finishing")
        return ClaimOutcome.EXHAUSTED, job
    if state is JobState.QUEUED:
        transition(
            session,
            job,
            JobState.RUNNING,
            reason="worker started",
            owner_id=owner_id,
            lease_until=lease_until,
        )
        return ClaimOutcome.CLAIMED, job
    # Running under a lease that expired: the worker died or hung. Take it over (same state, new claim).
    previous = job.owner_id
    result = session.execute(
        update(Job)
        .where(
            Job.id == job.id,
            Job.state == JobState.RUNNING.value,
            Job.owner_id.is_(None) if previous is None else Job.owner_id == previous,
            Job.lease_expires_at.is_(None) if job.lease_expires_at is None else Job.lease_expires_at <= now,
        )
        .values(
            owner_id=owner_id,
            lease_expires_at=lease_until,
            attempts=Job.attempts + 1,
            started_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.refresh(job)
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return ClaimOutcome.BUSY, job  # someone else renewed or took it first
    record_event(
        session,
        job,
        JobState.RUNNING,
        JobState.RUNNING,
        reason="lease expired: taken over by another worker",
        details={"previous_owner": previous, "attempt": job.attempts},
    )
    return ClaimOutcome.TAKEN_OVER, job


def renew_lease(
    session: Session, job_id: str, owner_id: str, *, lease_s: float, now: dt.datetime | None = None
) -> bool:
    """The heartbeat: extend the lease of a job still running under ``owner_id``. False when the job
    is no longer this claim's (finished, cancelled, or handed to another worker): stop working on it."""
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING.value, Job.owner_id == owner_id)
        .values(lease_expires_at=now + dt.timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]
