"""POST /v1/assets/{id}/face-check and GET /v1/assets/{id}/thumbnail (the web page's checks)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.gateway.app import create_app
from shared.media.samples import write_portrait
from shared.media.synthetic import make_video_bytes
from shared.platform import admin
from shared.platform.db import Database
from shared.platform.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(var_dir=tmp_path_factory.mktemp("previews-var"), verifier="none")
    app = create_app(settings)
    db = Database.from_settings(settings)
    tenant = admin.create_tenant(db, "previews")
    _, key = admin.create_key(db, tenant.id)
    other = admin.create_tenant(db, "other")
    _, other_key = admin.create_key(db, other.id)
    db.dispose()
    with TestClient(app) as test_client:
        yield test_client, {"key": key, "other": other_key}


def _upload(client: TestClient, key: str, data: bytes, name: str) -> str:
    answer = client.post(
        "/v1/assets", files={"file": (name, data)}, headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["id"]


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_face_check_finds_the_astronaut_and_not_a_coffee_cup(client, tmp_path: Path) -> None:
    http, keys = client
    auth = {"Authorization": f"Bearer {keys['key']}"}
    portrait = _upload(http, keys["key"], write_portrait(tmp_path / "p.png").read_bytes(), "p.png")
    answer = http.post(f"/v1/assets/{portrait}/face-check", headers=auth)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ok"] is True and body["faces"] >= 1 and body["code"] is None
    left, top, right, bottom = body["box"]
    assert 0 <= left < right <= body["width"] and 0 <= top < bottom <= body["height"]

    from skimage.data import coffee  # a cup of coffee: no face

    wall = _upload(http, keys["key"], _png(coffee()), "coffee.png")
    body = http.post(f"/v1/assets/{wall}/face-check", headers=auth).json()
    assert body["ok"] is False and body["code"] == "no_face" and body["message"]

    thumb = http.get(f"/v1/assets/{portrait}/thumbnail", headers=auth)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as image:
        assert max(image.size) == 160

    other = {"Authorization": f"Bearer {keys['other']}"}
    assert http.post(f"/v1/assets/{portrait}/face-check", headers=other).status_code == 404
    assert http.get(f"/v1/assets/{portrait}/thumbnail", headers=other).status_code == 404
    assert http.get(f"/v1/assets/{portrait}/thumbnail").status_code == 401

    video = _upload(http, keys["key"], make_video_bytes(), "clip.mp4")
    refused = http.post(f"/v1/assets/{video}/face-check", headers=auth)
    assert refused.status_code == 415 and refused.json()["error"]["code"] == "wrong_media_kind"
