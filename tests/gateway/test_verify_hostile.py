"""Issue 16, item 2 in the gateway: /v1/verify decodes uploads in the gateway, so a video whose frames
outgrow its header is decoded first in the bounded sandbox and refused with a code (real stack)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.gateway.conftest import TenantKey
from tests.security.test_hostile_video import write_growing_mkv

pytestmark = pytest.mark.integration


def test_verify_refuses_a_video_whose_frames_outgrow_the_limits(
    idle_client: TestClient, tenant: TenantKey, tmp_path: Path
) -> None:
    clip = write_growing_mkv(tmp_path).read_bytes()  # header 64x64, frames 6-10 are 640x640 (limit 320)
    response = idle_client.post(
        "/v1/verify", headers=tenant.headers, files={"video": ("clip.mkv", clip, "video/x-matroska")}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "video_frame_too_large"
    assert error["details"]["field"] == "video" and error["details"]["frames"] == 5
