"""Liveness, readiness (DB, broker, storage) and Prometheus metrics.

``/readyz`` says which dependency is down, never why (the exception text goes to the log only: it can
name hosts, users and driver versions). ``/metrics`` needs ``Authorization: Bearer <GOHA_METRICS_TOKEN>``
when that token is set (always in production mode): the API port is internet-facing.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from services.gateway.context import GatewayContext
from services.gateway.deps import get_context
from services.gateway.schemas import HealthOut
from shared.platform.errors import UNAUTHENTICATED, PlatformError
from shared.platform.metrics import gateway_collectors, render_latest
from shared.platform.queue import check_broker

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)


@router.get("/healthz", response_model=HealthOut, summary="The process is alive")
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=HealthOut,
    responses={503: {"model": HealthOut}},
    summary="DB, broker and storage reachable",
)
def readyz(ctx: Annotated[GatewayContext, Depends(get_context)]) -> Response:
    checks: dict[str, str] = {}
    for name, probe in (
        ("database", ctx.db.ping),
        ("broker", lambda: check_broker(ctx.celery, ctx.settings.broker_connect_timeout_s)),
        ("storage", ctx.storage.ping),
    ):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:
            log.warning("readiness check %s failed: %s: %s", name, type(exc).__name__, exc)
            checks[name] = "error"  # the reason is in the log, not in an unauthenticated answer
    ready = all(value == "ok" for value in checks.values())
    body = HealthOut(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics (all worker processes)", response_class=Response)
def metrics(request: Request, ctx: Annotated[GatewayContext, Depends(get_context)]) -> Response:
    _require_metrics_token(request, ctx)
    # Jobs by state and queue depth are computed here, at scrape time, by this app's collectors only.
    collectors = getattr(request.app.state, "metrics_collectors", None)
    if collectors is None:
        collectors = request.app.state.metrics_collectors = gateway_collectors(
            ctx.db.sessionmaker, ctx.settings
        )
    payload, content_type = render_latest(collectors)
    return Response(payload, media_type=content_type)


def _require_metrics_token(request: Request, ctx: GatewayContext) -> None:
    token = ctx.settings.metrics_token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode("utf-8")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), expected):
        raise PlatformError(
            UNAUTHENTICATED, "metrics need Authorization: Bearer <GOHA_METRICS_TOKEN>", status=401
        )
