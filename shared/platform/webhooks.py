"""Job-finished webhooks: instead of polling, a client names a ``callback_url`` when it submits and
the platform POSTs there once the job has succeeded, failed or been cancelled.

Delivery is out of band: no worker (GPU) process ever waits on a receiver. A dispatcher
(``Dispatcher``: a thread of the reconciler, and of ``goha up``) runs ``deliver_pending`` every
``GOHA_WEBHOOK_INTERVAL_S``; it delivers what is due, ``GOHA_WEBHOOK_CONCURRENCY`` at a time, and retries
with backoff (30 s, 1, 2, 4... min, at most an hour apart, ``GOHA_WEBHOOK_MAX_ATTEMPTS`` attempts). One
attempt has a *total* deadline of ``GOHA_WEBHOOK_TIMEOUT_S`` (DNS, connect, TLS, request and the
answer's status line together): a receiver dribbling a byte at a time is cut off there. A job is
claimed for one attempt for that deadline plus a margin (``callback_next_at``, ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL), an attempt never outlives its claim, and its outcome is recorded only while
the claim is still its own: two dispatchers never deliver the same job at once. Any 2xx answer counts
as delivered; redirects are not followed. A receiver must still tolerate a repeated delivery (the same
``delivery`` id): a receiver that got the request but whose 2xx was lost is called again.

The request::

    POST <callback_url>
    Content-Type: application/json
    X-Goha-Event: job.finished
    X-Goha-Delivery: <job id>
    X-Goha-Timestamp: <unix seconds>
    X-Goha-Signature: sha256=<hex HMAC-SHA256(key, "<timestamp>." + body)>

    {"event": "job.finished", "delivery": "<job id>", "job_id": "...", "state": "succeeded",
     "error": null | {"code", "message"}, "finished_at": "...", "result_sha256": "...",
     "links": {"self": "/v1/jobs/<id>", "result": "/v1/jobs/<id>/result"}}

The HMAC key is the SHA-256 hex digest of the API key that submitted the job (what the platform
stores instead of the key), so the receiver checks the signature with
``hmac.new(sha256(api_key).hexdigest().encode(), f"{ts}.".encode() + body, sha256)`` and no other
secret has to be handed out. Reject old timestamps to stop replays. A key revoked before the delivery
signs nothing: the delivery is given up.

Server-side request forgery: the URL must be ``https``, on port 443 or one of
``GOHA_WEBHOOK_ALLOWED_PORTS``, and its host must not be, or resolve to, a loopback, private,
link-local or otherwise non-public address — IPv4 addresses embedded in IPv6 ones (IPv4-mapped and
-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo, ISATAP) are judged by the
IPv4 address they carry, and non-canonical IPv4 spellings (``2130706433``, ``0x7f.1``) are refused.
The name is resolved once per attempt and the connection goes to an address that was checked (TLS
still verifies the certificate against the name), so DNS rebinding between check and connect is not
possible. What the job shows (``callback.last_error``) is generic: a refusal, "no answer", or the HTTP
status the receiver answered, never why a connection failed (no port-scan oracle); the details are
logged. Every rule is relaxed only where an operator allows it (``GOHA_WEBHOOK_ALLOW_HTTP``,
``GOHA_WEBHOOK_ALLOW_PRIVATE_HOSTS``, ``GOHA_WEBHOOK_ALLOW_ANY_PORT``: on by default in the embedded
single-machine mode).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shared.platform.errors import INVALID_CALLBACK_URL, InputRejected
from shared.platform.jobs import TERMINAL_STATES, job_links
from shared.platform.models import ApiKey, Job, utcnow
from shared.platform.settings import Settings

log = logging.getLogger("goha.webhooks")

EVENT = "job.finished"
MAX_URL_LENGTH = 2048
FIRST_RETRY_S = 30.0
MAX_RETRY_S = 3600.0
CLAIM_MARGIN_S = 30.0  # a claim lasts the attempt's deadline plus this
MAX_STATUS_LINE = 4096
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain")

# What a tenant sees in callback.last_error: never why a connection failed.
REFUSED = "the callback URL is not allowed (scheme, host, address or port)"
NO_ANSWER = "the receiver could not be reached or did not answer within the deadline"
UNSIGNED = "the API key that submitted the job is gone or revoked: nothing to sign with"


class CallbackRefused(Exception):
    """The callback target may not be called (permanent: no retry)."""


class DeliveryFailed(Exception):
    """One attempt failed (retried later). ``str()`` is what the tenant may see; ``detail`` is logged."""

    def __init__(self, public: str, detail: str = "") -> None:
        super().__init__(public)
        self.detail = detail or public


def allow_http(settings: Settings) -> bool:
    return settings.embedded if settings.webhook_allow_http is None else settings.webhook_allow_http


def allow_private(settings: Settings) -> bool:
    allowed = settings.webhook_allow_private_hosts
    return settings.embedded if allowed is None else allowed


def allowed_ports(settings: Settings) -> frozenset[int] | None:
    """The ports a callback may name (None: any)."""
    any_port = (
        settings.embedded if settings.webhook_allow_any_port is None else settings.webhook_allow_any_port
    )
    if any_port:
        return None
    return frozenset({443, *settings.webhook_allowed_ports, *((80,) if allow_http(settings) else ())})


_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local-use translation, never public


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo, ISATAP)."""
    found: list[ipaddress.IPv4Address] = []
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in _IPV4_COMPATIBLE or ip in _NAT64:
        found.append(low32)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if (int(ip) >> 32) & 0xFDFFFFFF == 0x5EFE:  # ISATAP interface id ::0:5efe:a.b.c.d / ::200:5efe:...
        found.append(low32)
    return found


def is_public_address(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True only for a global unicast address whose every embedded IPv4 form is global unicast too."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id or ip in _NAT64_LOCAL or (ip in _IPV4_COMPATIBLE):
            return False  # ::a.b.c.d is deprecated: nothing public is reached through it
        carried = embedded_ipv4(ip)
        if carried:
            return all(is_public_address(v4) for v4 in carried)
    return ip.is_global and not ip.is_multicast


# Kept for callers of the old name.
_public = is_public_address


def _noncanonical_ipv4(host: str) -> bool:
    """``2130706433``, ``0x7f.1``, ``127.1``: what inet_aton (and so getaddrinfo) reads as an IPv4
    address but is not a dotted quad."""
    try:
        packed = socket.inet_aton(host)
    except (OSError, ValueError):
        return False
    return socket.inet_ntoa(packed) != host


def check_callback_url(url: str, settings: Settings) -> str:
    """The URL as stored, or ``InputRejected(invalid_callback_url)``; no DNS lookup here."""

    def refuse(why: str) -> InputRejected:
        return InputRejected(INVALID_CALLBACK_URL, f"callback_url {why}", details={"field": "callback_url"})

    url = url.strip()
    if len(url) > MAX_URL_LENGTH or not url.isprintable() or " " in url:
        raise refuse(f"must be a printable URL of at most {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise refuse("must be an https:// URL with a host")
    if parts.scheme == "http" and not allow_http(settings):
        raise refuse("must use https")
    if parts.username or parts.password:
        raise refuse("must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise refuse("has an invalid port") from exc
    ports = allowed_ports(settings)
    if ports is not None and port not in ports:
        raise refuse(f"must use port {' or '.join(str(p) for p in sorted(ports))}")
    if not allow_private(settings):
        host = parts.hostname.lower().rstrip(".")
        if host == "localhost" or host.endswith(_LOCAL_SUFFIXES):
            raise refuse("must name a public host")
        if _noncanonical_ipv4(host):
            raise refuse("must name a public address")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None and not is_public_address(literal):
            raise refuse("must name a public address")
    return url


@dataclass(frozen=True)
class Target:
    """A callback URL resolved once: the addresses the connection may go to (all checked)."""

    scheme: str
    host: str  # for TLS (SNI, certificate check)
    port: int
    netloc: str  # for the Host header
    path: str
    addresses: tuple[str, ...]


def _resolve(host: str, port: int, timeout_s: float) -> list[str]:
    """getaddrinfo bounded by ``timeout_s`` (a slow resolver cannot stretch the deadline)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="goha-webhook-dns", daemon=True)
    thread.start()
    thread.join(max(0.0, timeout_s))
    if thread.is_alive():
        raise DeliveryFailed(NO_ANSWER, f"DNS lookup of {host} timed out")
    if "error" in box:
        raise DeliveryFailed(NO_ANSWER, f"cannot resolve {host}: {box['error']}")  # DNS may heal: retried
    seen: list[str] = []
    for info in box["infos"]:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def resolve_target(url: str, settings: Settings, *, timeout_s: float) -> Target:
    """Check ``url`` again, resolve its host once and check every address it resolves to."""
    try:
        check_callback_url(url, settings)
    except InputRejected as exc:
        raise CallbackRefused(str(exc)) from exc
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _resolve(host, port, timeout_s)
    if not allow_private(settings):
        private = [address for address in addresses if not is_public_address(address)]
        if private:
            raise CallbackRefused(f"{host} resolves to a non-public address ({', '.join(private)})")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, parts.netloc, path, tuple(addresses))


def signing_key(api_key_hash: str) -> bytes:
    return api_key_hash.encode("ascii")


def sign(key: bytes, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def payload(job: Job, base_url: str = "") -> dict[str, Any]:
    """The body; links are absolute when ``GOHA_PUBLIC_BASE_URL`` is set, as in the API's answers."""
    return {
        "event": EVENT,
        "delivery": job.id,
        "job_id": job.id,
        "state": job.state,
        "error": {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "frames_done": job.frames_done,
        "result_sha256": job.result_sha256,
        "links": job_links(job, base_url),
    }


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeliveryFailed(NO_ANSWER, "deadline passed")
    return left


def _connect(target: Target, deadline: float) -> socket.socket:
    """A TCP connection to one of the target's checked addresses (never a fresh lookup)."""
    errors = []
    for address in target.addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect((address, target.port))
            return sock
        except DeliveryFailed:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            errors.append(f"{address}: {exc}")
    raise DeliveryFailed(NO_ANSWER, f"connect to {target.host}:{target.port} failed: {'; '.join(errors)}")


def _status_line(sock: socket.socket, deadline: float) -> bytes:
    buffer = b""
    while b"\r\n" not in buffer:
        if len(buffer) > MAX_STATUS_LINE:
            raise DeliveryFailed(NO_ANSWER, "the status line is too long")
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(1024)
        if not chunk:
            raise DeliveryFailed(NO_ANSWER, "the receiver closed the connection without an answer")
        buffer += chunk
    return buffer.split(b"\r\n", 1)[0]


def post(
    url: str,
    body: bytes,
    key: bytes,
    settings: Settings,
    *,
    job_id: str,
    deadline_s: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """One delivery attempt, all of it (DNS, connect, TLS, request, the answer's status line) within
    ``deadline_s`` (default ``webhook_timeout_s``). Returns the 2xx status; raises ``CallbackRefused``
    (permanent) or ``DeliveryFailed`` (retried)."""
    deadline = time.monotonic() + (settings.webhook_timeout_s if deadline_s is None else deadline_s)
    target = resolve_target(url, settings, timeout_s=_remaining(deadline))
    timestamp = int(time.time())
    head = [
        f"POST {target.path} HTTP/1.1",
        f"Host: {target.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "User-Agent: goha-webhooks/2",
        f"X-Goha-Event: {EVENT}",
        f"X-Goha-Delivery: {job_id}",
        f"X-Goha-Timestamp: {timestamp}",
        f"X-Goha-Signature: {sign(key, timestamp, body)}",
    ]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
    sock = _connect(target, deadline)
    try:
        if target.scheme == "https":
            context = ssl_context or ssl.create_default_context()
            sock.settimeout(_remaining(deadline))
            sock = context.wrap_socket(sock, server_hostname=target.host)  # the name's certificate
        sock.settimeout(_remaining(deadline))
        sock.sendall(request)
        line = _status_line(sock, deadline)
    except DeliveryFailed:
        raise
    except (OSError, ssl.SSLError) as exc:  # timeouts, resets, TLS failures: all the same to the tenant
        raise DeliveryFailed(NO_ANSWER, f"{type(exc).__name__}: {exc}") from exc
    finally:
        sock.close()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise DeliveryFailed(NO_ANSWER, f"not an HTTP answer: {line[:80]!r}")
    status = int(parts[1])
    if not 200 <= status < 300:
        raise DeliveryFailed(f"the receiver answered HTTP {status}")
    return status


def retry_delay_s(attempts: int) -> float:
    """After ``attempts`` failed attempts: 30 s, 60 s, 120 s, ... at most an hour."""
    return min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** max(0, min(attempts - 1, 20)))


@dataclass
class DeliveryReport:
    delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # job id -> error of this attempt (public text)
    given_up: list[str] = field(default_factory=list)
    lost_claim: list[str] = field(default_factory=list)  # outcome not recorded: the claim was taken over


@dataclass(frozen=True)
class _Claim:
    job_id: str
    url: str
    body: bytes
    key_hash: str | None  # None: no usable key (missing or revoked)
    stamp: dt.datetime  # callback_next_at as claimed: the fence of the outcome's write
    expires: float  # monotonic time the claim lapses


def _pending_query(settings: Settings, now: dt.datetime) -> Any:
    return select(Job).where(
        Job.callback_url.is_not(None),
        Job.callback_delivered_at.is_(None),
        Job.state.in_([state.value for state in TERMINAL_STATES]),
        Job.callback_attempts < settings.webhook_max_attempts,
        or_(Job.callback_next_at.is_(None), Job.callback_next_at <= now),
    )


def _claim(
    sessions: Callable[[], Session],
    settings: Settings,
    *,
    now: dt.datetime,
    limit: int,
    job_ids: list[str] | None,
    skip: set[str],
) -> list[_Claim]:
    lease_s = settings.webhook_timeout_s + CLAIM_MARGIN_S
    claimed: list[_Claim] = []
    with sessions() as session:
        query = _pending_query(settings, now)
        if job_ids is not None:
            query = query.where(Job.id.in_(job_ids))
        if skip:
            query = query.where(Job.id.not_in(skip))
        query = query.order_by(Job.finished_at).limit(limit)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        started = time.monotonic()
        for job in session.scalars(query):
            key = session.get(ApiKey, job.api_key_id) if job.api_key_id else None
            usable = key is not None and key.revoked_at is None
            # Unique per claim (microseconds) and in the future: other passes skip the row until it lapses.
            stamp = max(now, utcnow()) + dt.timedelta(seconds=lease_s, microseconds=len(claimed))
            job.callback_next_at = stamp
            claimed.append(
                _Claim(
                    job.id,
                    job.callback_url or "",
                    json.dumps(payload(job, settings.public_base_url)).encode(),
                    key.key_hash if usable and key is not None else None,
                    stamp,
                    started + lease_s,
                )
            )
        session.commit()
    return claimed


def _attempt(
    claim: _Claim, settings: Settings, ssl_context: ssl.SSLContext | None
) -> tuple[str | None, bool]:
    """(public error or None, permanent)."""
    # Never outlive the claim: another pass may take the job once it lapses.
    budget = min(settings.webhook_timeout_s, claim.expires - CLAIM_MARGIN_S / 2 - time.monotonic())
    try:
        if claim.key_hash is None:
            raise CallbackRefused(UNSIGNED)
        if budget <= 0:
            raise DeliveryFailed(NO_ANSWER, "the claim lapsed before the attempt started")
        post(
            claim.url,
            claim.body,
            signing_key(claim.key_hash),
            settings,
            job_id=claim.job_id,
            deadline_s=budget,
            ssl_context=ssl_context,
        )
    except CallbackRefused as exc:
        log.warning("webhook refused", extra={"job_id": claim.job_id, "error": str(exc)})
        return (UNSIGNED if str(exc) == UNSIGNED else REFUSED), True
    except DeliveryFailed as exc:
        log.info("webhook attempt failed", extra={"job_id": claim.job_id, "error": exc.detail})
        return str(exc), False
    except Exception as exc:  # a bug here must not stop the other deliveries
        log.exception("webhook attempt failed", extra={"job_id": claim.job_id})
        return f"{NO_ANSWER} ({type(exc).__name__})", False
    return None, False


def _record(
    sessions: Callable[[], Session],
    settings: Settings,
    claim: _Claim,
    error: str | None,
    permanent: bool,
    report: DeliveryReport,
) -> None:
    with sessions() as session:
        query = select(Job).where(Job.id == claim.job_id)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        job = session.scalars(query).first()
        if job is None:
            return
        if job.callback_next_at != claim.stamp or job.callback_delivered_at is not None:
            report.lost_claim.append(claim.job_id)  # another pass took the job over: its outcome wins
            log.warning("webhook claim lapsed; outcome not recorded", extra={"job_id": claim.job_id})
            return
        job.callback_attempts += 1
        if error is None:
            job.callback_delivered_at = utcnow()
            job.callback_error = None
            report.delivered.append(claim.job_id)
        else:
            job.callback_error = error[:500]
            report.failed[claim.job_id] = error
            if permanent or job.callback_attempts >= settings.webhook_max_attempts:
                job.callback_attempts = max(job.callback_attempts, settings.webhook_max_attempts)
                report.given_up.append(claim.job_id)
                log.warning("webhook given up", extra={"job_id": claim.job_id, "error": error})
            else:
                job.callback_next_at = utcnow() + dt.timedelta(seconds=retry_delay_s(job.callback_attempts))
        session.commit()


def deliver_pending(
    sessions: Callable[[], Session],
    settings: Settings,
    *,
    job_ids: list[str] | None = None,
    now: dt.datetime | None = None,
    batch_size: int = 100,
    ssl_context: ssl.SSLContext | None = None,
) -> DeliveryReport:
    """Deliver due webhooks (all, or only ``job_ids``), at most ``batch_size`` attempts, each job at
    most once per call; ``sessions`` makes ORM sessions (e.g. ``Database.sessionmaker``).
    ``webhook_concurrency`` jobs are claimed at a time and delivered in parallel, each attempt within
    its total deadline and its claim."""
    report = DeliveryReport()
    now = now or utcnow()
    width = max(1, settings.webhook_concurrency)
    seen: set[str] = set()
    with concurrent.futures.ThreadPoolExecutor(width, thread_name_prefix="goha-webhook") as pool:
        while len(seen) < batch_size:
            limit = min(width, batch_size - len(seen))
            claims = _claim(sessions, settings, now=now, limit=limit, job_ids=job_ids, skip=seen)
            if not claims:
                break
            seen.update(claim.job_id for claim in claims)
            outcomes = list(pool.map(lambda claim: _attempt(claim, settings, ssl_context), claims))
            for claim, (error, permanent) in zip(claims, outcomes, strict=True):
                _record(sessions, settings, claim, error, permanent, report)
            if len(claims) < limit:
                break
    return report


class Dispatcher:
    """A thread running ``deliver_pending`` every ``webhook_interval_s`` until ``stop()`` (the
    reconciler's and the embedded stack's): deliveries never run inside a worker's job."""

    def __init__(self, sessions: Callable[[], Session], settings: Settings) -> None:
        self._sessions = sessions
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="goha-webhook-dispatcher", daemon=True)
        self.passes = 0

    def start(self) -> Dispatcher:
        self._thread.start()
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        self._stop.set()
        self._thread.join(self._settings.webhook_timeout_s + 5 if timeout_s is None else timeout_s)

    def __enter__(self) -> Dispatcher:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                report = deliver_pending(self._sessions, self._settings)
                if report.delivered or report.failed:
                    log.info(
                        "webhooks delivered %d, failed %d, given up %d",
                        len(report.delivered),
                        len(report.failed),
                        len(report.given_up),
                    )
            except Exception:  # the database may be down: try again next time
                log.exception("webhook pass failed")
            self.passes += 1
            self._stop.wait(self._settings.webhook_interval_s)
