"""Paste-back: the rendered head composited into the portrait's own framing (numpy + OpenCV only).

The network renders a head in the aligned crop's framing, on black, with its accumulated opacity
(``AnimateOutput.alpha``). A user expects the portrait back: its framing, its resolution, its
background and body, with the head moving. `PasteBack` is built once per job and then turns every
rendered frame into such a portrait frame:

1. **Output frame**: the portrait resized so its long side is at most ``max_side`` (small portraits
   optionally enlarged to ``min_short_side``), both sides even (H.264 4:2:0).
2. **Clean plate**: the portrait's own head would show wherever the animated head does not cover
   it (a turned or lowered head uncovers it). The head region — the model's own opacity rendered
   at the portrait's pose (one extra ``animate`` call per job), warped into the frame and dilated,
   united with a portrait matte restricted to the crop (and to the rows above the chin when the
   caller gives ``body_row``: the neck and shoulders stay; below the jaw only next to the rendered
   head: a collar beside the chin stays) when the face stack provides one — is inpainted once
   (``cv2.inpaint`` at reduced resolution, upsampled; with a matte from the background's pixels
   only, fading into the body's colours under the chin), and the plate fades into the portrait
   over a feathered seam.
3. **Per frame**: the render and its opacity go through the inverse of the crop alignment into the
   frame; the opacity is faded to zero near the crop's border (the render ends there) and the
   head is composited with the "over" operator. The render is *premultiplied* (the network
   composites onto black), so ``out = render + (1 - alpha) * plate``: where alpha is 1 the pixel is
   the model's render and nothing else — no 2D warping or blending of the portrait's pixels.

Coordinates follow ``shared.face.align``: pixel-index coordinates, centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from shared.face.align import (
    AlignedCrop,
    compose_affine,
    feather_mask,
    invert_affine,
    rescale_matrix,
    resized_matrix,
)

# The least share of the (reduced) frame a fill's sources must cover for the matte-aware fills.
MIN_SOURCE_SHARE = 0.01


@dataclass(frozen=True)
class PasteBackConfig:
    max_side: int = 1024  # long side of the output frame at most
    # Portraits whose short side is below this are enlarged to it (still within max_side): e.g. the
    # worker keeps outputs at >= 512 px, the size its watermark is calibrated at. 0: never enlarged.
    min_short_side: int = 0
    head_threshold: float = 0.25  # opacity above which the portrait-pose render counts as head
    dilate: float = 0.06  # head region grown by this fraction of the crop's side (hair, motion blur)
    seam: float = 0.03  # clean plate faded into the portrait over this fraction of the crop's side
    crop_feather: float = 0.06  # opacity faded to 0 over this fraction of the render at its border
    inpaint_side: int = 160  # long side at which the head region is inpainted
    # With a matte and ``body_row``: the hole takes the body's colours (extended upwards from below
    # ``body_row``) in this band above it, fading to the background's above it (fraction of the
    # crop's side; the chin is BODY_MARGIN = 0.04 above the row, the jaw's corners ~0.15).
    neck_band: float = 0.16

    def __post_init__(self) -> None:
        if self.max_side < 16:
            raise ValueError("max_side must be at least 16")
        if not 0.0 <= self.head_threshold < 1.0:
            raise ValueError("head_threshold must be in [0, 1)")
        if self.inpaint_side < 16:
            raise ValueError("inpaint_side must be at least 16")


def output_shape(source_shape: tuple[int, int], max_side: int, min_short_side: int = 0) -> tuple[int, int]:
    """(height, width) of the output frame: the source's aspect, long side <= ``max_side``, short side
    enlarged to ``min_short_side`` when below it (the long side's cap wins), even sides."""
    height, width = source_shape
    scale = min(1.0, max_side / max(height, width))
    if min(height, width) * scale < min_short_side:
        scale = min(min_short_side / min(height, width), max_side / max(height, width))

    def even(value: float) -> int:
        return max(2, 2 * int(round(value * scale / 2.0)))

    return even(height), even(width)


def _square_corners(size: int) -> np.ndarray:
    return np.array([[-0.5, -0.5], [size - 0.5, -0.5], [size - 0.5, size - 0.5], [-0.5, size - 0.5]])


def _float_rgb(frames: np.ndarray) -> np.ndarray:
    """(N, 3, S, S) float in [-1, 1] or (N, S, S, 3) uint8 -> (N, S, S, 3) float32 in [0, 1]."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) / 255.0
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(
            f"render frames must be (N, 3, S, S) floats or (N, S, S, 3) uint8, got {frames.shape}"
        )
    return np.clip((frames.transpose(0, 2, 3, 1).astype(np.float32) + 1.0) * 0.5, 0.0, 1.0)


class PasteBack:
    """Composites rendered heads into the portrait; built once per job (see the module docstring).

    Args:
        portrait: (H, W, 3) uint8 RGB, the image the crop was taken from.
        crop: the portrait's ``AlignedCrop`` (``PortraitAnalysis.crop_transform``).
        head_alpha: (A, A) opacity in [0, 1] of the model's render at the portrait's own camera and
            expression, in the crop's framing (any square size).
        crop_matte: optional (S, S) portrait matte in the crop's framing, [0, 1].
        source_matte: optional (H, W) portrait matte in portrait pixels, [0, 1].
        body_row: optional row of the crop (crop pixels, below the chin) under which nothing counts
            as head (neither the mattes nor the portrait-pose render's opacity): the neck and
            shoulders stay the portrait's own instead of being inpainted; the animated render is
            still composited over them with its alpha.
    """

    def __init__(
        self,
        portrait: np.ndarray,
        crop: AlignedCrop,
        head_alpha: np.ndarray | None,
        *,
        crop_matte: np.ndarray | None = None,
        source_matte: np.ndarray | None = None,
        body_row: float | None = None,
        config: PasteBackConfig | None = None,
    ) -> None:
        self.config = config or PasteBackConfig()
        portrait = np.asarray(portrait)
        if portrait.ndim != 3 or portrait.shape[2] != 3 or portrait.dtype != np.uint8:
            raise ValueError(f"portrait must be (H, W, 3) uint8, got {portrait.shape} {portrait.dtype}")
        if tuple(portrait.shape[:2]) != tuple(crop.source_shape):
            raise ValueError(f"portrait is {portrait.shape[:2]}, the crop came from {crop.source_shape}")
        self.crop = crop
        self.height, self.width = output_shape(
            crop.source_shape, self.config.max_side, self.config.min_short_side
        )
        # portrait px -> output px, then crop px -> output px.
        self.source_to_output = rescale_matrix(crop.source_shape, (self.height, self.width))
        self.crop_to_output = compose_affine(self.source_to_output, crop.inverse_matrix)
        # The crop's side in output pixels: the unit of the dilation, seam and feather widths.
        self.crop_side = crop.size * float(np.sqrt(abs(np.linalg.det(self.crop_to_output[:, :2]))))
        self._roi = self._footprint_box()
        x0, y0, x1, y1 = self._roi
        self._to_roi = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]])
        self._render_warps: dict[int, np.ndarray] = {}
        self._border: dict[tuple[int, float], np.ndarray] = {}
        if x1 > x0 and y1 > y0:
            self._footprint = self._crop_border(crop.size, feather=0.0)
        else:
            self._footprint = np.zeros((0, 0), np.float32)

        enlarge = self.width > portrait.shape[1]
        resized = cv2.resize(
            portrait, (self.width, self.height), interpolation=cv2.INTER_CUBIC if enlarge else cv2.INTER_AREA
        )
        mattes = self._matte_maps(crop_matte, source_matte)
        self.head_mask = self._head_region(head_alpha, mattes, body_row)
        # The person for the fill's sources: the whole portrait's matte when given (the crop's ends
        # at the crop), else the crop's.
        person = mattes[-1].astype(np.float32) if mattes else None
        body = self._body_weight(person, body_row) if person is not None else None
        self.plate = self._clean_plate(resized, self.head_mask, person, body)
        self._plate_uint8 = np.rint(self.plate * 255.0).astype(np.uint8)

    # --- geometry ------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of every output frame."""
        return self.height, self.width

    def _footprint_box(self) -> tuple[int, int, int, int]:
        """Output pixels the crop square can reach, clipped to the frame: (x0, y0, x1, y1), exclusive."""
        corners = _square_corners(self.crop.size) @ self.crop_to_output[:, :2].T + self.crop_to_output[:, 2]
        x0 = int(np.clip(np.floor(corners[:, 0].min()), 0, self.width))
        y0 = int(np.clip(np.floor(corners[:, 1].min()), 0, self.height))
        x1 = int(np.clip(np.ceil(corners[:, 0].max()) + 1, 0, self.width))
        y1 = int(np.clip(np.ceil(corners[:, 1].max()) + 1, 0, self.height))
        return x0, y0, x1, y1

    def grid_to_output(self, size: int) -> np.ndarray:
        """2x3 map from a ``size``² image in the crop's framing to output pixels."""
        grid_to_source = invert_affine(resized_matrix(self.crop.matrix, self.crop.size, size))
        return compose_affine(self.source_to_output, grid_to_source)

    def _warp_to_roi(self, image: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        matrix = self._render_warps.get(size)
        if matrix is None:
            matrix = compose_affine(self._to_roi, self.grid_to_output(size))
            self._render_warps[size] = matrix
        x0, y0, x1, y1 = self._roi
        return cv2.warpAffine(
            image,
            matrix,
            (x1 - x0, y1 - y0),
            flags=interpolation,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )

    def _crop_border(self, size: int, feather: float) -> np.ndarray:
        """The crop square's footprint in the ROI, faded to 0 over ``feather`` of its side at the edges."""
        key = (size, feather)
        cached = self._border.get(key)
        if cached is None:
            mask = feather_mask(size, feather) if feather > 0 else np.ones((size, size), np.float32)
            cached = self._warp_to_roi(mask, size)
            self._border[key] = cached
        return cached

    def _to_full(self, roi_image: np.ndarray) -> np.ndarray:
        full = np.zeros((self.height, self.width), np.float32)
        x0, y0, x1, y1 = self._roi
        full[y0:y1, x0:x1] = roi_image
        return full

    # --- once per job --------------------------------------------------------------------------------
    def _matte_maps(self, crop_matte: np.ndarray | None, source_matte: np.ndarray | None) -> list[np.ndarray]:
        """The given mattes as (H', W') bool maps of the person (matte > 0.5) in output pixels."""
        maps = []
        if crop_matte is not None:
            matte = np.asarray(crop_matte, dtype=np.float32).squeeze()
            warped = self._to_full(self._warp_to_roi(np.ascontiguousarray(matte), matte.shape[0]))
            maps.append(warped > 0.5)
        if source_matte is not None:
            matte = np.asarray(source_matte, dtype=np.float32).squeeze()
            if matte.shape != tuple(self.crop.source_shape):
                raise ValueError(f"source_matte must be {self.crop.source_shape}, got {matte.shape}")
            resized = cv2.resize(matte, (self.width, self.height), interpolation=cv2.INTER_AREA)
            maps.append(resized > 0.5)
        return maps

    def _head_region(
        self, head_alpha: np.ndarray | None, mattes: list[np.ndarray], body_row: float | None = None
    ) -> np.ndarray:
        """(H', W') float32 in {0, 1}: where the portrait's own head is, to be removed from the plate."""
        region = np.zeros((self.height, self.width), np.float32)
        if self._footprint.size == 0:
            return region
        footprint = self._to_full(self._footprint) > 0.5
        # Where anything counts as head: the crop's footprint, above ``body_row`` when given
        # (inpainting everything under the chin smeared the neck and collar into a dark blur).
        head_zone = footprint
        if body_row is not None:
            size = self.crop.size
            above = (np.arange(size, dtype=np.float32)[:, None] <= body_row).astype(np.float32)
            above = np.ascontiguousarray(np.broadcast_to(above, (size, size)))
            head_zone = self._to_full(self._warp_to_roi(above, size)) > 0.5
        radius = int(round(self.config.dilate * self.crop_side))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        matte_zone = head_zone
        if head_alpha is not None:
            head = np.asarray(head_alpha, dtype=np.float32).squeeze()
            if head.ndim != 2 or head.shape[0] != head.shape[1]:
                raise ValueError(f"head_alpha must be a square (A, A) image, got {np.shape(head_alpha)}")
            warped = self._to_full(self._warp_to_roi(np.ascontiguousarray(head), head.shape[0]))
            rendered = (warped > self.config.head_threshold) & head_zone
            region = np.maximum(region, rendered.astype(np.float32))
            if body_row is not None:
                # Below the jaw the matte is the body as much as the head (a collar, a helmet ring, a
                # shirt reaching up beside the chin): there it counts only next to the rendered head.
                size = self.crop.size
                jaw_row = body_row - self.config.neck_band * size
                rows = np.arange(size, dtype=np.float32)[:, None]
                above_jaw = np.ascontiguousarray(
                    np.broadcast_to((rows <= jaw_row).astype(np.float32), (size, size))
                )
                above_jaw_full = self._to_full(self._warp_to_roi(above_jaw, size)) > 0.5
                near_head = cv2.dilate(rendered.astype(np.uint8), kernel) > 0 if radius > 0 else rendered
                matte_zone = head_zone & (above_jaw_full | near_head)
        for person in mattes:
            region = np.maximum(region, (person & matte_zone).astype(np.float32))
        if radius > 0 and region.any():
            region = cv2.dilate(region, kernel)
        return region

    def _body_weight(self, person: np.ndarray, body_row: float | None) -> np.ndarray | None:
        """(H', W') float32 in [0, 1]: how much of the hole's fill is the body's rather than the
        background's. In the crop's framing: 1 at ``body_row``, fading to 0 ``neck_band`` above it,
        only in the columns where the person continues below the row (the neck and collar; beside
        them the shoulders' background shows). None without ``body_row``."""
        if body_row is None or self._footprint.size == 0:
            return None
        size = self.crop.size
        band = max(1.0, self.config.neck_band * size)
        rows = np.arange(size, dtype=np.float32)[:, None]
        ramp = np.clip((rows - (body_row - band)) / band, 0.0, 1.0)
        # The person in the crop's framing, read a little below the row.
        grid_from_output = invert_affine(self.crop_to_output)
        in_crop = cv2.warpAffine(person, grid_from_output, (size, size), flags=cv2.INTER_NEAREST)
        probe = int(np.clip(round(body_row + 0.02 * size), 0, size - 1))
        columns = in_crop[probe : min(size, probe + max(1, round(0.02 * size)))].max(axis=0)
        columns = cv2.GaussianBlur(columns[None].astype(np.float32), (0, 0), sigmaX=max(1.0, 0.02 * size))[0]
        weight = np.ascontiguousarray(ramp * columns[None, :], dtype=np.float32)
        return self._to_full(self._warp_to_roi(weight, size))

    def _clean_plate(
        self,
        portrait: np.ndarray,
        region: np.ndarray,
        person: np.ndarray | None = None,
        body: np.ndarray | None = None,
    ) -> np.ndarray:
        """(H', W', 3) float32 in [0, 1]: the portrait with the head region inpainted, seams feathered.

        Without a matte the hole is filled from whatever surrounds it. With one it is filled from
        the background only (the person's pixels are not sources: the collar under the chin smeared
        into a dark band beside the neck), and with ``body`` (`_body_weight`) its lower part from the
        body below instead (the neck continues down into the collar)."""
        base = portrait.astype(np.float32) / 255.0
        if not region.any():
            return base
        scale = min(1.0, self.config.inpaint_side / max(self.height, self.width))
        small_size = (max(1, round(self.width * scale)), max(1, round(self.height * scale)))
        small = cv2.resize(portrait, small_size, interpolation=cv2.INTER_AREA)
        small_mask = (cv2.resize(region, small_size, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
        radius = max(3, int(round(0.05 * max(small_size))))
        # The fill's sources: everything outside the hole, or with a matte the background only
        # (unless there is too little of it: a portrait filled by its person keeps the plain fill).
        sources = small_mask == 0
        if person is not None:
            small_person = cv2.resize(person, small_size, interpolation=cv2.INTER_AREA) > 0.5
            known_background = sources & ~small_person
            known_body = sources & small_person
            if known_background.mean() >= MIN_SOURCE_SHARE:
                sources = known_background
        filled = cv2.inpaint(small, (~sources).astype(np.uint8), radius, cv2.INPAINT_TELEA)
        if person is not None:
            if body is not None and known_body.mean() >= MIN_SOURCE_SHARE:
                from_body = cv2.inpaint(small, (~known_body).astype(np.uint8), radius, cv2.INPAINT_TELEA)
                weight = cv2.resize(body, small_size, interpolation=cv2.INTER_AREA)[..., None]
                mixed = filled.astype(np.float32) * (1.0 - weight) + from_body.astype(np.float32) * weight
                filled = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
            filled = np.where(small_mask[..., None] > 0, filled, small)
        # Telea leaves streaks across a large hole; a blur inside the hole keeps only its colours.
        blur = max(1, int(round(0.04 * max(small_size)))) * 2 + 1
        smooth = cv2.GaussianBlur(filled, (blur, blur), 0)
        filled = np.where(small_mask[..., None] > 0, smooth, filled)
        filled_full = cv2.resize(filled, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        seam = max(1.0, self.config.seam * self.crop_side)
        soft = cv2.GaussianBlur(region, (0, 0), sigmaX=seam / 2.0)
        soft = np.maximum(soft, region)[..., None]  # fully replaced inside the region, faded outside
        return base * (1.0 - soft) + (filled_full.astype(np.float32) / 255.0) * soft

    # --- per frame ------------------------------------------------------------------------------------
    def __call__(self, render_frames: np.ndarray, alpha: np.ndarray) -> list[np.ndarray]:
        """Rendered frames (N, 3, S, S) in [-1, 1] (or (N, S, S, 3) uint8) and their opacity
        (N, 1, A, A) in [0, 1] -> N output frames (H', W', 3) uint8."""
        frames = _float_rgb(render_frames)
        alpha = np.asarray(alpha, dtype=np.float32)
        if alpha.ndim == 4:
            alpha = alpha[:, 0]
        if alpha.ndim != 3 or alpha.shape[0] != frames.shape[0] or alpha.shape[1] != alpha.shape[2]:
            raise ValueError(
                f"alpha must be (N, 1, A, A) for {frames.shape[0]} frames, got {np.shape(alpha)}"
            )
        base = self._plate_uint8
        x0, y0, x1, y1 = self._roi
        if x1 <= x0 or y1 <= y0:  # the crop lies outside the portrait: nothing to paste
            return [base.copy() for _ in range(frames.shape[0])]
        border = self._crop_border(frames.shape[1], self.config.crop_feather)
        plate_roi = self.plate[y0:y1, x0:x1]
        result = []
        for frame, opacity in zip(frames, alpha):
            render = self._warp_to_roi(frame, frame.shape[0])
            a = np.clip(self._warp_to_roi(np.ascontiguousarray(opacity), opacity.shape[0]), 0.0, 1.0) * border
            # "Over" with premultiplied colour. The render ends at the crop's border, where its colour
            # and its opacity fade out together (both times ``border``), so no seam shows there.
            composite = render * border[..., None] + (1.0 - a[..., None]) * plate_roi
            out = base.copy()
            out[y0:y1, x0:x1] = np.clip(composite * 255.0 + 0.5, 0, 255).astype(np.uint8)
            result.append(out)
        return result
