"""Test inputs the product never makes: a PNG decompression bomb and a queued job row (with tenant,
portrait asset, first event and provenance) for state-machine tests.
"""

from __future__ import annotations

import secrets
import struct
import zlib
from typing import Any


def make_png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` greyscale pixels, with one tiny IDAT chunk.

    A few hundred bytes that would need gigabytes to decode: the decompression-bomb case.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    rows = zlib.compress(b"\x00" * (width + 1) * 4, 9)  # the first rows; the rest is "missing"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


TEST_SIGNING_KEY = b"goha-test-provenance-key-0123456789"


def make_job_for_tests(session: Any, *, tenant: Any = None, signing_key: bytes = TEST_SIGNING_KEY) -> Any:
    """A queued job (with tenant, portrait asset, first event and provenance) for state-machine tests."""
    from shared.platform import repository

    tenant = tenant or repository.create_tenant(session, f"tenant-{secrets.token_hex(4)}")
    sha256 = secrets.token_hex(32)
    portrait, _ = repository.get_or_create_asset(
        session,
        tenant_id=tenant.id,
        sha256=sha256,
        size_bytes=1,
        media_type="image/png",
        kind="image",
        storage_key=f"tenants/{tenant.id}/inputs/{sha256}",
        media_info={"width": 64, "height": 64},
    )
    return repository.create_job(
        session,
        tenant_id=tenant.id,
        api_key_id=None,
        job_type="reenact",
        options={"motion_mode": "relative"},
        consent={
            "subject_name": "Test Subject",
            "method": "self",
            "obtained_at": "2026-01-01T00:00:00+00:00",
        },
        portrait=portrait,
        driving=None,
        idempotency_key=None,
        request_hash="0" * 64,
        signing_key=signing_key,
    )
