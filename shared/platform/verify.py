"""The plug between ``POST /v1/verify`` and a detector.

A ``Verifier`` reads one video file and reports what it found (watermark payload, C2PA manifest);
it never touches the database. ``verify_upload`` then maps the payload to a job through the stored
provenance records and checks the record's signature and output hash.

A watermark read from a re-encoded video can have a bit or two wrong even when it is clearly present
(the detector's ``matches`` tolerates ``32 - threshold`` differing bits). Stored payloads are looked up by
exact value (indexed), so the detector also names the readings worth looking up: its own, then the same
with its least reliable bits flipped (``likely_payloads``), most likely first.

Which verifier runs: one given to ``register_verifier`` (e.g. by the worker package), else the
media layer's ``shared.media.verify.verify_video`` when it can be imported, else none — and the
endpoint answers ``status: "not_available"`` rather than pretending to have looked.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal, Protocol

from sqlalchemy.orm import Session

from shared.platform import repository
from shared.platform.models import ProvenanceRecord
from shared.platform.provenance import signature_valid
from shared.platform.settings import Settings

log = logging.getLogger(__name__)

VerifyStatus = Literal["not_available", "checked"]


@dataclass(frozen=True)
class DetectorReport:
    """What a detector read from the file (no database knowledge)."""

    watermark_found: bool
    watermark_payload: int | None = None  # 32-bit payload (per-bit majority), even when not "found"
    watermark_confident_bits: int | None = None
    manifest_present: bool = False
    manifest_valid: bool = False
    manifest_trusted: bool = False
    manifest_job_id: str | None = None
    manifest_payload: int | None = None
    detector: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    # Payload comparison supplied by the detector (tolerates a few flipped bits); None -> exact match.
    payload_matcher: Callable[[int], bool] | None = field(default=None, repr=False, compare=False)
    # Payloads to look up, most likely first (see ``likely_payloads``); empty -> ``watermark_payload`` only.
    watermark_candidates: tuple[int, ...] = ()
    # Edits the watermark may not survive (human-readable), as the detector measured them: a video that
    # went through one of them can be the platform's even when no watermark is found.
    watermark_may_not_survive: tuple[str, ...] = ()

    def matches(self, payload: int) -> bool:
        if self.payload_matcher is not None:
            return self.payload_matcher(payload)
        return self.watermark_payload == payload

    def readings(self) -> tuple[int, ...]:
        """The payloads to look up for the watermark, most likely first."""
        if self.watermark_candidates:
            return self.watermark_candidates
        return () if self.watermark_payload is None else (self.watermark_payload,)


PAYLOAD_BITS = 32
# At most this many of the least reliable bits are flipped: 2**4 = 16 lookups. Every extra reading is one
# more chance that an unrelated watermark lands on a stored payload (N stored payloads: ~16 * N / 2**32),
# so the set stays small; a bit error in a reliable bit is left unmatched (no job named) rather than guessed.
MAX_FLIPPED_BITS = 4


def likely_payloads(payload: int, mean_logits: Sequence[float], max_flipped_bits: int) -> tuple[int, ...]:
    """``payload`` first, then its variants with any subset of its ``max_flipped_bits`` least reliable bits
    flipped, the least costly flips first.

    ``mean_logits[i]`` is the detector's mean logit for bit ``i`` (most significant first; > 0 means 1). A
    bit's margin is its mean logit in the direction of the bit read (negative: the mean points the other
    way); a variant costs the summed margins of the bits it flips.
    """
    if max_flipped_bits <= 0 or len(mean_logits) != PAYLOAD_BITS:
        return (payload,)
    margins = []
    for index, logit in enumerate(mean_logits):
        read_one = (payload >> (PAYLOAD_BITS - 1 - index)) & 1
        margins.append((float(logit) if read_one else -float(logit), index))
    weakest = sorted(margins)[:max_flipped_bits]
    variants = []
    for size in range(1, len(weakest) + 1):
        for flipped in combinations(weakest, size):
            mask = sum(1 << (PAYLOAD_BITS - 1 - index) for _, index in flipped)
            variants.append((sum(margin for margin, _ in flipped), payload ^ mask))
    return (payload, *(value for _, value in sorted(variants)))


class Verifier(Protocol):
    name: str

    def __call__(self, path: Path) -> DetectorReport: ...


_registered: Verifier | None = None


def register_verifier(verifier: Verifier | None) -> None:
    """Install the verifier the gateway uses (None restores automatic discovery)."""
    global _registered
    _registered = verifier


class MediaVerifier:
    """Adapter over ``shared.media.verify.verify_video`` (RivaGAN watermark + C2PA manifest)."""

    name = "shared.media.verify"

    def __init__(self, verify_video: Callable[..., Any], trust_anchors: str | None = None) -> None:
        self._verify_video = verify_video
        self._trust_anchors = trust_anchors

    def __call__(self, path: Path) -> DetectorReport:
        report = self._verify_video(path, trust_anchors=self._trust_anchors)
        watermark, manifest = report.watermark, report.manifest
        raw = report.to_dict()
        claim = manifest.claim or {}
        candidates: tuple[int, ...] = ()
        if watermark.payload is not None:
            # The detector's matcher accepts up to 32 - threshold differing bits; flip no more than that.
            tolerated = PAYLOAD_BITS - int(watermark.threshold)
            candidates = likely_payloads(
                watermark.payload, watermark.mean_logits, min(MAX_FLIPPED_BITS, tolerated)
            )
        return DetectorReport(
            watermark_found=bool(watermark.found),
            watermark_payload=watermark.payload,
            watermark_confident_bits=watermark.confident_bits,
            manifest_present=bool(manifest.present),
            manifest_valid=bool(manifest.valid),
            manifest_trusted=bool(manifest.trusted),
            manifest_job_id=claim.get("job_id"),
            manifest_payload=report.manifest_payload,
            detector=self.name,
            raw=raw,
            payload_matcher=watermark.matches,
            watermark_candidates=candidates,
            watermark_may_not_survive=tuple((raw.get("watermark_limits") or {}).get("may_not_survive", ())),
        )


def load_verifier(settings: Settings) -> Verifier | None:
    if settings.verifier == "none":
        return None
    if _registered is not None:
        return _registered
    try:
        from shared.media.verify import verify_video
    except Exception as exc:  # not written yet, or its heavy deps are missing: say so, do not fake
        log.info("no verifier available: %s", exc)
        return None
    anchors = None
    if settings.c2pa_trust_anchors_path and Path(settings.c2pa_trust_anchors_path).exists():
        anchors = Path(settings.c2pa_trust_anchors_path).read_text()
    return MediaVerifier(verify_video, anchors)


@dataclass
class VerifyOutcome:
    status: VerifyStatus
    message: str
    detector: str | None = None
    watermark: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    job_id: str | None = None
    same_tenant: bool | None = None
    provenance: dict[str, Any] | None = None
    checks: dict[str, bool | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _public_provenance(record: ProvenanceRecord, *, same_tenant: bool) -> dict[str, Any]:
    """Another tenant's record is summarised: enough to trust the answer, not the consent details."""
    summary: dict[str, Any] = {
        "record_id": record.id,
        "job_id": record.job_id,
        "created_at": _iso(record.created_at),
        "completed_at": _iso(record.completed_at),
        "model_version": record.model_version,
        "output_sha256": record.output_sha256,
        "consent_attested": bool(record.consent),
        # The job's media may be gone (its owner or the retention period); the record stays.
        "media_deleted_at": _iso(record.job.media_deleted_at if record.job is not None else None),
    }
    if same_tenant:
        summary.update(inputs=record.inputs, options=record.options, consent=record.consent)
    return summary


def verify_upload(
    session: Session,
    verifier: Verifier | None,
    path: str | os.PathLike[str],
    *,
    file_sha256: str,
    tenant_id: str,
    signing_key: bytes,
) -> VerifyOutcome:
    if verifier is None:
        return VerifyOutcome(
            status="not_available",
            message="no watermark detector is installed in this deployment; nothing was checked",
        )
    report = verifier(Path(path))
    watermark: dict[str, Any] = {
        "found": report.watermark_found,
        "payload": report.watermark_payload,
        "confident_bits": report.watermark_confident_bits,
    }
    if report.watermark_may_not_survive:
        watermark["may_not_survive"] = list(report.watermark_may_not_survive)
    manifest = {
        "present": report.manifest_present,
        "valid": report.manifest_valid,
        "trusted": report.manifest_trusted,
        "job_id": report.manifest_job_id,
    }
    candidates: list[ProvenanceRecord] = []
    if report.watermark_found and report.watermark_payload is not None:
        # One indexed lookup for every plausible reading; the most likely reading's record comes first.
        readings = report.readings()
        rank: dict[int | None, int] = {}
        for order, payload in enumerate(readings):
            rank.setdefault(payload, order)
        candidates = sorted(
            repository.find_provenance_by_payloads(session, readings),
            key=lambda r: (rank.get(r.watermark_payload, len(rank)), r.created_at, r.id),
        )
    if not candidates and report.manifest_valid and report.manifest_payload is not None:
        candidates = repository.find_provenance_by_payload(session, report.manifest_payload)
    record = next(
        (r for r in candidates if r.watermark_payload is not None and report.matches(r.watermark_payload)),
        None,
    )
    if record is None:
        message = (
            "a watermark was detected but it names no job known to this platform"
            if report.watermark_found
            else "no platform watermark was detected in this video"
        )
        if not report.watermark_found and report.watermark_may_not_survive:
            message += (
                "; the watermark may not survive "
                + ", ".join(report.watermark_may_not_survive)
                + ", so a video edited that way can still come from this platform"
            )
        return VerifyOutcome(
            status="checked",
            message=message,
            detector=report.detector,
            watermark=watermark,
            manifest=manifest,
        )
    same_tenant = record.tenant_id == tenant_id
    checks = {
        "provenance_signature_valid": signature_valid(record, signing_key),
        "file_is_exact_output": (file_sha256 == record.output_sha256) if record.output_sha256 else None,
        "manifest_names_same_job": (report.manifest_job_id == record.job_id)
        if report.manifest_job_id
        else None,
    }
    found_by = "watermark" if report.watermark_found else "C2PA manifest"
    message = f"the {found_by} names job {record.job_id}"
    read, stored = report.watermark_payload, record.watermark_payload
    if report.watermark_found and read is not None and stored is not None:
        differing = bin(read ^ stored).count("1")
        if differing:
            message += f" ({differing} of {PAYLOAD_BITS} watermark bits read differently)"
    if record.job is not None and record.job.media_deleted_at is not None:
        message += f"; its result and inputs were deleted on {record.job.media_deleted_at.date().isoformat()}"
    return VerifyOutcome(
        status="checked",
        message=message,
        detector=report.detector,
        watermark=watermark,
        manifest=manifest,
        job_id=record.job_id,
        same_tenant=same_tenant,
        provenance=_public_provenance(record, same_tenant=same_tenant),
        checks=checks,
    )
