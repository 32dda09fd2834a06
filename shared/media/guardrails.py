"""The two marks every output frame gets, in the right order: visible label, then invisible watermark.

Labelling first means the watermark also covers the label's pixels, so no region of the frame is left
without the mark, and the watermark's small residual does not disturb the label's legibility.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from shared.media.label import DEFAULT_CORNER, DEFAULT_TEXT, Corner, LabelStyle, draw_label
from shared.media.watermark import DEFAULT_CONFIG, RivaGanWatermarker, WatermarkConfig


def apply_guardrails(
    frames_rgb: Iterable[np.ndarray],
    payload: int,
    *,
    corner: Corner = DEFAULT_CORNER,
    label_text: str = DEFAULT_TEXT,
    watermark_config: WatermarkConfig = DEFAULT_CONFIG,
) -> list[np.ndarray]:
    """Label and watermark a chunk of RGB uint8 frames; returns new frames."""
    style = LabelStyle(corner=corner, text=label_text)
    watermarker = RivaGanWatermarker(watermark_config)
    return [watermarker.embed_frame(draw_label(frame, style=style), payload) for frame in frames_rgb]
