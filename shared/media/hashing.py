"""Streaming SHA-256 of files and byte streams (inputs are hashed for provenance without loading them)."""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

from shared.media.errors import FILE_NOT_FOUND, MediaError

DEFAULT_CHUNK_BYTES = 1 << 20


def sha256_stream(stream: BinaryIO, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
    """Hex SHA-256 of everything left to read in ``stream`` (read in ``chunk_bytes`` pieces)."""
    digest = hashlib.sha256()
    while True:
        chunk = stream.read(chunk_bytes)
        if not chunk:
            break
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str], *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
    """Hex SHA-256 of a file's bytes, in bounded memory."""
    try:
        with open(path, "rb") as handle:
            return sha256_stream(handle, chunk_bytes=chunk_bytes)
    except FileNotFoundError as exc:
        raise MediaError(
            FILE_NOT_FOUND, f"file not found: {os.fspath(path)}", {"path": os.fspath(path)}
        ) from exc
