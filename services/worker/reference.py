"""The reference stand-in for the worker's ``goha.reenact`` task: no model runs.

``register_reference_task`` registers a task under the worker's name that drives a job through the
state machine (queued -> running -> succeeded) as the real worker does: it claims the job's lease,
writes progress, stores a result object and completes the provenance record. It copies the driving
clip as the "result". The real worker (``services/worker/tasks.py``) registers the real task under
the same name and replaces it. It measures and exercises the platform, not the renderer: the gateway
benchmark (``services/gateway/bench.py``) runs it as a Celery worker process, configured from
GOHA_* like the real one:

    python -m services.worker.reference worker [--concurrency 1]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from typing import Any

log = logging.getLogger(__name__)

REFERENCE_MODEL_VERSION = "reference-stand-in/0"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.worker.reference")
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
