"""Every class of bad input gets its 4xx with a machine-readable code, and nothing is stored."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shared.media.synthetic import make_image_bytes, make_video_bytes
from shared.platform.db import Database
from shared.platform.models import Asset, AuditLog, Job
from shared.platform.storage import ObjectStorage
from tests.gateway.conftest import MiB, TenantKey, submit
from tests.support.factories import make_png_bomb

pytestmark = pytest.mark.integration


def _nothing_stored(db: Database, storage: ObjectStorage, tenant: TenantKey) -> None:
    with db.session() as session:
        assets = session.scalar(
            select(func.count()).select_from(Asset).where(Asset.tenant_id == tenant.tenant_id)
        )
        jobs = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.tenant_id))
    assert (assets, jobs) == (0, 0)
    assert storage.list_keys(f"tenants/{tenant.tenant_id}/") == []


def _video_cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_CASES: dict[str, tuple[Callable[[bytes, bytes], dict[str, object]], int, str]] = {
    # name: (request pieces from a good portrait + driving clip, status, code)
    "text as portrait": (
        lambda p, d: {"portrait": b"hello, I am text", "driving": d},
        415,
        "unsupported_media_type",
    ),
    "video as portrait": (lambda p, d: {"portrait": d, "driving": d}, 415, "wrong_media_kind"),
    "image as driving video": (lambda p, d: {"portrait": p, "driving": p}, 415, "wrong_media_kind"),
    "truncated portrait": (lambda p, d: {"portrait": p[: len(p) // 2], "driving": d}, 422, "corrupt_media"),
    "truncated video": (lambda p, d: {"portrait": p, "driving": _video_cut(d)}, 422, "corrupt_media"),
    "empty portrait": (lambda p, d: {"portrait": b"", "driving": d}, 422, "empty_upload"),
    "decompression bomb": (
        lambda p, d: {"portrait": make_png_bomb(40_000, 40_000), "driving": d},
        422,
        "image_too_large",
    ),
    "too many pixels": (
        lambda p, d: {"portrait": make_png_bomb(1100, 1000), "driving": d},
        422,
        "image_too_large",
    ),
    "video too long": (
        lambda p, d: {"portrait": p, "driving": make_video_bytes(frames=32, fps=8)},
        422,
        "video_too_long",
    ),
    "video too large": (
        lambda p, d: {"portrait": p, "driving": make_video_bytes(frames=2, size=(352, 288))},
        422,
        "video_too_large",
    ),
    "oversized file": (
        lambda p, d: {"portrait": p, "driving": b"\x1a\x45\xdf\xa3" + bytes(MiB + 10)},
        413,
        "payload_too_large",
    ),
    "missing consent": (
        lambda p, d: {"portrait": p, "driving": d, "consent": False},
        422,
        "consent_required",
    ),
    "partial consent": (
        lambda p, d: {"portrait": p, "driving": d, "data": {"consent_method": "hearsay"}},
        422,
        "consent_required",
    ),
    "future consent": (
        lambda p, d: {"portrait": p, "driving": d, "data": {"consent_obtained_at": "2999-01-01T00:00:00Z"}},
        422,
        "consent_required",
    ),
    "missing portrait": (lambda p, d: {"driving": d}, 422, "missing_input"),
    "missing driving video": (lambda p, d: {"portrait": p}, 422, "missing_input"),
    "bad option": (
        lambda p, d: {"portrait": p, "driving": d, "data": {"expression_scale": "lots"}},
        422,
        "invalid_options",
    ),
    "output too big": (
        lambda p, d: {"portrait": p, "driving": d, "data": {"output_size": "2048"}},
        422,
        "invalid_options",
    ),
    "output fps under one": (  # passed the gateway and failed in the worker (issue 16)
        lambda p, d: {"portrait": p, "driving": d, "data": {"output_fps": "0.5"}},
        422,
        "invalid_options",
    ),
    "unknown job type": (
        lambda p, d: {"portrait": p, "driving": d, "data": {"job_type": "deepfake"}},
        422,
        "invalid_options",
    ),
    "file and asset id": (
        lambda p, d: {"portrait": p, "driving": d, "data": {"portrait_asset_id": "x"}},
        422,
        "invalid_request",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_submission_is_refused_and_nothing_is_stored(
    case: str,
    idle_client: TestClient,
    tenant: TenantKey,
    portrait_png: bytes,
    driving_mp4: bytes,
    db: Database,
    storage: ObjectStorage,
) -> None:
    build, status, code = BAD_CASES[case]
    pieces = build(portrait_png, driving_mp4)
    response = submit(idle_client, tenant, **pieces)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    _nothing_stored(db, storage, tenant)
    with db.session() as session:  # the refusal itself is audited
        refusals = select(AuditLog.outcome).where(
            AuditLog.tenant_id == tenant.tenant_id, AuditLog.actor != "admin-cli"
        )
        outcomes = list(session.scalars(refusals))
    assert outcomes == [code]


def test_body_over_the_request_cap_is_refused_while_streaming(
    idle_client: TestClient, tenant: TenantKey, gw_settings: object
) -> None:
    cap = gw_settings.max_request_bytes  # type: ignore[attr-defined]

    def body() -> object:  # chunked: no Content-Length to refuse up front
        chunk = b"x" * MiB
        for _ in range(cap // MiB + 2):
            yield chunk

    response = idle_client.post(
        "/v1/jobs",
        content=body(),
        headers={**tenant.headers, "Content-Type": "multipart/form-data; boundary=zzz"},
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    declared = idle_client.post(
        "/v1/jobs", content=b"x", headers={**tenant.headers, "Content-Length": str(cap + 1)}
    )
    assert declared.status_code == 413


def test_malformed_multipart_is_a_400(idle_client: TestClient, tenant: TenantKey) -> None:
    response = idle_client.post(
        "/v1/jobs",
        content=b"--zzz\r\nnot a part",
        headers={**tenant.headers, "Content-Type": "multipart/form-data; boundary=zzz"},
    )
    assert response.status_code in (400, 422) and "code" in response.json()["error"]


def test_unknown_routes_and_methods_use_the_envelope(idle_client: TestClient) -> None:
    assert idle_client.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert idle_client.delete("/v1/jobs").json()["error"]["code"] == "method_not_allowed"


def test_asset_upload_refusals(
    idle_client: TestClient, tenant: TenantKey, db: Database, storage: ObjectStorage
) -> None:
    bad = idle_client.post(
        "/v1/assets", files={"file": ("x.png", make_png_bomb(), "image/png")}, headers=tenant.headers
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "image_too_large"
    _nothing_stored(db, storage, tenant)
    good = idle_client.post(
        "/v1/assets",
        files={"file": ("x.jpg", make_image_bytes(fmt="JPEG"), "text/plain")},
        headers=tenant.headers,
    )
    assert (
        good.status_code == 201 and good.json()["media_type"] == "image/jpeg"
    )  # the bytes decide, not the header
