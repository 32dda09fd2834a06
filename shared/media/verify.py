"""Answer "is this one of our videos?" for any uploaded clip: invisible watermark + C2PA manifest.

Pure: no database. The caller (the gateway's ``POST /v1/verify``) maps ``watermark.payload`` to a job by
looking it up among stored job payloads and checks its own provenance record; this module only reads the
file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from shared.media.c2pa_sign import ManifestReport, read_manifest
from shared.media.watermark import (
    DEFAULT_CONFIG,
    DEFAULT_MAX_SAMPLES,
    DEFAULT_THRESHOLD,
    WatermarkConfig,
    WatermarkResult,
    detect_video,
)

PathLike = str | os.PathLike[str]

# What the watermark survives, measured by ``make bench-watermark`` (docs/media.md: found rate after each
# attack, on the shipped model's output through the worker pipeline). A verifier that finds no watermark
# says which of these it could not have survived: "not found" is no proof a video is not ours.
ATTACKS: dict[str, str] = {
    "crf23": "H.264 re-encode at CRF 23",
    "crf28": "H.264 re-encode at CRF 28",
    "crf35": "H.264 re-encode at CRF 35",
    "scale075": "resize to 0.75x",
    "scale050": "resize to 0.5x",
    "crop8": "8 % border crop",
    "fps15": "frame rate changed to 15 fps",
    "cut1s": "1 s cut from the middle",
    "grey": "greyscale",
    "flip": "horizontal flip",
    "crf28_scale075": "resize to 0.75x + CRF 28",
}
# Found rates of `make bench-watermark` on the tiny model's output (docs/media.md, "Robustness report"),
# pooled over its two runs: 50 payloads (2026-12-07, all 50 found after every attack but greyscale and
# flip) and an earlier 24-payload run (2 misses at CRF 35, both on crop-mode sources): 74 payloads.
ATTACK_FOUND_RATES: dict[str, float] = {
    "crf23": 1.0,
    "crf28": 1.0,
    "crf35": 0.973,  # 72 / 74
    "scale075": 1.0,
    "scale050": 1.0,
    "crop8": 1.0,
    "fps15": 1.0,
    "cut1s": 1.0,
    "grey": 0.0,
    "flip": 0.0,
    "crf28_scale075": 1.0,
}
SURVIVES_AT = 0.98  # a found rate at least this counts as surviving the attack


def watermark_limits() -> dict[str, Any]:
    """The attacks the watermark survives and those it may not, with the measured found rates."""
    return {
        "survives": [ATTACKS[name] for name, rate in ATTACK_FOUND_RATES.items() if rate >= SURVIVES_AT],
        "may_not_survive": [ATTACKS[name] for name, rate in ATTACK_FOUND_RATES.items() if rate < SURVIVES_AT],
        "found_rates": dict(ATTACK_FOUND_RATES),
    }


@dataclass(frozen=True)
class VerifyReport:
    watermark: WatermarkResult
    manifest: ManifestReport

    @property
    def manifest_payload(self) -> int | None:
        """The watermark payload the signed manifest claims, if there is a readable one."""
        claim = self.manifest.claim or {}
        payload = (claim.get("watermark") or {}).get("payload")
        return int(payload) if isinstance(payload, int) else None

    @property
    def payload_consistent(self) -> bool | None:
        """Does the detected watermark match the manifest's claim? None when either is missing."""
        expected = self.manifest_payload
        if expected is None or self.watermark.payload is None or not self.manifest.valid:
            return None
        return self.watermark.matches(expected)

    @property
    def ai_generated_evidence(self) -> bool:
        """Any positive sign that the file came from the platform."""
        return self.watermark.found or (self.manifest.valid and self.manifest.ai_generated)

    def to_dict(self) -> dict[str, Any]:
        return {
            "watermark": self.watermark.to_dict(),
            "manifest": self.manifest.to_dict(),
            "manifest_payload": self.manifest_payload,
            "payload_consistent": self.payload_consistent,
            "ai_generated_evidence": self.ai_generated_evidence,
            "watermark_limits": watermark_limits(),
        }


def verify_video(
    path: PathLike,
    *,
    watermark_threshold: int = DEFAULT_THRESHOLD,
    trust_anchors: str | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    watermark_config: WatermarkConfig = DEFAULT_CONFIG,
) -> VerifyReport:
    """Detect the watermark (majority vote over ``max_samples`` frames) and read the C2PA manifest.

    ``trust_anchors``: PEM root certificate(s) the manifest's signer must chain to for ``trusted``.
    Raises ``MediaError`` (``file_not_found``, ``video_unreadable``, ...) for a file that is not a video.
    """
    manifest = read_manifest(path, trust_anchors)
    watermark = detect_video(
        path, max_samples=max_samples, threshold=watermark_threshold, config=watermark_config
    )
    return VerifyReport(watermark=watermark, manifest=manifest)
