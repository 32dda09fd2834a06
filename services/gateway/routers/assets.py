"""/v1/assets: upload an input once, reference it from several jobs, delete it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from services.gateway import service
from services.gateway.context import GatewayContext
from services.gateway.deps import Principal, audit_action, get_context, principal, request_meta
from services.gateway.routers.jobs import ERRORS
from services.gateway.schemas import AssetOut
from services.gateway.uploads import multipart_openapi, streamed_form
from shared.platform import repository
from shared.platform.errors import NotFound

router = APIRouter(prefix="/v1/assets", tags=["assets"])


@router.post(
    "",
    status_code=201,
    response_model=AssetOut,
    responses={
        **ERRORS,
        200: {"description": "the same bytes were uploaded before: the existing asset", "model": AssetOut},
    },
    summary="Upload a portrait or driving video",
    dependencies=[audit_action("asset.upload")],
    openapi_extra=multipart_openapi(
        {"file": "image (portrait) or video (driving clip); type sniffed from bytes"}, {}, required=("file",)
    ),
)
async def upload_asset(
    request: Request,
    response: Response,
    ctx: Annotated[GatewayContext, Depends(get_context)],
    who: Annotated[Principal, Depends(principal)],
) -> AssetOut:
    """Inputs are content-addressed per tenant: uploading the same bytes twice returns the first asset (200).

    The key is checked and the rate limit charged before the body is read; the file is refused (413)
    as soon as it passes the size limit."""
    async with streamed_form(
        request, ctx.settings, ctx.upload_slots, who.api_key_id, ("file",), required_file="file"
    ) as form:
        asset, created = await run_in_threadpool(
            service.upload_asset, ctx, who, form.files["file"], request_meta(request)
        )
    if not created:
        response.status_code = 200
    return service.asset_to_out(asset, ctx.base_url)


@router.get("/{asset_id}", response_model=AssetOut, responses=ERRORS, summary="Asset metadata")
def get_asset(
    asset_id: str,
    ctx: Annotated[GatewayContext, Depends(get_context)],
    who: Annotated[Principal, Depends(principal)],
) -> AssetOut:
    with ctx.db.session() as session:
        asset = repository.get_asset(session, who.tenant_id, asset_id)
    if asset is None:
        raise NotFound("asset")
    return service.asset_to_out(asset, ctx.base_url)


@router.delete(
    "/{asset_id}",
    response_model=AssetOut,
    responses=ERRORS,
    summary="Delete an uploaded input's bytes",
    dependencies=[audit_action("asset.erase")],
)
def erase_asset(
    asset_id: str,
    request: Request,
    ctx: Annotated[GatewayContext, Depends(get_context)],
    who: Annotated[Principal, Depends(principal)],
) -> AssetOut:
    """Erases the file (and, for a portrait, its cached avatar); the metadata row stays with
    ``deleted_at`` set. Refused (409 ``asset_in_use``) while a job that still holds its data uses it:
    ``DELETE /v1/jobs/{id}`` those first. Uploading the same bytes again restores the asset."""
    asset = service.erase_asset(ctx, who, asset_id, request_meta(request))
    return service.asset_to_out(asset, ctx.base_url)
