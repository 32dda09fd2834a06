"""Webhook hardening (issue 16, items 5 and 6, and the revoked-key Low item), against real local TCP,
HTTP and TLS servers on 127.0.0.1 and a real SQLite database:

* SSRF: every IPv6 form that carries a private IPv4 address (NAT64, 6to4, IPv4-compatible, mapped),
  non-canonical IPv4 spellings and ports other than 443 / the allowed list are refused; DNS is resolved
  once per attempt and the connection goes to the checked address (a rebinding answer is never used);
  ``callback.last_error`` is the same whatever killed the connection (no port-scan oracle).
* Delivery: one attempt has a total deadline (a receiver dribbling its answer is cut off), deliveries
  never overlap for one job (a lapsed claim does not lead to a second delivery in flight), the outcome of
  an attempt whose claim was taken over is not recorded, the worker's task does not deliver and the
  dispatcher thread does.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.platform import repository, webhooks
from shared.platform.db import Database
from shared.platform.errors import InputRejected
from shared.platform.jobs import JobState, transition
from shared.platform.migrate import upgrade
from shared.platform.models import ApiKey, Job, Tenant, utcnow
from shared.platform.settings import Settings
from shared.platform.webhooks import NO_ANSWER, REFUSED, UNSIGNED, check_callback_url, deliver_pending
from tests.support.factories import make_job_for_tests
from tests.webhook_receiver import raw_server, read_request, webhook_receiver

PRODUCTION = Settings(embedded=False)
# Local receivers: http, loopback and any port allowed; everything else as in production.
LOCAL = Settings(
    embedded=False,
    webhook_allow_http=True,
    webhook_allow_private_hosts=True,
    webhook_allow_any_port=True,
    webhook_timeout_s=1.0,
)


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """Each test on real PostgreSQL (claims with FOR UPDATE SKIP LOCKED) and on SQLite."""
    if request.param == "postgresql":
        url = request.getfixturevalue("goha_postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'goha.sqlite3'}"
        upgrade(url)
    database = Database(url)
    yield database
    database.dispose()


def _finished_job(db: Database, url: str) -> str:
    with db.session() as session:
        job = make_job_for_tests(session)
        row, _ = repository.create_api_key(session, session.get(Tenant, job.tenant_id))
        job.api_key_id, job.callback_url = row.id, url
        transition(session, job, JobState.CANCELLED, reason="test")
        return job.id


def _job(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


# -- item 6: SSRF ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://[64:ff9b::a9fe:a9fe]/x",  # NAT64 of 169.254.169.254 (cloud metadata)
        "https://[64:ff9b::a00:7]/x",  # NAT64 of 10.0.0.7
        "https://[64:ff9b:1::a00:7]/x",  # local-use NAT64 prefix (RFC 8215)
        "https://[2002:a9fe:a9fe::1]/x",  # 6to4 of 169.254.169.254
        "https://[2002:c0a8:101::1]/x",  # 6to4 of 192.168.1.1
        "https://[::10.0.0.7]/x",  # IPv4-compatible
        "https://[::127.0.0.1]/x",
        "https://[::ffff:a9fe:a9fe]/x",  # IPv4-mapped, hex spelling
        "https://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/x",  # Teredo
        "https://2130706433/x",  # 127.0.0.1 as one number
        "https://0x7f.1/x",
        "https://127.1/x",
        "https://0251.0376.0251.0376/x",  # octal 169.254.169.254
        "https://hooks.example.com:22/x",  # only 443 (and the allowed list)
        "https://hooks.example.com:8080/x",
        "https://8.8.8.8:6379/x",
    ],
)
def test_embedded_ipv4_forms_odd_spellings_and_ports_are_refused_at_submission(url: str) -> None:
    with pytest.raises(InputRejected) as refused:
        check_callback_url(url, PRODUCTION)
    assert refused.value.code == "invalid_callback_url"


def test_public_embedded_forms_and_allowed_ports_pass() -> None:
    assert check_callback_url("https://[64:ff9b::808:808]/x", PRODUCTION)  # NAT64 of 8.8.8.8
    assert check_callback_url("https://[2002:808:808::1]/x", PRODUCTION)  # 6to4 of 8.8.8.8
    assert check_callback_url("https://hooks.example.com:443/x", PRODUCTION)
    assert check_callback_url(
        "https://hooks.example.com:8443/x", Settings(embedded=False, webhook_allowed_ports=[8443])
    )
    assert check_callback_url("http://127.0.0.1:5000/x", Settings(embedded=True))  # embedded: local testing


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Resolve the names in ``answers`` (each lookup pops the next address; the last one sticks);
    other names as usual. Returns the names looked up, in order."""
    real = socket.getaddrinfo
    looked_up: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(host, bytes):
            host = host.decode()
        if host in answers:
            looked_up.append(host)
            queue = answers[host]
            address = queue.pop(0) if len(queue) > 1 else queue[0]
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked_up


def test_dns_rebinding_cannot_redirect_the_connection(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name answers a public address to the check and loopback afterwards: the request must not
    reach the loopback receiver (the connection goes to the address that was checked)."""
    strict = LOCAL.model_copy(update={"webhook_allow_private_hosts": False, "webhook_timeout_s": 0.5})
    with webhook_receiver() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        looked_up = _fake_dns(monkeypatch, {"rebind.example": ["203.0.113.9", "127.0.0.1"]})
        monkeypatch.setattr(webhooks, "is_public_address", lambda a: a == "203.0.113.9")  # TEST-NET as public
        job_id = _finished_job(db, f"http://rebind.example:{port}/hooks/goha")
        report = deliver_pending(db.sessionmaker, strict)
    assert receiver.requests == []
    assert report.failed == {job_id: NO_ANSWER}
    assert looked_up == ["rebind.example"]  # one lookup per attempt


def test_the_connection_goes_to_the_checked_address(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The opposite order: the check sees the loopback receiver, a second lookup would see a dead
    address; the request arrives, with the URL's name in Host."""
    with webhook_receiver() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        _fake_dns(monkeypatch, {"hooks.test": ["127.0.0.1", "192.0.2.1"]})
        job_id = _finished_job(db, f"http://hooks.test:{port}/hooks/goha")
        assert deliver_pending(db.sessionmaker, LOCAL).delivered == [job_id]
    (request,) = receiver.requests
    assert request.headers["host"] == f"hooks.test:{port}"


def test_last_error_is_no_port_scan_oracle(db: Database) -> None:
    """A closed port, a port that accepts and hangs up, and one that accepts and says nothing all read
    the same to the tenant."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    settings = LOCAL.model_copy(update={"webhook_timeout_s": 0.5})
    with (
        raw_server(lambda conn: None) as hangs_up,
        raw_server(lambda conn: (read_request(conn), time.sleep(2))) as silent,
    ):
        jobs = [
            _finished_job(db, f"http://127.0.0.1:{port}/x")
            for port in (closed_port, hangs_up.port, silent.port)
        ]
        deliver_pending(db.sessionmaker, settings)
    errors = {_job(db, job_id).callback_error for job_id in jobs}
    assert errors == {NO_ANSWER}


def test_a_stored_url_on_a_port_no_longer_allowed_is_refused_at_delivery(db: Database) -> None:
    with webhook_receiver() as receiver:
        job_id = _finished_job(db, receiver.url)
        ports_only = LOCAL.model_copy(update={"webhook_allow_any_port": False})
        report = deliver_pending(db.sessionmaker, ports_only)
    assert report.given_up == [job_id] and report.failed[job_id] == REFUSED
    assert receiver.requests == []
    assert _job(db, job_id).callback_error == REFUSED


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_https_to_the_checked_address_verifies_the_name(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _certificate(tmp_path, "hooks.test")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    seen: list[bytes] = []

    def answer(conn: socket.socket) -> None:
        seen.append(read_request(conn))
        conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    _fake_dns(monkeypatch, {"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    with raw_server(answer, tls=server_tls) as server:
        good = _finished_job(db, f"https://hooks.test:{server.port}/in")
        wrong_name = _finished_job(db, f"https://other.test:{server.port}/in")
        report = deliver_pending(db.sessionmaker, LOCAL, ssl_context=client_tls)
    assert report.delivered == [good]
    assert report.failed == {wrong_name: NO_ANSWER}  # the certificate does not name other.test
    assert len(seen) == 1 and seen[0].startswith(b"POST /in HTTP/1.1\r\n")


# -- revoked keys (issue 16, Low) -----------------------------------------------------------------------
def test_a_revoked_key_signs_no_webhook(db: Database) -> None:
    with webhook_receiver() as receiver:
        job_id = _finished_job(db, receiver.url)
        with db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            session.get(ApiKey, job.api_key_id).revoked_at = utcnow()  # type: ignore[union-attr]
            session.commit()
        report = deliver_pending(db.sessionmaker, LOCAL)
    assert receiver.requests == []
    assert report.given_up == [job_id] and _job(db, job_id).callback_error == UNSIGNED


# -- item 5: a total deadline, out of band, no overlapping deliveries ------------------------------------
def _dribbler(every_s: float, answer: bytes = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"):  # type: ignore[no-untyped-def]
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        for byte in answer:
            conn.sendall(bytes([byte]))
            time.sleep(every_s)

    return handle


def test_a_dribbling_receiver_is_cut_off_at_the_total_deadline(db: Database) -> None:
    """Each byte arrives well within the deadline (the old per-read timeout never fired: ~13 s and a
    'delivery'); the whole attempt is cut off at webhook_timeout_s."""
    with raw_server(_dribbler(0.3)) as server:
        job_id = _finished_job(db, f"http://127.0.0.1:{server.port}/x")
        began = time.monotonic()
        report = deliver_pending(db.sessionmaker, LOCAL)
        took = time.monotonic() - began
    assert took < LOCAL.webhook_timeout_s + 1.0, took
    assert report.failed == {job_id: NO_ANSWER} and report.delivered == []
    assert _job(db, job_id).callback_attempts == 1


def test_slow_receivers_are_called_in_parallel_within_one_deadline(db: Database) -> None:
    settings = LOCAL.model_copy(update={"webhook_concurrency": 4})
    with raw_server(_dribbler(0.3)) as server:
        jobs = [_finished_job(db, f"http://127.0.0.1:{server.port}/x") for _ in range(4)]
        began = time.monotonic()
        report = deliver_pending(db.sessionmaker, settings)
        took = time.monotonic() - began
    assert sorted(report.failed) == sorted(jobs)
    assert took < 2 * settings.webhook_timeout_s, took  # not 4 deadlines one after the other


def test_a_claim_never_lapses_under_a_delivery_in_flight(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Short claims and retries (so the test is short); a receiver that keeps dribbling. A second pass
    started after the first one's claim would have lapsed must not find a delivery still in flight."""
    monkeypatch.setattr(webhooks, "FIRST_RETRY_S", 0.2)
    monkeypatch.setattr(webhooks, "CLAIM_MARGIN_S", 0.2, raising=False)
    settings = LOCAL.model_copy(update={"webhook_timeout_s": 0.5})
    with raw_server(_dribbler(0.3, b"HTTP/1.1 204 No Content\r\n" + b"X: y\r\n" * 10 + b"\r\n")) as server:
        job_id = _finished_job(db, f"http://127.0.0.1:{server.port}/x")
        first = threading.Thread(target=deliver_pending, args=(db.sessionmaker, settings), daemon=True)
        first.start()
        time.sleep(2.6)  # the old claim: 4 x timeout + 0.2 s
        deliver_pending(db.sessionmaker, settings)
        first.join(timeout=30)
        assert server.max_in_flight == 1, server.max_in_flight
    assert _job(db, job_id).callback_attempts == 2


def test_an_outcome_is_not_recorded_once_another_pass_claimed_the_job(db: Database) -> None:
    with webhook_receiver() as receiver:
        job_id = _finished_job(db, receiver.url)

        def another_pass_claims(_: object) -> None:
            with db.session() as session:
                job = session.get(Job, job_id)
                assert job is not None
                job.callback_next_at = utcnow() + dt.timedelta(minutes=5)
                session.commit()

        receiver.on_request = another_pass_claims
        report = deliver_pending(db.sessionmaker, LOCAL)
    assert report.lost_claim == [job_id] and report.delivered == []
    job = _job(db, job_id)
    assert job.callback_attempts == 0 and job.callback_delivered_at is None  # the other pass decides


def test_the_dispatcher_thread_delivers_finished_jobs(db: Database) -> None:
    settings = LOCAL.model_copy(update={"webhook_interval_s": 0.1})
    with webhook_receiver() as receiver:
        with webhooks.Dispatcher(db.sessionmaker, settings):
            job_id = _finished_job(db, receiver.url)
            deadline = time.monotonic() + 10
            while not receiver.requests and time.monotonic() < deadline:
                time.sleep(0.05)
    assert [r.headers["x-goha-delivery"] for r in receiver.requests] == [job_id]
