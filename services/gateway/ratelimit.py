"""Per-API-key rate limits.

``MemoryRateLimiter`` is a token bucket per key inside one process (embedded mode, one replica).
``RedisRateLimiter`` counts in fixed one-minute windows in Redis so every gateway replica shares
the same budget.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float


class RateLimiter(Protocol):
    def hit(self, key: str, limit_per_minute: int) -> RateDecision: ...


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def hit(self, key: str, limit_per_minute: int) -> RateDecision:
        capacity = float(max(1, limit_per_minute))
        rate = capacity / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return RateDecision(True, int(capacity), int(tokens - 1.0), 0.0)
            self._buckets[key] = (tokens, now)
            return RateDecision(False, int(capacity), 0, (1.0 - tokens) / rate)


class RedisRateLimiter:
    WINDOW_S = 60

    def __init__(self, url: str, prefix: str = "goha:ratelimit") -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
        self._prefix = prefix

    def hit(self, key: str, limit_per_minute: int) -> RateDecision:
        now = time.time()
        window = int(now // self.WINDOW_S)
        redis_key = f"{self._prefix}:{key}:{window}"
        pipe = self._client.pipeline()
        pipe.incr(redis_key)
        pipe.expire(redis_key, self.WINDOW_S * 2)
        count = int(pipe.execute()[0])
        remaining = max(0, limit_per_minute - count)
        if count <= limit_per_minute:
            return RateDecision(True, limit_per_minute, remaining, 0.0)
        return RateDecision(False, limit_per_minute, 0, math.ceil((window + 1) * self.WINDOW_S - now))
