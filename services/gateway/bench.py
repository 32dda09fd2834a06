"""Gateway load check (loopback only, bounded): N concurrent submissions, then polls until done.

Starts a real stack on 127.0.0.1: uvicorn (several worker processes) serving ``create_app``, a fresh
PostgreSQL database, the local Redis as broker, local-directory storage, and one Celery worker
running the reference ``goha.reenact`` stand-in (no model: this measures the platform, not the
renderer). Then it submits ``--jobs`` jobs at once with httpx, polls each until it is terminal, and
checks the database: every accepted job exists once, ran once, and succeeded.

    python -m services.gateway.bench [--jobs 200] [--gateway-workers 2]

The LAST stdout line is JSON: {"submit_p50_ms", "submit_p99_ms", "poll_p99_ms", "jobs_lost",
"submit_per_s", ...}. ``submit_per_s``: accepted submissions per second, from the first request to the
last acceptance. Each submission carries its own ``Idempotency-Key`` and is sent again when the gateway
answers 429 ``too_many_uploads`` (all upload slots of the key busy: the body was not read), as a client
should; ``submit_retries`` counts those, and ``jobs_duplicated`` proves the retries created nothing twice.

Connection reuse: the client's pool drops an idle connection after ``CLIENT_KEEPALIVE_S`` and uvicorn
closes one after ``SERVER_KEEPALIVE_S``, well past it. With both at 5 s (httpx's and uvicorn's defaults)
a request sent on a connection idle for just under 5 s raced the server's close and failed with "Server
disconnected without sending a response" (the client starts its idle clock when it has read the response,
later than the server, and on a loaded machine much later). That is a client/server timeout mismatch, not
lost work, so the bench keeps the server's timeout the longer one, as a proxy in front of it would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.media.synthetic import make_image_bytes, make_video_bytes
from shared.platform import admin
from shared.platform.db import Database
from shared.platform.processes import free_ports, stop_process_group
from shared.platform.tempdb import temp_postgres_database

CONSENT = {
    "consent_subject": "Bench Subject",
    "consent_method": "self",
    "consent_obtained_at": "2026-01-01T00:00:00Z",
}
TERMINAL = {"succeeded", "failed", "cancelled"}
CLIENT_KEEPALIVE_S = 5.0  # httpx's default, stated: it must stay below SERVER_KEEPALIVE_S
SERVER_KEEPALIVE_S = 60
MAX_SUBMIT_TRIES = 20


@dataclass
class Measurements:
    submit_ms: list[float] = field(default_factory=list)
    poll_ms: list[float] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    submit_errors: list[str] = field(default_factory=list)
    submit_retries: int = 0
    submit_window_s: float = 0.0
    poll_errors: list[str] = field(default_factory=list)
    final_states: dict[str, str] = field(default_factory=dict)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@contextlib.contextmanager
def _process(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop_process_group(process, grace_s=15, name=log_path.stem)


def _wait_ready(
    base_url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited early; see {log_path}:\n{log_path.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/readyz", timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"gateway not ready after {timeout_s} s; see {log_path}")


async def _load(base_url: str, key: str, jobs: int, poll_interval_s: float, timeout_s: float) -> Measurements:
    results = Measurements()
    portraits = [make_image_bytes((128, 128), "PNG", seed=i) for i in range(20)]  # some shared assets
    driving = make_video_bytes(".mp4", frames=8, fps=8, size=(64, 64))
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(
        max_connections=jobs, max_keepalive_connections=jobs, keepalive_expiry=CLIENT_KEEPALIVE_S
    )
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=120.0) as client:
        run_tag = secrets.token_hex(4)
        last_accepted = 0.0

        async def submit(index: int) -> None:
            nonlocal last_accepted
            files = {
                "portrait": ("p.png", portraits[index % len(portraits)], "image/png"),
                "driving_video": ("d.mp4", driving, "video/mp4"),
            }
            start = time.perf_counter()
            for _ in range(MAX_SUBMIT_TRIES):
                try:
                    response = await client.post(
                        "/v1/jobs",
                        files=files,
                        data=CONSENT,
                        headers={"Idempotency-Key": f"bench-{run_tag}-{index}"},
                    )
                except httpx.HTTPError as exc:
                    results.submit_errors.append(repr(exc))
                    return
                busy = response.status_code == 429 and '"too_many_uploads"' in response.text
                if not busy:
                    break
                results.submit_retries += 1
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
            results.submit_ms.append((time.perf_counter() - start) * 1000)
            if response.status_code == 202:
                results.accepted.append(response.json()["id"])
                last_accepted = time.perf_counter()
            else:
                results.submit_errors.append(f"{response.status_code}: {response.text[:200]}")

        first_submit = time.perf_counter()
        await asyncio.gather(*(submit(i) for i in range(jobs)))
        results.submit_window_s = max(last_accepted - first_submit, 1e-9)

        deadline = time.monotonic() + timeout_s

        async def poll(job_id: str) -> None:
            while True:
                start = time.perf_counter()
                try:
                    response = await client.get(f"/v1/jobs/{job_id}")
                except httpx.HTTPError as exc:  # recorded, so the report still says what happened
                    results.poll_errors.append(repr(exc))
                    results.final_states[job_id] = "poll_error"
                    return
                results.poll_ms.append((time.perf_counter() - start) * 1000)
                state = (
                    response.json()["state"]
                    if response.status_code == 200
                    else f"http_{response.status_code}"
                )
                if state in TERMINAL or state.startswith("http_") or time.monotonic() > deadline:
                    results.final_states[job_id] = state
                    return
                await asyncio.sleep(poll_interval_s)

        await asyncio.gather(*(poll(job_id) for job_id in results.accepted))
    return results


def _database_counts(database_url: str, tenant_id: str) -> tuple[int, dict[str, int]]:
    """Jobs stored for the tenant, and how many times each was claimed (queued -> running events)."""
    from sqlalchemy import func, select

    from shared.platform.models import Job, JobEvent

    db = Database(database_url)
    try:
        with db.session() as session:
            stored = int(
                session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)) or 0
            )
            claims = dict(
                session.execute(
                    select(JobEvent.job_id, func.count())
                    .join(Job, Job.id == JobEvent.job_id)
                    .where(Job.tenant_id == tenant_id, JobEvent.to_state == "running")
                    .group_by(JobEvent.job_id)
                ).all()
            )
    finally:
        db.dispose()
    return stored, {k: int(v) for k, v in claims.items()}


def run_bench(
    jobs: int = 200,
    *,
    gateway_workers: int = 2,
    redis_url: str = "redis://127.0.0.1:6379/0",
    poll_interval_s: float = 0.25,
    timeout_s: float = 240.0,
) -> dict[str, Any]:
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="goha-bench-") as tmp,
        temp_postgres_database("goha_bench") as database_url,
    ):
        root = Path(tmp)
        metrics_dir = root / "prometheus"
        metrics_dir.mkdir()
        queue = f"goha-bench-{secrets.token_hex(4)}"
        env = {
            **os.environ,
            "GOHA_EMBEDDED": "false",
            "GOHA_VAR_DIR": str(root / "var"),
            "GOHA_DATABASE_URL": database_url,
            "GOHA_BROKER_URL": redis_url,
            "GOHA_RESULT_BACKEND": redis_url,
            "GOHA_QUEUE_NAME": queue,
            "GOHA_STORAGE_BACKEND": "local",
            "GOHA_LOCAL_STORAGE_DIR": str(root / "storage"),
            "GOHA_PROVENANCE_SIGNING_KEY": secrets.token_hex(32),
            "GOHA_RATE_LIMIT_PER_MINUTE": str(max(1000, jobs * 100)),
            "GOHA_VERIFIER": "none",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        db = Database(database_url)
        tenant = admin.create_tenant(db, "bench")
        _row, key = admin.create_key(db, tenant.id, label="bench")
        db.dispose()

        (port,) = free_ports(1)
        base_url = f"http://127.0.0.1:{port}"
        gateway_cmd = [
            sys.executable, "-m", "uvicorn", "services.gateway.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(gateway_workers),
            # info: the supervisor's "Child process [...] died" (a worker replaced) is an info line
            "--log-level", "info", "--no-access-log", "--backlog", str(max(2048, jobs * 2)),
            "--timeout-keep-alive", str(SERVER_KEEPALIVE_S),
        ]  # fmt: skip
        worker_cmd = [sys.executable, "-m", "services.worker.reference", "worker"]
        with (
            _process(gateway_cmd, env, root / "gateway.log") as gateway,
            _process(worker_cmd, env, root / "worker.log"),
        ):
            _wait_ready(base_url, gateway, root / "gateway.log")
            results = asyncio.run(_load(base_url, key, jobs, poll_interval_s, timeout_s))
            metrics_text = httpx.get(f"{base_url}/metrics", timeout=10).text
        gateway_log = (root / "gateway.log").read_text(errors="replace")
        stored, claims = _database_counts(database_url, tenant.id)
        with contextlib.suppress(Exception):
            import redis

            redis.Redis.from_url(redis_url).delete(queue)

    succeeded = sum(1 for state in results.final_states.values() if state == "succeeded")
    accepted = set(results.accepted)
    lost = len(accepted) - succeeded + len(results.submit_errors)
    errors = results.submit_errors + results.poll_errors
    server_events = [line for line in gateway_log.splitlines() if '"uvicorn.access"' not in line]
    duplicated = (stored - len(accepted)) + sum(count - 1 for count in claims.values() if count > 1)
    submitted_metric = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("goha_jobs_submitted_total{")
    )
    return {
        "submit_p50_ms": round(_percentile(results.submit_ms, 50), 1),
        "submit_p99_ms": round(_percentile(results.submit_ms, 99), 1),
        "poll_p99_ms": round(_percentile(results.poll_ms, 99), 1),
        "jobs_lost": lost,
        "jobs_duplicated": duplicated,
        "submit_per_s": round(len(accepted) / results.submit_window_s, 1) if accepted else 0.0,
        "submit_retries": results.submit_retries,
        "jobs": jobs,
        "accepted": len(accepted),
        "succeeded": succeeded,
        "submit_errors": len(results.submit_errors),
        "poll_errors": len(results.poll_errors),
        "jobs_in_db": stored,
        "metrics_jobs_submitted": submitted_metric,  # summed over all uvicorn worker processes
        "submit_mean_ms": round(statistics.fmean(results.submit_ms), 1) if results.submit_ms else None,
        "polls": len(results.poll_ms),
        "gateway_workers": gateway_workers,
        # uvicorn's supervisor replaces a worker that died or missed its health check: its connections drop
        "gateway_worker_restarts": sum(" died" in line for line in server_events),
        "wall_s": round(time.perf_counter() - started, 1),
        "first_errors": errors[:3],
        "gateway_log_tail": "\n".join(server_events[-30:]) if errors else "",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.gateway.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--gateway-workers", type=int, default=2)
    parser.add_argument(
        "--redis-url", default=os.environ.get("GOHA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args(argv)
    report = run_bench(args.jobs, gateway_workers=args.gateway_workers, redis_url=args.redis_url)
    print(json.dumps(report))
    return 0 if report["jobs_lost"] == 0 and report["jobs_duplicated"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
