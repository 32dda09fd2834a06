"""Everything a request handler needs, built once per process by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from celery import Celery

from services.gateway.ratelimit import RateLimiter
from services.gateway.uploads import UploadSlots
from shared.platform.db import Database
from shared.platform.inputs import InputLimits
from shared.platform.provenance import load_signing_key
from shared.platform.settings import Settings
from shared.platform.storage import ObjectStorage
from shared.platform.verify import Verifier, load_verifier


@dataclass
class GatewayContext:
    settings: Settings
    db: Database
    storage: ObjectStorage
    celery: Celery
    rate_limiter: RateLimiter

    @cached_property
    def upload_slots(self) -> UploadSlots:
        settings = self.settings
        return UploadSlots(
            settings.max_concurrent_uploads,
            settings.max_concurrent_uploads_per_key,
            settings.upload_slot_wait_s,
        )

    @property
    def base_url(self) -> str:
        """Prefix of links in responses ("" -> relative paths)."""
        return self.settings.public_base_url.rstrip("/")

    @cached_property
    def limits(self) -> InputLimits:
        return InputLimits.from_settings(self.settings)

    @cached_property
    def signing_key(self) -> bytes:
        return load_signing_key(self.settings)

    def verifier(self) -> Verifier | None:
        # Looked up per call: a verifier registered after start-up (worker package import) is picked up.
        return load_verifier(self.settings)
