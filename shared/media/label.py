"""Visible "AI-generated" label drawn on every output frame.

The label is a guardrail, so there is deliberately no switch to turn it off: callers choose only the
corner (bottom-right by default) and, for localisation, a text that must still contain "AI". It scales with
the frame (text height ~4.5% of the short side, never below ``MIN_TEXT_PX``) and is drawn as white text on
a semi-transparent dark box so it stays readable on any background. The rendered patch is cached per
(frame size, style), so labelling a frame costs one small alpha blend.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shared.media.errors import LABEL_INVALID_ARGUMENT, MediaError

Corner = Literal["bottom-right", "bottom-left", "top-right", "top-left"]
CORNERS: tuple[str, ...] = get_args(Corner)
DEFAULT_CORNER: Corner = "bottom-right"
DEFAULT_TEXT = "AI-generated"
MAX_TEXT_CHARS = 40
MIN_TEXT_PX = 9
MIN_FRAME_SIDE = 32


@dataclass(frozen=True)
class LabelStyle:
    """Look of the label. Sizes are fractions of the frame's short side so they scale with the output."""

    corner: Corner = DEFAULT_CORNER
    text: str = DEFAULT_TEXT
    text_height_fraction: float = 0.045
    margin_fraction: float = 0.02
    padding_fraction: float = 0.35  # of the text height, around the text inside the box
    background_opacity: float = 0.6

    def __post_init__(self) -> None:
        if self.corner not in CORNERS:
            raise MediaError(
                LABEL_INVALID_ARGUMENT,
                f"label corner must be one of {', '.join(CORNERS)}, got {self.corner!r}",
            )
        text = self.text.strip()
        # The label must keep saying the content is AI-made; a blank or unrelated text would disable it.
        if not text or "ai" not in text.lower() or len(text) > MAX_TEXT_CHARS:
            raise MediaError(
                LABEL_INVALID_ARGUMENT,
                f"label text must be 1-{MAX_TEXT_CHARS} characters and contain 'AI', got {self.text!r}",
            )
        if not 0.01 <= self.text_height_fraction <= 0.25:
            raise MediaError(LABEL_INVALID_ARGUMENT, "text_height_fraction must be in [0.01, 0.25]")
        if not 0.3 <= self.background_opacity <= 1.0:
            raise MediaError(LABEL_INVALID_ARGUMENT, "background_opacity must be in [0.3, 1.0]")


@dataclass(frozen=True)
class LabelBox:
    """Where the label lands in a frame: pixel rectangle [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int


_font_lock = threading.Lock()


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    with _font_lock:
        try:
            # Pillow >= 10.1 bundles a scalable font (needs FreeType, present in the pinned wheel).
            return ImageFont.load_default(size=size)
        except (OSError, TypeError):
            return ImageFont.load_default()


@lru_cache(maxsize=32)
def _render_patch(text: str, text_px: int, padding_px: int, opacity: float) -> np.ndarray:
    """RGBA float32 patch in [0, 1]: dark translucent box with white text."""
    font = _font(text_px)
    left, top, right, bottom = font.getbbox(text)
    width = (right - left) + 2 * padding_px
    height = (bottom - top) + 2 * padding_px
    image = Image.new("RGBA", (width, height), (0, 0, 0, int(round(255 * opacity))))
    draw = ImageDraw.Draw(image)
    draw.text((padding_px - left, padding_px - top), text, font=font, fill=(255, 255, 255, 255))
    patch = np.asarray(image, dtype=np.float32) / 255.0
    patch.flags.writeable = False  # shared by the cache
    return patch


def _layout(height: int, width: int, style: LabelStyle) -> tuple[np.ndarray, LabelBox]:
    if min(height, width) < MIN_FRAME_SIDE:
        raise MediaError(LABEL_INVALID_ARGUMENT, f"frame {width}x{height} is too small to carry a label")
    short = min(height, width)
    margin = max(1, int(round(short * style.margin_fraction)))
    text_px = max(MIN_TEXT_PX, int(round(short * style.text_height_fraction)))
    while True:
        padding = max(1, int(round(text_px * style.padding_fraction)))
        patch = _render_patch(style.text.strip(), text_px, padding, style.background_opacity)
        fits = patch.shape[1] <= width - 2 * margin and patch.shape[0] <= height - 2 * margin
        if fits or text_px <= MIN_TEXT_PX:
            break
        text_px -= 1  # a narrow frame: shrink the text until the label fits
    patch = patch[: height - 2 * margin, : width - 2 * margin]
    box_h, box_w = patch.shape[:2]
    x0 = margin if style.corner.endswith("left") else width - margin - box_w
    y0 = margin if style.corner.startswith("top") else height - margin - box_h
    return patch, LabelBox(x0=x0, y0=y0, x1=x0 + box_w, y1=y0 + box_h)


def label_box(width: int, height: int, style: LabelStyle | None = None) -> LabelBox:
    """The rectangle the label occupies in a ``width`` x ``height`` frame."""
    return _layout(height, width, style or LabelStyle())[1]


def draw_label(
    frame_rgb: np.ndarray,
    *,
    corner: Corner = DEFAULT_CORNER,
    text: str = DEFAULT_TEXT,
    style: LabelStyle | None = None,
    in_place: bool = False,
) -> np.ndarray:
    """Return the frame with the label blended into ``corner`` (a new array unless ``in_place``)."""
    if (
        not isinstance(frame_rgb, np.ndarray)
        or frame_rgb.dtype != np.uint8
        or frame_rgb.ndim != 3
        or frame_rgb.shape[2] != 3
    ):
        raise MediaError(LABEL_INVALID_ARGUMENT, "frames must be HxWx3 uint8 RGB arrays")
    chosen = style or LabelStyle(corner=corner, text=text)
    patch, box = _layout(frame_rgb.shape[0], frame_rgb.shape[1], chosen)
    out = frame_rgb if in_place else frame_rgb.copy()
    region = out[box.y0 : box.y1, box.x0 : box.x1].astype(np.float32)
    alpha = patch[:, :, 3:4]
    blended = patch[:, :, :3] * 255.0 * alpha + region * (1.0 - alpha)
    out[box.y0 : box.y1, box.x0 : box.x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def label_frames(
    frames_rgb: Iterable[np.ndarray],
    *,
    corner: Corner = DEFAULT_CORNER,
    text: str = DEFAULT_TEXT,
    in_place: bool = False,
) -> list[np.ndarray]:
    """Label every frame of a chunk."""
    style = LabelStyle(corner=corner, text=text)
    return [draw_label(frame, style=style, in_place=in_place) for frame in frames_rgb]
