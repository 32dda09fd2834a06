"""Job-finished webhooks: URL checks (SSRF), signed delivery to a real local HTTP server, retries with
backoff, giving up. SQLite; the gateway field is tested in tests/gateway/test_jobs_api.py and the
worker's first attempt in tests/worker/test_task_retries.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Iterator

import pytest

from shared.platform import repository
from shared.platform.db import Database
from shared.platform.errors import InputRejected
from shared.platform.jobs import JobState, transition
from shared.platform.models import Job, Tenant, utcnow
from shared.platform.settings import Settings
from shared.platform.webhooks import REFUSED, check_callback_url, deliver_pending, payload, retry_delay_s
from tests.support.factories import make_job_for_tests
from tests.webhook_receiver import webhook_receiver

PRODUCTION = Settings(embedded=False)
LOCAL = Settings(
    embedded=False, webhook_allow_http=True, webhook_allow_private_hosts=True, webhook_allow_any_port=True
)


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",  # not https
        "ftp://hooks.example.com/x",
        "https:///no-host",
        "https://localhost/x",
        "https://api.localhost/x",
        "https://printer.local/x",
        "https://10.0.0.7/x",
        "https://192.168.1.1/x",
        "https://169.254.169.254/latest/meta-data",  # cloud metadata
        "https://[::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://user:pass@hooks.example.com/x",
        "https://hooks.example.com:99999/x",
        "https://hooks.example.com/" + "a" * 2100,
        "https://hooks.example.com/a b",
    ],
)
def test_unsafe_callback_urls_are_refused(url: str) -> None:
    with pytest.raises(InputRejected) as refused:
        check_callback_url(url, PRODUCTION)
    assert refused.value.code == "invalid_callback_url"


def test_public_https_urls_pass_and_the_embedded_mode_allows_local_ones() -> None:
    extra_port = Settings(embedded=False, webhook_allowed_ports=[8443])
    assert check_callback_url(" https://hooks.example.com:8443/goha?x=1 ", extra_port) == (
        "https://hooks.example.com:8443/goha?x=1"
    )
    assert check_callback_url("https://8.8.8.8/x", PRODUCTION) == "https://8.8.8.8/x"
    assert check_callback_url("http://127.0.0.1:9/x", Settings(embedded=True)) == "http://127.0.0.1:9/x"
    with pytest.raises(InputRejected):
        check_callback_url("http://127.0.0.1:9/x", Settings(embedded=True, webhook_allow_private_hosts=False))


def test_retry_delays_double_up_to_an_hour() -> None:
    assert [retry_delay_s(n) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert retry_delay_s(50) == 3600


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url)
    yield database
    database.dispose()


def _finished_job(db: Database, url: str, *, finish: bool = True) -> tuple[str, str]:
    """A job with a callback, submitted with an API key, cancelled (a terminal state). Returns
    (job id, the raw API key)."""
    with db.session() as session:
        job = make_job_for_tests(session)
        row, key = repository.create_api_key(session, session.get(Tenant, job.tenant_id))
        job.api_key_id, job.callback_url = row.id, url
        if finish:
            transition(session, job, JobState.CANCELLED, reason="test")
        return job.id, key


def _job(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_a_finished_job_is_posted_once_signed_with_the_key_hash(db: Database) -> None:
    with webhook_receiver() as receiver:
        job_id, api_key = _finished_job(db, receiver.url)
        report = deliver_pending(db.sessionmaker, LOCAL)
        assert report.delivered == [job_id] and report.failed == {}
        assert deliver_pending(db.sessionmaker, LOCAL).delivered == []  # delivered once
    (request,) = receiver.requests
    assert request.path == "/hooks/goha"
    assert request.headers["x-goha-event"] == "job.finished"
    assert request.headers["x-goha-delivery"] == job_id
    secret = hashlib.sha256(api_key.encode()).hexdigest().encode()
    signed = f"{request.headers['x-goha-timestamp']}.".encode() + request.body
    expected = "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["x-goha-signature"], expected)
    body = json.loads(request.body)
    assert body["job_id"] == job_id and body["state"] == "cancelled" and body["event"] == "job.finished"
    assert body["links"]["self"] == f"/v1/jobs/{job_id}" and "result" not in body["links"]
    assert payload(_job(db, job_id), "https://api.example.com/")["links"]["self"] == (
        f"https://api.example.com/v1/jobs/{job_id}"
    )
    job = _job(db, job_id)
    assert job.callback_delivered_at is not None and job.callback_attempts == 1 and job.callback_error is None


def test_a_failing_receiver_is_retried_with_backoff_then_given_up(db: Database) -> None:
    settings = LOCAL.model_copy(update={"webhook_max_attempts": 3})
    with webhook_receiver() as receiver:
        receiver.status = 500
        job_id, _ = _finished_job(db, receiver.url)
        first = deliver_pending(db.sessionmaker, settings)
        assert first.failed[job_id].endswith("HTTP 500") and first.given_up == []
        job = _job(db, job_id)
        assert job.callback_attempts == 1 and "HTTP 500" in (job.callback_error or "")
        wait = (job.callback_next_at - utcnow()).total_seconds()
        assert 25 < wait <= 30
        assert deliver_pending(db.sessionmaker, settings).failed == {}  # not due yet
        later = utcnow() + dt.timedelta(seconds=31)
        assert job_id in deliver_pending(db.sessionmaker, settings, now=later).failed
        receiver.status = 200
        much_later = utcnow() + dt.timedelta(hours=2)
        assert deliver_pending(db.sessionmaker, settings, now=much_later).delivered == [job_id]
        assert len(receiver.requests) == 3

        receiver.status = 503
        other, _ = _finished_job(db, receiver.url)
        for hours in (0, 3, 6):
            report = deliver_pending(db.sessionmaker, settings, now=utcnow() + dt.timedelta(hours=hours))
        assert report.given_up == [other]
        assert deliver_pending(db.sessionmaker, settings, now=utcnow() + dt.timedelta(days=1)).failed == {}
        assert _job(db, other).callback_delivered_at is None and _job(db, other).callback_attempts == 3


def test_unfinished_jobs_wait_and_private_targets_are_refused_at_delivery(db: Database) -> None:
    with webhook_receiver() as receiver:
        queued, _ = _finished_job(db, receiver.url, finish=False)
        assert deliver_pending(db.sessionmaker, LOCAL).delivered == []
        # The name passed the submission check but resolves to loopback: refused for good, not called.
        local_name = receiver.url.replace("127.0.0.1", "localhost")
        job_id, _ = _finished_job(db, local_name)
        strict = LOCAL.model_copy(update={"webhook_allow_private_hosts": False})
        report = deliver_pending(db.sessionmaker, strict)
        assert report.given_up == [job_id] and report.failed[job_id] == REFUSED
        assert receiver.requests == []
        assert _job(db, queued).callback_attempts == 0
