"""The browser page: ``GET /`` (index.html) and ``GET /web/{name}`` (its script and style sheet).

Only the files that ship in ``services/gateway/web/`` are served, looked up by exact name in a table built
at import, so no request path ever reaches the filesystem. Every answer carries a strict
Content-Security-Policy: scripts and styles from this origin only (nothing inline, no eval), API calls to
this origin only, media from this origin, ``blob:`` URLs the page made from local files or a streamed
result, and — with S3 storage — the public S3 endpoint that presigned result URLs point at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from services.gateway.context import GatewayContext
from services.gateway.deps import get_context
from shared.platform.errors import NotFound
from shared.platform.settings import Settings

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# name -> (path, media type); index.html is served at "/" only.
STATIC_FILES: dict[str, tuple[Path, str]] = {
    path.name: (path, MEDIA_TYPES[path.suffix])
    for path in sorted(WEB_DIR.iterdir())
    if path.is_file() and path.suffix in MEDIA_TYPES and path.name != "index.html"
}

DELIVERY_META = '<meta name="goha-result-delivery" content="{}">'
LIMITS_META = '<meta name="goha-limits" content="{}">'


def limits_text(settings: Settings) -> str:
    """The input limits the page shows and checks before uploading, as ``name=value;…`` (numbers only)."""
    limits = {
        "max_upload_bytes": settings.max_upload_bytes,
        "max_image_pixels": settings.max_image_pixels,
        "min_image_side": settings.min_image_side,
        "max_video_seconds": settings.max_video_seconds,
        "max_video_fps": settings.max_video_fps,
        "max_video_width": settings.max_video_width,
        "max_video_height": settings.max_video_height,
    }
    return ";".join(f"{name}={value:.15g}" for name, value in limits.items())


router = APIRouter(include_in_schema=False)


def media_origins(settings: Settings) -> list[str]:
    """Where the page may load a result video from besides itself: the presigned-URL host, if any."""
    if settings.storage_backend != "s3":
        return []
    host = settings.s3_public_endpoint or settings.s3_endpoint
    return [f"{'https' if settings.s3_secure else 'http'}://{host}"]


def content_security_policy(settings: Settings) -> str:
    media = " ".join(["'self'", "blob:", *media_origins(settings)])
    directives = {
        "default-src": "'none'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' blob:",
        "media-src": media,
        "connect-src": "'self'",
        "base-uri": "'none'",
        "form-action": "'none'",  # forms are sent by fetch(); a native submission would put fields in a URL
        "frame-ancestors": "'none'",  # no clickjacking frame around a page that holds a key
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def _security_headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cache-Control": "no-cache",  # revalidate, so a deploy never leaves a stale script behind
    }


def _serve(path: Path, media_type: str, settings: Settings) -> Response:
    return Response(path.read_bytes(), media_type=media_type, headers=_security_headers(settings))


@router.get("/")
def index(ctx: Annotated[GatewayContext, Depends(get_context)]) -> Response:
    # Tell the script how this deployment hands out results, so it asks the right way first.
    page = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    if ctx.storage.supports_presign:
        page = page.replace(DELIVERY_META.format("stream"), DELIVERY_META.format("presigned"), 1)
    page = page.replace(LIMITS_META.format(""), LIMITS_META.format(limits_text(ctx.settings)), 1)
    return Response(page, media_type=MEDIA_TYPES[".html"], headers=_security_headers(ctx.settings))


@router.get("/web/{name}")
def static_file(name: str, ctx: Annotated[GatewayContext, Depends(get_context)]) -> Response:
    entry = STATIC_FILES.get(name)
    if entry is None:
        raise NotFound("web file", details={"name": name[:100]})
    return _serve(*entry, ctx.settings)
