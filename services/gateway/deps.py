"""FastAPI dependencies: the per-process context, the authenticated principal, rate limiting."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from services.gateway.context import GatewayContext
from services.gateway.ratelimit import RateDecision
from shared.platform import repository
from shared.platform.errors import RATE_LIMITED, UNAUTHENTICATED, PlatformError
from shared.platform.logging import bind_context
from shared.platform.models import utcnow

LAST_USED_RESOLUTION = dt.timedelta(minutes=5)

# Declared for the OpenAPI document (the "Authorize" button); parsing is done below either way.
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer goha_<prefix>_<secret>")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="alternative to Bearer")


@dataclass(frozen=True)
class RequestMeta:
    request_id: str | None
    client_ip: str | None


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    api_key_id: str
    key_prefix: str

    @property
    def actor(self) -> str:
        return f"key:{self.key_prefix}"


def request_meta(request: Request) -> RequestMeta:
    return RequestMeta(
        request_id=getattr(request.state, "request_id", None),
        client_ip=request.client.host if request.client else None,
    )


async def get_context(request: Request) -> GatewayContext:  # async: no thread hop for a lookup
    return request.app.state.ctx  # type: ignore[no-any-return]


class RateLimited(PlatformError):
    status = 429

    def __init__(self, retry_after_s: float, limit: int) -> None:
        super().__init__(
            RATE_LIMITED,
            f"rate limit of {limit} requests per minute exceeded; retry in {retry_after_s:.0f} s",
            details={"retry_after_s": round(retry_after_s, 1), "limit_per_minute": limit},
        )
        self.retry_after_s = retry_after_s


def _authenticate(ctx: GatewayContext, raw_key: str) -> tuple[Principal, RateDecision]:
    """The blocking part (database, Redis): run on a worker thread."""
    with ctx.db.session() as session:
        row = repository.authenticate(session, raw_key)
        if row is None:
            raise PlatformError(UNAUTHENTICATED, "invalid or revoked API key", status=401)
        who = Principal(tenant_id=row.tenant_id, api_key_id=row.id, key_prefix=row.prefix)
        limit = row.rate_limit_per_minute or ctx.settings.rate_limit_per_minute
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            row.last_used_at = now  # coarse on purpose: one write per key every few minutes, not per request
    return who, ctx.rate_limiter.hit(who.api_key_id, limit)


async def principal(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
    header_key: str | None = Depends(_api_key_header),
    ctx: GatewayContext = Depends(get_context),
) -> Principal:
    raw_key = bearer.credentials if bearer is not None else header_key
    if not raw_key:
        raise PlatformError(UNAUTHENTICATED, "missing API key (Authorization: Bearer <key>)", status=401)
    who, decision = await run_in_threadpool(_authenticate, ctx, raw_key)
    request.state.principal = who
    # async on purpose: bound in the request's own task, so every later line of the request (the
    # endpoint's thread, error handlers, the access log) carries the tenant. A value bound on a worker
    # thread would die with that thread's context copy. The middleware's unbind ends it with the request.
    bind_context(tenant_id=who.tenant_id)
    if not decision.allowed:
        raise RateLimited(decision.retry_after_s, decision.limit)
    return who


async def job_log_context(job_id: str) -> str:
    """Route dependency: the ``{job_id}`` of the path on every log line of the request."""
    bind_context(job_id=job_id[:64])  # ids are 36 characters; a client's junk stays bounded
    return job_id


def audit_action(action: str):  # type: ignore[no-untyped-def]
    """Dependency factory naming the audited action of a route (refusals are audited under it too)."""

    def _set(request: Request) -> str:
        request.state.audit_action = action
        return action

    return Depends(_set)
