"""Bounded loopback load check: 200 concurrent submissions + polls against uvicorn (2 processes),
real PostgreSQL and Redis, one reference worker. No job may be lost or duplicated."""

from __future__ import annotations

import pytest

from services.gateway.bench import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_hundred_concurrent_submissions_lose_nothing(goha_redis_url: str) -> None:
    report = run_bench(200, gateway_workers=2, redis_url=goha_redis_url)
    assert report["submit_errors"] == report["poll_errors"] == 0, report
    assert report["accepted"] == report["succeeded"] == report["jobs_in_db"] == 200
    assert report["jobs_lost"] == 0 and report["jobs_duplicated"] == 0
    assert report["metrics_jobs_submitted"] == 200  # multiprocess metrics add up across workers
