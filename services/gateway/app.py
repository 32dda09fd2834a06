"""Gateway app factory: ``create_app(settings=None) -> FastAPI``.

    uvicorn services.gateway.app:create_app --factory          # settings from GOHA_* env
    python -m services.gateway                                  # same, embedded defaults

Multiprocess-safe metrics: set PROMETHEUS_MULTIPROC_DIR before start when running several workers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from celery import Celery
from fastapi import FastAPI

from services.gateway.context import GatewayContext
from services.gateway.errors import install_error_handlers
from services.gateway.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from services.gateway.ratelimit import (
    FailoverRateLimiter,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
)
from services.gateway.routers import apidocs, assets, health, jobs, previews, verify, web
from shared.media.video import DecodeLimits, set_decode_limits
from shared.platform.db import Database
from shared.platform.errors import ConfigurationError
from shared.platform.logging import configure_logging
from shared.platform.production import require_production_ready
from shared.platform.queue import make_celery
from shared.platform.settings import Settings, get_settings
from shared.platform.storage import ObjectStorage, make_storage

log = logging.getLogger(__name__)

API_DESCRIPTION = """Batch head-avatar reenactment: send one portrait and one driving video, poll the job,
download a watermarked MP4 with signed provenance.

Authenticate with `Authorization: Bearer <api key>`. Every 4xx answer is
`{"error": {"code": "...", "message": "..."}}` with a stable `code`."""


def _rate_limiter(settings: Settings) -> RateLimiter:
    if settings.rate_limit_backend == "redis":
        url = settings.effective_rate_limit_redis_url
        if not url:
            raise ConfigurationError(
                "rate_limit_backend=redis needs GOHA_RATE_LIMIT_REDIS_URL or a redis broker_url"
            )
        return FailoverRateLimiter(RedisRateLimiter(url), MemoryRateLimiter())
    return MemoryRateLimiter()


def create_app(
    settings: Settings | None = None,
    *,
    db: Database | None = None,
    storage: ObjectStorage | None = None,
    celery_app: Celery | None = None,
) -> FastAPI:
    """Build the gateway. The keyword arguments let tests and the bench share clients they own."""
    settings = settings or get_settings()
    require_production_ready(settings, "gateway")  # GOHA_PRODUCTION: no embedded default, no placeholder
    # One JSON object per line, uvicorn's lines included (GOHA_LOG_FORMAT=text for a terminal).
    configure_logging(settings.log_level)
    # /v1/verify decodes uploads in this process: every frame is held to the video size limits.
    set_decode_limits(DecodeLimits(settings.max_video_width, settings.max_video_height))
    if settings.auto_migrate:
        from shared.platform.migrate import upgrade

        upgrade(settings.database_url)
    owns_db = db is None
    ctx = GatewayContext(
        settings=settings,
        db=db or Database.from_settings(settings),
        storage=storage or make_storage(settings),
        celery=celery_app or make_celery(settings),
        rate_limiter=_rate_limiter(settings),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_db:
            ctx.db.dispose()

    app = FastAPI(
        title="GOHA reenactment platform",
        version="1.0.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by routers.apidocs with local assets (works offline)
        redoc_url=None,  # ReDoc would load from a CDN: not offered
        form_limits={"max_fields": settings.max_form_fields, "max_files": 4, "max_part_size": 64 * 1024},
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    routers = (
        jobs.router,
        assets.router,
        previews.router,
        verify.router,
        health.router,
        web.router,
        apidocs.router,
    )
    for router in routers:
        app.include_router(router)
    # Outermost last: the size cap sees the raw stream before anything buffers it.
    app.add_middleware(RequestContextMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    return app
