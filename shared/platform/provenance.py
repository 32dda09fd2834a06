"""Provenance records: what went into a job, what came out, who attested consent — signed.

The signature is HMAC-SHA256 over a canonical JSON document built from the record's columns, so any
edit of a stored row (a swapped output hash, a changed consent) no longer verifies. The gateway
creates the record with the job; the worker completes it with ``complete_provenance`` once the
output exists.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from shared.platform.errors import ConfigurationError
from shared.platform.models import Job, ProvenanceRecord, new_id, utcnow
from shared.platform.settings import Settings

DOCUMENT_VERSION = "goha-provenance-v1"
MIN_KEY_BYTES = 16


def load_signing_key(settings: Settings) -> bytes:
    """The HMAC key: ``provenance_signing_key`` if set, else the key file (created in embedded mode)."""
    if settings.provenance_signing_key is not None:
        key = settings.provenance_signing_key.get_secret_value().encode("utf-8")
    else:
        path = Path(settings.provenance_key_path or settings.var_dir / "provenance.key")
        if not path.exists():
            if not settings.embedded:
                raise ConfigurationError(
                    f"no provenance signing key: set GOHA_PROVENANCE_SIGNING_KEY or create {path}"
                )
            _create_key_file(path)
        key = path.read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"provenance signing key must be at least {MIN_KEY_BYTES} bytes")
    return key


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race; use its key
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))


def key_id(key: bytes) -> str:
    """A short public fingerprint of the key, stored with each signature so rotations are visible."""
    return hashlib.sha256(b"goha-key-id\x00" + key).hexdigest()[:16]


def canonical_json(document: dict[str, Any]) -> bytes:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def provenance_document(record: ProvenanceRecord) -> dict[str, Any]:
    """The signed content of a record (everything but the signature itself)."""
    return {
        "version": DOCUMENT_VERSION,
        "record_id": record.id,
        "job_id": record.job_id,
        "tenant_id": record.tenant_id,
        "created_at": _iso(record.created_at),
        "completed_at": _iso(record.completed_at),
        "inputs": record.inputs or {},
        "options": record.options or {},
        "consent": record.consent or {},
        "model_version": record.model_version,
        "output_sha256": record.output_sha256,
        "watermark_payload": record.watermark_payload,
        "c2pa_manifest_sha256": record.c2pa_manifest_sha256,
        "extra": record.extra or {},
    }


def sign_document(document: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical_json(document), hashlib.sha256).hexdigest()


def sign_record(record: ProvenanceRecord, key: bytes) -> None:
    record.signature = sign_document(provenance_document(record), key)
    record.signing_key_id = key_id(key)


def signature_valid(record: ProvenanceRecord, key: bytes) -> bool:
    if record.signing_key_id != key_id(key):
        return False
    return hmac.compare_digest(record.signature, sign_document(provenance_document(record), key))


def create_provenance(session: Session, job: Job, *, inputs: dict[str, Any], key: bytes) -> ProvenanceRecord:
    """The submission half: inputs, options and the consent attestation, signed at once."""
    record = ProvenanceRecord(
        id=new_id(),
        job_id=job.id,
        tenant_id=job.tenant_id,
        created_at=job.created_at or utcnow(),
        inputs=inputs,
        options=dict(job.options or {}),
        consent=dict(job.consent or {}),
        extra={},
    )
    sign_record(record, key)  # id and timestamps are set above: they are part of the signed document
    session.add(record)
    session.flush()
    return record


def complete_provenance(
    session: Session,
    job: Job,
    *,
    key: bytes,
    output_sha256: str,
    model_version: str,
    watermark_payload: int | None = None,
    c2pa_manifest_sha256: str | None = None,
    extra: dict[str, Any] | None = None,
) -> ProvenanceRecord:
    """The output half, written by the worker before the job succeeds; re-signs the whole record."""
    record = session.query(ProvenanceRecord).filter_by(job_id=job.id).one()
    record.output_sha256 = output_sha256
    record.model_version = model_version
    record.watermark_payload = watermark_payload
    record.c2pa_manifest_sha256 = c2pa_manifest_sha256
    record.extra = {**(record.extra or {}), **(extra or {})}
    record.completed_at = utcnow()
    sign_record(record, key)
    session.flush()
    return record
