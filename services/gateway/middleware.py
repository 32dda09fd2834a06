"""ASGI middleware: request id + metrics, and the request body size cap.

Both are plain ASGI (not BaseHTTPMiddleware) so uploads stream through without being buffered.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.platform.errors import PAYLOAD_TOO_LARGE
from shared.platform.logging import bind_request_id, unbind
from shared.platform.metrics import HTTP_LATENCY, HTTP_REQUESTS, INPUT_REFUSALS

REQUEST_ID_HEADER = "x-request-id"


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's form parsing re-raises it unchanged (it wraps anything else)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"the request body exceeds {limit} bytes")
        self.limit = limit


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return json.dumps({"error": error}).encode()


class BodySizeLimitMiddleware:
    """Refuse bodies over ``max_bytes``: at once from Content-Length, else while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        INPUT_REFUSALS.labels(code=PAYLOAD_TOO_LARGE).inc()
        body = error_body(PAYLOAD_TOO_LARGE, f"the request body exceeds the limit of {self.max_bytes} bytes")
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestContextMiddleware:
    """Assigns a request id (or keeps the caller's), echoes it, and records Prometheus metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = (
            next(
                (
                    v.decode("latin-1")[:64]
                    for k, v in scope.get("headers", [])
                    if k == REQUEST_ID_HEADER.encode()
                ),
                None,
            )
            or uuid.uuid4().hex
        )
        scope.setdefault("state", {})["request_id"] = request_id
        status_holder = {"status": 500}
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        log_token = bind_request_id(request_id)  # every log line of this request carries its id
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            unbind(log_token)
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"  # templates, not raw paths: bounded labels
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(method=method, route=template, status=str(status_holder["status"])).inc()
            HTTP_LATENCY.labels(method=method, route=template).observe(time.perf_counter() - start)
