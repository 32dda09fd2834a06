"""Job-finished webhooks: instead of polling, a client names a ``callback_url`` when it submits and
the platform POSTs there once the job has succeeded, failed or been cancelled.

Delivery: the worker tries once right after the job finishes; the reconciler's pass
(``deliver_pending``) retries what is not delivered, with backoff (30 s, 1, 2, 4... min, at most an
hour apart, ``GOHA_WEBHOOK_MAX_ATTEMPTS`` attempts), and delivers for jobs that finished elsewhere
(cancelled through the API, timed out in the queue). Any 2xx answer counts as delivered; redirects are
not followed. A receiver must tolerate a repeated delivery (the same ``delivery`` id).

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
secret has to be handed out. Reject old timestamps to stop replays.

Server-side request forgery: the URL must be ``https`` and its host must not be, or resolve to, a
loopback, private, link-local or otherwise non-public address; both are relaxed only where an operator
allows it (``GOHA_WEBHOOK_ALLOW_HTTP``, ``GOHA_WEBHOOK_ALLOW_PRIVATE_HOSTS``: on by default in the
embedded single-machine mode). Addresses are checked when the job is submitted (literal IPs, names
like ``localhost``) and again, after DNS, at every delivery. A name whose answer changes between that
check and the connection (DNS rebinding) is not caught here: where that matters, send the workers'
and reconciler's egress through a proxy that enforces it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
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
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain")


class CallbackRefused(Exception):
    """The callback target may not be called (permanent: no retry)."""


def allow_http(settings: Settings) -> bool:
    return settings.embedded if settings.webhook_allow_http is None else settings.webhook_allow_http


def allow_private(settings: Settings) -> bool:
    allowed = settings.webhook_allow_private_hosts
    return settings.embedded if allowed is None else allowed


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


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
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise refuse("has an invalid port") from exc
    if not allow_private(settings):
        host = parts.hostname.lower().rstrip(".")
        if host == "localhost" or host.endswith(_LOCAL_SUFFIXES):
            raise refuse("must name a public host")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None and not _public(str(literal)):
            raise refuse("must name a public address")
    return url


def _check_resolved(url: str, settings: Settings) -> None:
    if allow_private(settings):
        return
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {parts.hostname}: {exc}") from exc  # DNS may heal: retried
    private = sorted({str(info[4][0]) for info in infos if not _public(str(info[4][0]))})
    if private:
        raise CallbackRefused(f"{parts.hostname} resolves to a non-public address ({', '.join(private)})")


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


def post(url: str, body: bytes, key: bytes, settings: Settings, *, job_id: str) -> None:
    """One delivery attempt: raises ``CallbackRefused`` (permanent) or another exception (retry)."""
    _check_resolved(url, settings)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "goha-webhooks/1",
        "X-Goha-Event": EVENT,
        "X-Goha-Delivery": job_id,
        "X-Goha-Timestamp": str(timestamp),
        "X-Goha-Signature": sign(key, timestamp, body),
    }
    # Streamed and never read: a receiver cannot make the platform hold a large answer.
    with httpx.stream(
        "POST", url, content=body, headers=headers, timeout=settings.webhook_timeout_s
    ) as response:
        status = response.status_code
    if not 200 <= status < 300:
        raise OSError(f"the callback answered HTTP {status}")


def retry_delay_s(attempts: int) -> float:
    """After ``attempts`` failed attempts: 30 s, 60 s, 120 s, ... at most an hour."""
    return min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** max(0, min(attempts - 1, 20)))


@dataclass
class DeliveryReport:
    delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # job id -> error of this attempt
    given_up: list[str] = field(default_factory=list)


def _pending_query(settings: Settings, now: dt.datetime) -> Any:
    return select(Job).where(
        Job.callback_url.is_not(None),
        Job.callback_delivered_at.is_(None),
        Job.state.in_([state.value for state in TERMINAL_STATES]),
        Job.callback_attempts < settings.webhook_max_attempts,
        or_(Job.callback_next_at.is_(None), Job.callback_next_at <= now),
    )


def deliver_pending(
    sessions: Callable[[], Session],
    settings: Settings,
    *,
    job_ids: list[str] | None = None,
    now: dt.datetime | None = None,
    batch_size: int = 100,
) -> DeliveryReport:
    """Deliver due webhooks (all, or only ``job_ids``); ``sessions`` makes ORM sessions (a
    sessionmaker, e.g. ``Database.sessionmaker``). Rows are claimed by pushing their next attempt
    forward before the request (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so concurrent passes never
    call the same job twice at once."""
    report = DeliveryReport()
    now = now or utcnow()
    with sessions() as session:
        query = _pending_query(settings, now)
        if job_ids is not None:
            query = query.where(Job.id.in_(job_ids))
        query = query.order_by(Job.finished_at).limit(batch_size)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        claimed = []
        for job in session.scalars(query):
            key = session.get(ApiKey, job.api_key_id) if job.api_key_id else None
            job.callback_next_at = now + dt.timedelta(seconds=settings.webhook_timeout_s * 4 + FIRST_RETRY_S)
            claimed.append(
                (job.id, job.callback_url, json.dumps(payload(job, settings.public_base_url)).encode(), key)
            )
        session.commit()
    for job_id, url, body, key in claimed:
        error: str | None = None
        permanent = False
        try:
            if key is None:
                raise CallbackRefused("the job was not submitted with an API key: nothing to sign with")
            post(url, body, signing_key(key.key_hash), settings, job_id=job_id)
        except CallbackRefused as exc:
            error, permanent = str(exc), True
        except Exception as exc:  # network, TLS, non-2xx: retried later
            error = f"{type(exc).__name__}: {exc}"
        with sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                continue
            job.callback_attempts += 1
            if error is None:
                job.callback_delivered_at = utcnow()
                job.callback_error = None
                report.delivered.append(job_id)
            else:
                job.callback_error = error[:500]
                report.failed[job_id] = error
                if permanent or job.callback_attempts >= settings.webhook_max_attempts:
                    job.callback_attempts = max(job.callback_attempts, settings.webhook_max_attempts)
                    report.given_up.append(job_id)
                    log.warning("webhook given up", extra={"job_id": job_id, "error": error})
                else:
                    job.callback_next_at = utcnow() + dt.timedelta(
                        seconds=retry_delay_s(job.callback_attempts)
                    )
            session.commit()
    return report
