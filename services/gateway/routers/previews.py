"""Quick looks at an uploaded portrait, for the web page's checks before a job is queued:

    POST /v1/assets/{id}/face-check   is there one usable face? (the worker's own detector and rules)
    GET  /v1/assets/{id}/thumbnail     a small JPEG of a portrait (the page's job history)

The face check runs the face stack's default detector (MediaPipe, the same ``make_detector()`` the
worker's portrait analysis uses, built once per gateway process) on the stored portrait, so "no face"
answers in about a second after the upload instead of after the job has waited in the queue. It is
advice: a job is not refused because its portrait was never checked.
"""

from __future__ import annotations

import io
import threading
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Response
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from services.gateway.context import GatewayContext
from services.gateway.deps import Principal, get_context, principal
from services.gateway.routers.jobs import ERRORS
from shared.platform import repository
from shared.platform.errors import ASSET_DELETED, WRONG_MEDIA_KIND, NotFound, PlatformError
from shared.platform.models import Asset

router = APIRouter(prefix="/v1/assets", tags=["assets"])
THUMBNAIL_SIDE = 160

_detector: Any = None
_detector_lock = threading.Lock()


class FaceCheckOut(BaseModel):
    ok: bool = Field(..., description="one usable face: a job with this portrait can start")
    code: str | None = Field(None, description="why not: no_face, face_too_small, face_at_border, ...")
    message: str
    faces: int = Field(0, description="faces seen (the largest is used)")
    box: list[float] | None = Field(None, description="the face used: left, top, right, bottom (pixels)")
    width: int
    height: int


def _portrait(ctx: GatewayContext, who: Principal, asset_id: str) -> Asset:
    with ctx.db.session() as session:
        asset = repository.get_asset(session, who.tenant_id, asset_id)
    if asset is None:
        raise NotFound("asset")
    if asset.deleted_at is not None:
        raise PlatformError(ASSET_DELETED, "the asset's bytes were erased", status=410)
    if asset.kind != "image":
        raise PlatformError(WRONG_MEDIA_KIND, "only a portrait (an image) can be checked", status=415)
    return asset


def _load_rgb(ctx: GatewayContext, asset: Asset) -> np.ndarray:
    with Image.open(io.BytesIO(ctx.storage.get_bytes(asset.storage_key))) as image:
        return np.asarray(image.convert("RGB"))


def detector() -> Any:
    global _detector
    with _detector_lock:
        if _detector is None:
            from shared.face.detect import make_detector

            _detector = make_detector()
        return _detector


def face_check(ctx: GatewayContext, asset: Asset) -> FaceCheckOut:
    from shared.face.errors import FaceError

    rgb = _load_rgb(ctx, asset)
    height, width = rgb.shape[:2]
    try:
        found = detector().detect(rgb)
    except FaceError as exc:
        faces = int((exc.details or {}).get("num_faces", 0))
        return FaceCheckOut(
            ok=False, code=exc.code, message=exc.message, faces=faces, width=width, height=height
        )
    return FaceCheckOut(
        ok=True,
        message="one face found"
        if found.report.num_faces == 1
        else f"{found.report.num_faces} faces; the largest is used",
        faces=found.report.num_faces,
        box=[round(float(v), 1) for v in found.box],
        width=width,
        height=height,
    )


@router.post(
    "/{asset_id}/face-check", response_model=FaceCheckOut, responses=ERRORS, summary="Is there a usable face?"
)
async def check_face(
    asset_id: str,
    ctx: Annotated[GatewayContext, Depends(get_context)],
    who: Annotated[Principal, Depends(principal)],
) -> FaceCheckOut:
    """The worker's face detector and rules on an uploaded portrait: `ok`, or the code the job would fail
    with (`no_face`, `face_too_small`, `face_at_border`, ...). 415 for a video, 410 once erased."""
    asset = await run_in_threadpool(_portrait, ctx, who, asset_id)
    return await run_in_threadpool(face_check, ctx, asset)


def thumbnail_jpeg(ctx: GatewayContext, asset: Asset) -> bytes:
    with Image.open(io.BytesIO(ctx.storage.get_bytes(asset.storage_key))) as image:
        image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at a reduced scale
        small = image.convert("RGB")
        small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


@router.get(
    "/{asset_id}/thumbnail",
    responses={**ERRORS, 200: {"content": {"image/jpeg": {}}}},
    response_class=Response,
    summary="A small JPEG of a portrait",
)
async def thumbnail(
    asset_id: str,
    ctx: Annotated[GatewayContext, Depends(get_context)],
    who: Annotated[Principal, Depends(principal)],
) -> Response:
    """At most 160 px a side. 415 for a video, 410 once erased."""
    asset = await run_in_threadpool(_portrait, ctx, who, asset_id)
    data = await run_in_threadpool(thumbnail_jpeg, ctx, asset)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
