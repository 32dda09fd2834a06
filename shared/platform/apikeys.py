"""API key format and hashing.

A key looks like ``goha_<prefix>_<secret>``: the prefix (public, unique) finds the row, the secret
(256 random bits) is never stored — only SHA-256 of the whole key. A plain hash is enough here:
unlike passwords, the keys carry full entropy, so there is nothing for a slow hash to protect.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_SCHEME = "goha"
PREFIX_HEX_CHARS = 12


@dataclass(frozen=True)
class NewApiKey:
    key: str  # show once, never store
    prefix: str
    key_hash: str


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_api_key() -> NewApiKey:
    prefix = secrets.token_hex(PREFIX_HEX_CHARS // 2)
    key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    return NewApiKey(key=key, prefix=prefix, key_hash=hash_api_key(key))


def parse_prefix(key: str) -> str | None:
    """The lookup prefix of a well-formed key, else None (malformed keys never reach the database)."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or len(parts[1]) != PREFIX_HEX_CHARS or not parts[2]:
        return None
    if any(c not in "0123456789abcdef" for c in parts[1]) or len(key) > 200:
        return None
    return parts[1]


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(key), stored_hash)
