from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from shared.media.errors import MediaError
from shared.media.hashing import sha256_file, sha256_stream


def test_streaming_hash_matches_hashlib(tmp_path: Path) -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "blob.bin"
    path.write_bytes(content)
    expected = hashlib.sha256(content).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk_bytes=4096) == expected
    assert sha256_stream(io.BytesIO(content), chunk_bytes=1000) == expected
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


def test_missing_file_has_code(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as excinfo:
        sha256_file(tmp_path / "nope")
    assert excinfo.value.code == "file_not_found"
