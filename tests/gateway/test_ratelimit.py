from __future__ import annotations

import secrets
import time

import pytest

from services.gateway.ratelimit import MemoryRateLimiter, RedisRateLimiter


def test_memory_bucket_refills_over_time() -> None:
    limiter = MemoryRateLimiter()
    assert [limiter.hit("k", 120).allowed for _ in range(120)] == [True] * 120
    refused = limiter.hit("k", 120)
    assert not refused.allowed and 0 < refused.retry_after_s <= 0.5  # 120/min refills one token per 0.5 s
    time.sleep(0.55)
    assert limiter.hit("k", 120).allowed
    assert limiter.hit("other", 120).allowed


@pytest.mark.integration
def test_redis_window_is_shared_between_limiter_instances(goha_redis_url: str) -> None:
    prefix = f"goha-test-rl-{secrets.token_hex(4)}"
    replica_a, replica_b = RedisRateLimiter(goha_redis_url, prefix), RedisRateLimiter(goha_redis_url, prefix)
    if time.time() % RedisRateLimiter.WINDOW_S > RedisRateLimiter.WINDOW_S - 1:
        time.sleep(1.1)  # keep the six hits inside one fixed window
    decisions = [(replica_a if i % 2 else replica_b).hit("key-1", 4) for i in range(6)]
    assert [d.allowed for d in decisions] == [True] * 4 + [False] * 2
    assert 0 < decisions[-1].retry_after_s <= 60 and decisions[-1].remaining == 0
