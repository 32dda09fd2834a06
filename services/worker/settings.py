"""The worker's output settings, read from the environment like ``shared.platform.settings.Settings``.

They live here rather than in the platform's settings because only the worker reads them: how the
output frames are composed, not where anything runs.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Long side of pasted-back frames. The portrait's own resolution up to this: 1024 keeps a 16:9 portrait
# at 1024x576 (short side above the 480 px the watermark is calibrated for) while the encoder and the
# watermark's upsampled residual stay a few ms per frame (docs/worker.md, "Paste-back").
DEFAULT_PASTE_BACK_MAX_SIDE = 1024


class WorkerOutputSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GOHA_", extra="ignore", validate_default=True)

    # GOHA_PASTE_BACK_MAX_SIDE: cap on the long side of a pasted-back output frame (even sizes).
    paste_back_max_side: int = Field(DEFAULT_PASTE_BACK_MAX_SIDE, ge=64, le=4096)
    # GOHA_EXPRESSION_SUPERSAMPLE: the I_exp render's supersampling factor; None = the training data's
    # (shared.training.synthetic.SyntheticConfig.supersample), so the network sees what it was trained on.
    expression_supersample: int | None = Field(None, ge=1, le=4)
