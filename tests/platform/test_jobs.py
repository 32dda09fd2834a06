"""The job state machine: legal moves only, one winner under races, an event per change."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from shared.platform.db import Database
from shared.platform.errors import IllegalTransition
from shared.platform.jobs import (
    LEGAL_TRANSITIONS,
    TERMINAL_STATES,
    JobState,
    is_legal,
    set_result,
    transition,
    update_progress,
)
from shared.platform.models import Job, JobEvent
from tests.support.factories import make_job_for_tests


def _events(db: Database, job_id: str) -> list[tuple[str | None, str]]:
    with db.session() as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [(e.from_state, e.to_state) for e in rows]


def test_transition_table() -> None:
    assert is_legal("queued", "running") and is_legal("running", "succeeded")
    assert not is_legal("queued", "succeeded")  # a job cannot finish without running
    assert not is_legal("succeeded", "running")
    for state in TERMINAL_STATES:
        assert LEGAL_TRANSITIONS[state] == frozenset()
    assert set(LEGAL_TRANSITIONS) == set(JobState)


def test_happy_path_records_events_and_times(any_db: Database) -> None:
    with any_db.session() as session:
        job_id = make_job_for_tests(session).id
    with any_db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        transition(session, job, JobState.RUNNING, reason="worker picked it up")
        assert job.state == "running" and job.attempts == 1 and job.started_at is not None
    with any_db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert update_progress(session, job, 5, 10)
        set_result(
            session,
            job,
            storage_key="tenants/t/jobs/j/result.mp4",
            sha256="ab" * 32,
            size_bytes=10,
            timings={"render": 1.5},
        )
        transition(session, job, JobState.SUCCEEDED)
    with any_db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.state, job.frames_done, job.frames_total) == ("succeeded", 5, 10)
        assert job.finished_at is not None and job.finished_at >= job.started_at  # type: ignore[operator]
        assert job.timings == {"render": 1.5}
    assert _events(any_db, job_id) == [(None, "queued"), ("queued", "running"), ("running", "succeeded")]


def test_illegal_transitions_are_refused_and_leave_no_event(any_db: Database) -> None:
    with any_db.session() as session:
        job = make_job_for_tests(session)
        job_id = job.id
        with pytest.raises(IllegalTransition) as caught:
            transition(session, job, JobState.SUCCEEDED)
        assert caught.value.code == "illegal_transition" and caught.value.status == 409
        with pytest.raises(ValueError):
            transition(session, job, JobState.FAILED)  # failing needs an error code
        transition(session, job, JobState.FAILED, error_code="bad_input", error_message="no face found")
        with pytest.raises(IllegalTransition):
            transition(session, job, JobState.RUNNING)
    with any_db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.state, job.error_code, job.error_message) == (
            "failed",
            "bad_input",
            "no face found",
        )
    assert _events(any_db, job_id) == [(None, "queued"), ("queued", "failed")]


def test_compare_and_swap_lets_one_of_two_racers_win(any_db: Database) -> None:
    """Two processes hold the same queued job in memory; only the first claim succeeds."""
    with any_db.session() as session:
        job_id = make_job_for_tests(session).id
    first, second = any_db.sessionmaker(), any_db.sessionmaker()
    try:
        # Each read transaction ends at once without expiring the object (SQLite locks until it ends).
        job_a = first.get(Job, job_id)
        first.commit()
        job_b = second.get(Job, job_id)
        second.commit()
        assert job_a is not None and job_b is not None
        transition(first, job_a, JobState.RUNNING)
        first.commit()
        assert job_b.state == "queued"  # stale in memory: the in-process check alone would allow the claim
        with pytest.raises(IllegalTransition) as caught:
            transition(second, job_b, JobState.RUNNING)  # a duplicated queue message claiming again
        assert caught.value.current == "running"
        second.rollback()
    finally:
        first.close()
        second.close()
    assert _events(any_db, job_id) == [(None, "queued"), ("queued", "running")]


def test_progress_stops_once_cancelled(any_db: Database) -> None:
    with any_db.session() as session:
        job = make_job_for_tests(session)
        transition(session, job, JobState.RUNNING)
        job_id = job.id
    with any_db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        transition(session, job, JobState.CANCELLED, reason="user")
    with any_db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert update_progress(session, job, 3, 10) is False  # tells the worker to stop
        with pytest.raises(IllegalTransition):
            set_result(session, job, storage_key="k/x", sha256="0" * 64, size_bytes=1)


def test_running_job_can_be_handed_back_to_the_queue(any_db: Database) -> None:
    with any_db.session() as session:
        job = make_job_for_tests(session)
        transition(session, job, JobState.RUNNING)
        transition(session, job, JobState.QUEUED, reason="worker shutting down")
        assert job.enqueued_at is None  # the reconciler will publish it again
        transition(session, job, JobState.RUNNING)
        assert job.attempts == 2
