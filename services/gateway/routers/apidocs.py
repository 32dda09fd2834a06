"""``GET /docs``: Swagger UI with its assets served by the gateway itself, so the API reference works
offline (FastAPI's default page loads them from a CDN and is blank without one).

The assets come from the ``swagger-ui-bundle`` package (pinned in pyproject.toml; Swagger UI 4.15.5,
Apache-2.0). Only the three files the page needs are served, by exact name.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

from shared.platform.errors import NotFound

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
ASSETS_PREFIX = "/docs/assets"

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title=f"{request.app.title} - API reference",
        swagger_js_url=f"{ASSETS_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PREFIX}/favicon-32x32.png",
    )


@router.get(ASSETS_PREFIX + "/{name}")
def swagger_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound("file")
    return FileResponse(
        swagger_ui_path / name, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
    )
