"""Every error leaves the gateway as ``{"error": {"code": ..., "message": ...}}``.

4xx refusals of an authenticated request are also written to the audit log under the route's
action (set by ``deps.audit_action``) with the error code as the outcome.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.deps import Principal, RateLimited
from services.gateway.middleware import BodyTooLarge
from shared.platform import repository
from shared.platform.errors import INVALID_REQUEST, NOT_FOUND, PAYLOAD_TOO_LARGE, PlatformError
from shared.platform.metrics import INPUT_REFUSALS

log = logging.getLogger(__name__)

_HTTP_CODES = {400: INVALID_REQUEST, 404: NOT_FOUND, 405: "method_not_allowed", 413: PAYLOAD_TOO_LARGE}


def envelope(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _audit_refusal(request: Request, code: str, message: str) -> None:
    who: Principal | None = getattr(request.state, "principal", None)
    action: str | None = getattr(request.state, "audit_action", None)
    if who is None or action is None:
        return
    try:
        with request.app.state.ctx.db.session() as session:
            repository.audit(
                session,
                actor=who.actor,
                action=action,
                tenant_id=who.tenant_id,
                api_key_id=who.api_key_id,
                outcome=code,
                details={"message": message[:500], "path": request.url.path},
                request_id=getattr(request.state, "request_id", None),
                client_ip=request.client.host if request.client else None,
            )
    except Exception:  # the refusal must still be answered
        log.exception("could not audit a refusal")


async def _refusal(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    if 400 <= status < 500:
        INPUT_REFUSALS.labels(code=code).inc()
        if status != 429:  # a client hammering past its limit must not flood the audit log
            await run_in_threadpool(_audit_refusal, request, code, message)
    return envelope(status, code, message, details, headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PlatformError)
    async def _platform_error(request: Request, exc: PlatformError) -> JSONResponse:
        headers = None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        elif exc.status == 429 and "retry_after_s" in (exc.details or {}):  # e.g. too_many_uploads
            headers = {"Retry-After": str(max(1, round(float(exc.details["retry_after_s"]))))}
        if exc.status >= 500:
            log.error("platform error: %s", exc)
        return await _refusal(request, exc.status, exc.code, exc.message, exc.details or None, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "field": ".".join(str(part) for part in err.get("loc", ())[1:]) or "body",
                "problem": err.get("msg", ""),
            }
            for err in exc.errors()
        ]
        summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:5])
        return await _refusal(
            request, 422, INVALID_REQUEST, f"invalid request: {summary}", {"problems": problems}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, BodyTooLarge):
            return await _refusal(
                request, 413, PAYLOAD_TOO_LARGE, f"the request body exceeds the limit of {exc.limit} bytes"
            )
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = str(exc.detail) if exc.detail else code
        if exc.status_code == 400 and exc.__cause__ is not None:
            message = f"malformed request body: {exc.__cause__}"
        return await _refusal(request, exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return envelope(500, "internal_error", "internal error; the request id identifies it in the logs")
