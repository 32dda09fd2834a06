"""Per-API-key rate limits.

``MemoryRateLimiter`` is a token bucket per key inside one process (embedded mode, one replica).
``RedisRateLimiter`` counts in fixed one-minute windows in Redis so every gateway replica shares
the same budget. ``FailoverRateLimiter`` wraps it: when Redis does not answer, requests are limited by
the process's own token buckets instead (each replica then enforces the limit on its own share of the
traffic), the outage is logged and counted (``goha_rate_limiter_fallbacks_total``), and Redis is tried
again after ``retry_after_s``. A Redis outage never turns authenticated requests into 500s.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


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


class FailoverRateLimiter:
    def __init__(self, primary: RateLimiter, fallback: RateLimiter, *, retry_after_s: float = 5.0) -> None:
        self.primary = primary
        self.fallback = fallback
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self._lock = threading.Lock()

    def hit(self, key: str, limit_per_minute: int) -> RateDecision:
        from shared.platform.metrics import RATE_LIMITER_FALLBACKS

        now = time.monotonic()
        if now >= self._down_until:
            try:
                return self.primary.hit(key, limit_per_minute)
            except Exception as exc:  # redis errors, timeouts: degrade, never fail the request
                with self._lock:
                    first = now >= self._down_until
                    self._down_until = now + self.retry_after_s
                if first:
                    log.warning(
                        "rate limiter backend unavailable, limiting per process for %.0f s: %s",
                        self.retry_after_s,
                        exc,
                    )
        RATE_LIMITER_FALLBACKS.inc()
        return self.fallback.hit(key, limit_per_minute)
