"""/v1/verify: is this video one of ours? Which job, and what does its provenance say?"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from services.gateway import service
from services.gateway.context import GatewayContext
from services.gateway.deps import Principal, audit_action, get_context, principal, request_meta
from services.gateway.routers.jobs import ERRORS
from services.gateway.schemas import VerifyOut
from services.gateway.uploads import ReceivedFile, multipart_openapi, streamed_form
from shared.platform.errors import CORRUPT_MEDIA, InputRejected
from shared.platform.mediasandbox import SandboxLimits, check_video
from shared.platform.verify import verify_upload

router = APIRouter(prefix="/v1", tags=["verify"])


@router.post(
    "/verify",
    response_model=VerifyOut,
    responses=ERRORS,
    summary="Check a video for the platform's watermark and provenance",
    dependencies=[audit_action("verify")],
    openapi_extra=multipart_openapi({"video": "any video; nothing is stored"}, {}, required=("video",)),
)
async def verify(
    request: Request,
    ctx: Annotated[GatewayContext, Depends(get_context)],
    who: Annotated[Principal, Depends(principal)],
) -> VerifyOut:
    """``status: "not_available"`` means this deployment has no detector installed and nothing
    was checked — it is never a negative answer. Otherwise ``watermark.found`` says whether the
    platform's watermark is present, ``job_id`` which job it names, and ``checks`` whether the
    provenance record's signature holds and whether the file is byte-identical to the output.

    The key is checked and the rate limit charged before the body is read; every decoded frame is
    held to the video size limits."""
    async with streamed_form(
        request, ctx.settings, ctx.upload_slots, who.api_key_id, ("video",), required_file="video"
    ) as form:
        outcome, sha256 = await run_in_threadpool(_verify, ctx, who, form.files["video"])
    await run_in_threadpool(
        service.audit_action,
        ctx,
        who,
        request_meta(request),
        "verify",
        "job",
        outcome.job_id or "-",
        {"status": outcome.status, "sha256": sha256},
    )
    return VerifyOut(**outcome.to_dict(), file_sha256=sha256)


def _verify(ctx: GatewayContext, who: Principal, received: ReceivedFile) -> tuple[Any, str]:
    spooled = service.inspect_upload(received, "video", ctx, "video")
    # Every frame decoded once in a bounded child process first: a hostile file cannot crash, exhaust
    # or hang the gateway, and a stream that grows past the size limits is refused (422).
    try:
        check_video(spooled.path, SandboxLimits.from_settings(ctx.settings))
    except InputRejected as exc:
        exc.details.setdefault("field", "video")
        exc.message = f"video: {exc.message}"
        raise
    try:
        with ctx.db.session() as session:
            outcome = verify_upload(
                session,
                ctx.verifier(),
                spooled.path,
                file_sha256=spooled.sha256,
                tenant_id=who.tenant_id,
                signing_key=ctx.signing_key,
            )
    except InputRejected:
        raise
    except Exception as exc:
        code = getattr(exc, "code", None)
        if isinstance(code, str):  # a typed media-layer error (e.g. video_unreadable): the file's fault
            raise InputRejected(code or CORRUPT_MEDIA, f"video: {getattr(exc, 'message', exc)}") from exc
        raise
    return outcome, spooled.sha256
