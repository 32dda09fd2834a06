"""The worker's side of job leases (``shared.platform.jobs.claim``): claim, heartbeat, fencing.

    owner_id = new_owner_id()                      # one per delivery, kept across its retries
    outcome = claim_job(sessions, job_id, owner_id, lease_s=120, max_attempts=3)
    if outcome.runs:
        with leased(sessions, job_id, owner_id, lease_s=120):
            ...                                    # the job's work; its final transition is fenced
        discard_unrecorded_result(sessions, storage, job_id, owner_id)

The heartbeat thread renews the lease every ``lease_s / 4``; if the renewal finds the job is no longer
this claim's, ``Heartbeat.lost`` is set (the fenced final write will refuse anyway). A database outage
only delays renewals: the lease then runs out and the reconciler recovers the job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from shared.platform.jobs import (
    WORKER_CRASHED,
    ClaimOutcome,
    claim,
    expire_lease,
    held_claim,
    holding_claim,
    renew_lease,
)
from shared.platform.metrics import record_job_failure
from shared.platform.models import Job
from shared.platform.storage import ObjectStorage, output_key

log = logging.getLogger(__name__)

# Errors of a database that is unreachable or went away: transient, never the job's fault.
DATABASE_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)

SessionFactory = Callable[[], Session]


def new_owner_id() -> str:
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:16]}"


def result_object_name(owner_id: str) -> str:
    """The output object a claim writes: one per claim, so a superseded worker never overwrites the
    result another claim recorded."""
    return f"result-{owner_id.rsplit(':', 1)[-1]}.mp4"


def current_result_name() -> str:
    """The output object name for the claim this thread holds ("result.mp4" outside a claim)."""
    owner_id = held_claim()
    return result_object_name(owner_id) if owner_id else "result.mp4"


def owner_is_dead_here(owner_id: str | None) -> bool:
    """True when ``owner_id`` names a process of this host that no longer exists: a worker child
    killed mid-job (out of memory, a native crash), whose task Celery redelivers at once
    (``reject_on_worker_lost``). Waiting for its lease to expire would leave the job idle for
    ``worker_lease_s`` and, without a reconciler, for good. Owners on other hosts are never judged."""
    if not owner_id or owner_id.count(":") < 2:
        return False
    host, pid, _ = owner_id.rsplit(":", 2)
    if host != socket.gethostname()[:64] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def claim_job(
    sessions: SessionFactory, job_id: str, owner_id: str, *, lease_s: float, max_attempts: int
) -> ClaimOutcome:
    with sessions() as session:
        outcome, job = claim(session, job_id, owner_id, lease_s=lease_s, max_attempts=max_attempts)
        if outcome is ClaimOutcome.BUSY and job is not None and owner_is_dead_here(job.owner_id):
            log.warning("the job's lease holder %s is gone: taking the job over", job.owner_id)
            expire_lease(session, job_id, job.owner_id)
            outcome, _ = claim(session, job_id, owner_id, lease_s=lease_s, max_attempts=max_attempts)
        session.commit()
    if outcome is ClaimOutcome.EXHAUSTED:
        record_job_failure(WORKER_CRASHED)
    if outcome is not ClaimOutcome.CLAIMED:
        log.info("claim: %s", outcome.value, extra={"job_id": job_id})
    return outcome


def extend_lease(sessions: SessionFactory, job_id: str, owner_id: str, seconds: float) -> bool:
    """E.g. before a retry's countdown: the job stays this claim's while it waits."""
    with sessions() as session:
        renewed = renew_lease(session, job_id, owner_id, lease_s=seconds)
        session.commit()
    return renewed


class Heartbeat:
    def __init__(self, sessions: SessionFactory, job_id: str, owner_id: str, lease_s: float) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.owner_id = owner_id
        self.lease_s = lease_s
        self.interval_s = lease_s / 4
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not extend_lease(self.sessions, self.job_id, self.owner_id, self.lease_s):
                    self.lost.set()
                    log.warning(
                        "lease lost: the job is no longer this worker's", extra={"job_id": self.job_id}
                    )
                    return
            except Exception as exc:  # database down: retry at the next beat, the lease may run out
                log.warning("lease renewal failed: %s", exc, extra={"job_id": self.job_id})


@contextmanager
def leased(sessions: SessionFactory, job_id: str, owner_id: str, *, lease_s: float) -> Iterator[Heartbeat]:
    """Heartbeat for the block, and every final transition in it fenced on ``owner_id``."""
    heartbeat = Heartbeat(sessions, job_id, owner_id, lease_s)
    heartbeat.start()
    try:
        with holding_claim(owner_id):
            yield heartbeat
    finally:
        heartbeat.stop()


def discard_unrecorded_result(
    sessions: SessionFactory, storage: ObjectStorage, job_id: str, owner_id: str
) -> bool:
    """Delete the output this claim uploaded if the job did not record it (cancelled after the last
    progress write, or finished by another claim): nothing of it may stay behind. Returns True when
    an object was deleted."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            return False
        key = output_key(job.tenant_id, job.id, result_object_name(owner_id))
        if job.result_key == key:
            return False
    if not storage.exists(key):
        return False
    storage.delete(key)
    log.info("deleted an output the job did not record", extra={"job_id": job_id, "key": key})
    return True
