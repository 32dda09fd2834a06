"""Celery wiring shared by the gateway (producer), the worker (consumer) and the reconciler.

The worker implements the task named ``REENACT_TASK`` (``goha.reenact``) taking ``job_id: str``.
Messages may be delivered more than once (re-enqueue by the reconciler, redelivery after a worker
crash): the task must claim the job with ``jobs.transition(..., RUNNING)``, whose compare-and-swap
lets exactly one delivery run it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery

from shared.platform.settings import Settings, get_settings

REENACT_TASK = "goha.reenact"

log = logging.getLogger(__name__)


def _filesystem_transport_options(settings: Settings) -> dict[str, Any]:
    assert settings.broker_folder is not None
    root = Path(settings.broker_folder)
    queue_dir = root / "queue"
    processed = root / "processed"
    control = root / "control"  # kombu's default is ./control in the working directory
    for folder in (queue_dir, processed, control):
        folder.mkdir(parents=True, exist_ok=True)
    return {
        # One folder both ways: producers write where consumers read.
        "data_folder_in": str(queue_dir),
        "data_folder_out": str(queue_dir),
        "processed_folder": str(processed),
        "control_folder": str(control),
        "store_processed": False,
        "polling_interval": 0.05,
    }


def make_celery(settings: Settings, *, name: str = "goha") -> Celery:
    """A Celery app configured from ``settings`` (the worker registers its tasks on it)."""
    if settings.result_backend.startswith("db+sqlite:///"):
        Path(settings.result_backend.removeprefix("db+sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    app = Celery(name, broker=settings.broker_url, backend=settings.result_backend)
    transport_options: dict[str, Any] = {}
    if settings.broker_url.startswith("filesystem://"):
        transport_options = _filesystem_transport_options(settings)
    elif settings.broker_url.startswith(("redis://", "rediss://")):
        # Longer than any job: an unacked task is redelivered only if its worker really died.
        transport_options = {"visibility_timeout": 6 * 3600}
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # job state lives in the database, not in the result backend
        task_acks_late=True,  # a task whose worker dies is redelivered...
        task_reject_on_worker_lost=True,  # ...also when the child process is killed mid-task
        worker_prefetch_multiplier=1,  # jobs are long: do not hoard messages in one worker
        broker_connection_timeout=settings.broker_connect_timeout_s,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        # A publish must not hang a request: fail fast and let the reconciler re-enqueue later.
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


@lru_cache(maxsize=1)
def get_celery() -> Celery:
    """The process-wide app built from ``get_settings()``."""
    return make_celery(get_settings())


def enqueue_job(job_id: str, app: Celery | None = None) -> str:
    """Publish ``goha.reenact(job_id)``; returns the Celery task id. Call only after the job is committed."""
    app = app or get_celery()
    # ignore_result: job state lives in the database; touching the result backend here would make a
    # publish wait on (and retry against) a second server.
    result = app.send_task(REENACT_TASK, args=[job_id], queue=app.conf.task_default_queue, ignore_result=True)
    return str(result.id)


def check_broker(app: Celery, timeout_s: float = 3.0) -> None:
    """Raise when the broker cannot be reached (readiness check)."""
    url = str(app.conf.broker_url)
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
        return
    if url.startswith("filesystem://"):
        folder = Path(app.conf.broker_transport_options["data_folder_in"])
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise OSError(f"broker folder {folder} is not a writable directory")
        return
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout_s)


# kombu's Redis transport: one list per priority step, and the messages delivered but not yet
# acknowledged (a worker holds them) in one hash for the whole database.
_REDIS_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
_REDIS_UNACKED_HASH = "unacked"


def _job_id_of(raw: bytes | str) -> str | None:
    """The ``job_id`` argument of a serialized ``goha.reenact`` message (None for anything else)."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # the unacked hash stores [message, exchange, routing_key]
            message = message[0]
        if message.get("headers", {}).get("task") != REENACT_TASK:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def pending_job_ids(app: Celery, timeout_s: float = 5.0) -> set[str] | None:
    """Job ids whose message is in the broker: waiting in the queue or delivered and not yet
    acknowledged (a worker holds it). None when the broker cannot be inspected (then the caller
    cannot tell a lost message from a waiting one). Reads every message: O(queue length)."""
    url = str(app.conf.broker_url)
    queue = str(app.conf.task_default_queue)
    ids: set[str] = set()
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            for suffix in _REDIS_PRIORITY_SUFFIXES:
                for raw in client.lrange(f"{queue}{suffix}", 0, -1):
                    if (job_id := _job_id_of(raw)) is not None:
                        ids.add(job_id)
            for raw in client.hvals(_REDIS_UNACKED_HASH):
                if (job_id := _job_id_of(raw)) is not None:
                    ids.add(job_id)
        finally:
            client.close()
        return ids
    if url.startswith("filesystem://"):
        folder = Path(app.conf.broker_transport_options["data_folder_in"])
        for path in folder.glob(f"*.{queue}.msg"):
            try:
                raw = path.read_bytes()
            except OSError:  # consumed meanwhile
                continue
            if (job_id := _job_id_of(raw)) is not None:
                ids.add(job_id)
        return ids
    return None
