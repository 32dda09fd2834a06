"""Both storage backends behave the same; the S3 one against the real SeaweedFS S3 gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.platform.errors import PlatformError
from shared.platform.settings import Settings
from shared.platform.storage import (
    LocalStorage,
    ObjectNotFound,
    ObjectStorage,
    S3Storage,
    input_key,
    make_storage,
    output_key,
)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStorage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "objects")
    else:
        s3: dict[str, Any] = request.getfixturevalue("goha_s3_settings")
        yield make_storage(Settings(**s3))


def test_round_trip(storage: ObjectStorage, tmp_path: Path) -> None:
    assert isinstance(storage, ObjectStorage)
    key = input_key("tenant-1", "ab" * 32)
    assert not storage.exists(key)
    storage.put_bytes(key, b"portrait bytes", content_type="image/png")
    assert storage.exists(key) and storage.size(key) == 14
    assert storage.get_bytes(key) == b"portrait bytes"
    with storage.open(key) as handle:
        assert handle.read(8) == b"portrait"
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 8192)  # 2 MiB: more than one copy chunk
    out = output_key("tenant-1", "job-1")
    storage.put_file(out, source, content_type="video/mp4")
    target = tmp_path / "down.bin"
    storage.download_to(out, target)
    assert target.read_bytes() == source.read_bytes()
    assert storage.list_keys("tenants/tenant-1/") == sorted([key, out])
    storage.delete(key)
    assert not storage.exists(key)
    with pytest.raises(ObjectNotFound):
        storage.get_bytes(key)
    storage.delete(key)  # deleting twice is fine
    storage.ping()


def test_prefixes_list_one_level(storage: ObjectStorage) -> None:
    root = f"cache/listing-{time.time_ns()}"
    for key in (f"{root}/v1/a.npy", f"{root}/v1/b.npy", f"{root}/v2/deep/c.npy", f"{root}/top.npy"):
        storage.put_bytes(key, b"x")
    assert storage.list_prefixes(f"{root}/") == [f"{root}/v1/", f"{root}/v2/"]
    assert storage.list_prefixes(f"{root}/v2/") == [f"{root}/v2/deep/"]
    assert storage.list_prefixes(f"{root}/v1/") == []
    assert storage.list_prefixes(f"{root}-missing/") == []


def test_keys_cannot_escape(storage: ObjectStorage) -> None:
    for bad in ("../etc/passwd", "/abs/key", "a//b", "a/./b", "", "a/b\x00"):
        with pytest.raises(PlatformError):
            storage.put_bytes(bad, b"x")


@pytest.mark.integration
def test_presigned_url_serves_the_object_and_expires(goha_s3_settings: dict[str, Any]) -> None:
    storage = make_storage(Settings(**goha_s3_settings))
    assert isinstance(storage, S3Storage) and storage.supports_presign
    key = output_key("tenant-2", "job-2")
    storage.put_bytes(key, b"video bytes", content_type="video/mp4")
    url = storage.presigned_get_url(key, 60)
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"video bytes"
    tampered = url.replace("X-Amz-Expires=60", "X-Amz-Expires=600")
    assert httpx.get(tampered).status_code == 403  # the signature covers the expiry
    short = storage.presigned_get_url(key, 1)
    time.sleep(2.1)
    assert httpx.get(short).status_code == 403


@pytest.mark.integration
def test_wrong_credentials_are_refused(goha_s3_settings: dict[str, Any]) -> None:
    storage = make_storage(Settings(**{**goha_s3_settings, "s3_secret_key": "not-the-secret"}))
    with pytest.raises(Exception) as caught:
        storage.put_bytes("tenants/x/inputs/y", b"x")
    assert "Signature" in str(caught.value) or "Access" in str(caught.value)


def test_local_presign_is_a_file_uri(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_bytes("a/b", b"x")
    assert storage.presigned_get_url("a/b", 10) == (tmp_path / "a" / "b").resolve().as_uri()
    assert not storage.supports_presign


@pytest.mark.integration
def test_presigned_urls_can_be_https_in_front_of_a_plain_http_store(goha_s3_settings: dict[str, Any]) -> None:
    """Issue 16, item 11: the internal connection speaks plain HTTP to SeaweedFS while the URLs handed
    to clients are https on the public name (GOHA_S3_PUBLIC_SECURE)."""
    settings = Settings(**goha_s3_settings, s3_public_endpoint="s3.example.com", s3_public_secure=True)
    storage = make_storage(settings)
    key = output_key("tenant-1", "job-1")
    storage.put_bytes(key, b"video bytes")  # over the internal plain-HTTP endpoint
    assert storage.get_bytes(key) == b"video bytes"
    url = storage.presigned_get_url(key, 60)
    assert url.startswith(f"https://s3.example.com/{settings.s3_bucket}/{key}?"), url
    plain = make_storage(Settings(**goha_s3_settings, s3_public_endpoint="s3.example.com"))
    assert plain.presigned_get_url(key, 60).startswith("http://s3.example.com/")  # as s3_secure
