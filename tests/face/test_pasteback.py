"""Paste-back geometry and compositing on a synthetic portrait whose head box is known."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from shared.face.align import AlignedCrop, invert_affine
from shared.face.pasteback import PasteBack, PasteBackConfig, output_shape

HEIGHT, WIDTH = 360, 480
HEAD = (200, 110, 280, 210)  # x0, y0, x1, y1 (exclusive) of the red "head" in portrait pixels
BACKGROUND = (90, 140, 90)
RED = (230, 20, 20)
CROP_SIZE = 112


def _portrait() -> np.ndarray:
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    image[:] = BACKGROUND
    x0, y0, x1, y1 = HEAD
    image[y0:y1, x0:x1] = RED
    return image


def _crop(portrait: np.ndarray) -> AlignedCrop:
    """A de-rolled similarity crop like the face stack's: rotated 12°, scaled, the head in the middle."""
    centre = ((HEAD[0] + HEAD[2] - 1) / 2, (HEAD[1] + HEAD[3] - 1) / 2)
    matrix = cv2.getRotationMatrix2D(centre, 12.0, 0.6)
    matrix[:, 2] += np.array([(CROP_SIZE - 1) / 2, (CROP_SIZE - 1) / 2]) - np.array(centre)
    image = cv2.warpAffine(portrait, matrix, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR)
    return AlignedCrop(
        image=image,
        matrix=matrix,
        inverse_matrix=invert_affine(matrix),
        size=CROP_SIZE,
        source_shape=(HEIGHT, WIDTH),
    )


def _in_crop_framing(mask: np.ndarray, crop: AlignedCrop, size: int) -> np.ndarray:
    """A portrait-pixel mask seen in the crop's framing at ``size``² (what a render's alpha is)."""
    from shared.face.align import resized_matrix

    matrix = resized_matrix(crop.matrix, crop.size, size)
    return cv2.warpAffine(mask.astype(np.float32), matrix, (size, size), flags=cv2.INTER_LINEAR)


def _head_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.float32)
    x0, y0, x1, y1 = HEAD
    mask[y0:y1, x0:x1] = 1.0
    return mask


def _as_render(image: np.ndarray, size: int) -> np.ndarray:
    """(S, S, 3) uint8 -> (1, 3, size, size) float in [-1, 1], as the network returns frames."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return (resized.astype(np.float32).transpose(2, 0, 1)[None] / 127.5) - 1.0


def _red_box(frame: np.ndarray) -> tuple[float, float, float, float]:
    """Sub-pixel edges of the red region: its extent where redness crosses half way, per axis."""
    redness = (frame[..., 0].astype(np.float32) - frame[..., 1].astype(np.float32)) / (RED[0] - RED[1])
    cols, rows = redness.max(axis=0), redness.max(axis=1)

    def edges(profile: np.ndarray) -> tuple[float, float]:
        inside = np.flatnonzero(profile >= 0.5)
        lo, hi = inside[0], inside[-1]
        # Linear interpolation of the 0.5 crossing on each side.
        left = lo - (profile[lo] - 0.5) / max(profile[lo] - profile[lo - 1], 1e-6)
        right = hi + (profile[hi] - 0.5) / max(profile[hi] - profile[hi + 1], 1e-6)
        return float(left), float(right)

    x_lo, x_hi = edges(cols)
    y_lo, y_hi = edges(rows)
    return x_lo, y_lo, x_hi, y_hi


@pytest.mark.parametrize("max_side", [1024, 240], ids=["full-size", "half-size"])
@pytest.mark.parametrize("render_size", [128, 256])
def test_the_head_round_trips_through_crop_and_paste_back_within_a_pixel(
    max_side: int, render_size: int
) -> None:
    portrait = _portrait()
    crop = _crop(portrait)
    # The "network" returns the crop itself (at its own size), opaque over the head.
    alpha = _in_crop_framing(_head_mask(), crop, 32)
    paste = PasteBack(portrait, crop, alpha, config=PasteBackConfig(max_side=max_side))
    (out,) = paste(_as_render(crop.image, render_size), np.ones((1, 1, 32, 32), np.float32))

    height, width = output_shape((HEIGHT, WIDTH), max_side)
    assert out.shape == (height, width, 3) and height % 2 == 0 and width % 2 == 0
    scale = width / WIDTH
    # The head's outer edges lie on pixel borders (index - 0.5); scaled about the image's outer edge.
    expected = [v * scale - 0.5 for v in HEAD]
    got = _red_box(out)
    assert np.abs(np.array(got) - np.array(expected)).max() <= 1.0, (got, expected)


def test_output_frames_keep_the_aspect_with_even_sides_and_a_capped_long_side() -> None:
    assert output_shape((361, 481), 1024) == (360, 480)  # never enlarged; rounded to even
    assert output_shape((1080, 1920), 1024) == (576, 1024)
    assert output_shape((1920, 1080), 1024) == (1024, 576)
    height, width = output_shape((333, 517), 300)
    assert max(height, width) <= 300 and height % 2 == 0 and width % 2 == 0
    assert abs(height / width - 333 / 517) < 0.01
    assert output_shape((300, 400), 1024, min_short_side=512) == (512, 682)  # small: enlarged
    assert output_shape((300, 900), 1024, min_short_side=512) == (342, 1024)  # ... within the cap


def test_a_blank_render_blanks_the_face_region() -> None:
    """All -1 frames with alpha 1 over the head: the head region of the output is black, whatever the
    portrait had there; far from the head the portrait is unchanged."""
    portrait = _portrait()
    crop = _crop(portrait)
    alpha = _in_crop_framing(_head_mask(), crop, 32)[None, None]
    paste = PasteBack(portrait, crop, alpha[0, 0])
    blank = -np.ones((1, 3, 128, 128), np.float32)
    (out,) = paste(blank, alpha)
    x0, y0, x1, y1 = HEAD
    inner = out[y0 + 8 : y1 - 8, x0 + 8 : x1 - 8]  # the 32² alpha is ~6 portrait px per texel
    assert inner.max() <= 2, inner.max()
    np.testing.assert_array_equal(out[:60, :60], portrait[:60, :60])
    np.testing.assert_array_equal(out[-40:, -60:], portrait[-40:, -60:])


def test_inside_the_alpha_every_pixel_is_the_render() -> None:
    portrait = _portrait()
    crop = _crop(portrait)
    paste = PasteBack(portrait, crop, _in_crop_framing(_head_mask(), crop, 32))
    blue = np.zeros((1, 3, 128, 128), np.float32)
    blue[:, 0], blue[:, 1], blue[:, 2] = -1.0, -0.5, 0.8  # (0, 64, 229) in uint8
    (out,) = paste(blue, np.ones((1, 1, 32, 32), np.float32))
    # Deep inside the crop (away from its feathered border) only the render shows.
    centre = crop.to_source(np.array([[(CROP_SIZE - 1) / 2, (CROP_SIZE - 1) / 2]]))[0].round().astype(int)
    patch = out[centre[1] - 25 : centre[1] + 25, centre[0] - 25 : centre[0] + 25].astype(int)
    assert np.abs(patch - np.array([0, 64, 229])).max() <= 1


def test_the_portraits_own_head_does_not_show_where_the_render_is_transparent() -> None:
    """The clean plate: with nothing rendered, the head region is inpainted from its surroundings."""
    portrait = _portrait()
    crop = _crop(portrait)
    paste = PasteBack(portrait, crop, _in_crop_framing(_head_mask(), crop, 32))
    (out,) = paste(-np.ones((1, 3, 128, 128), np.float32), np.zeros((1, 1, 32, 32), np.float32))
    x0, y0, x1, y1 = HEAD
    region = out[y0:y1, x0:x1].reshape(-1, 3).astype(int)
    assert np.abs(region - np.array(BACKGROUND)).max() <= 12, np.abs(region - np.array(BACKGROUND)).max()
    assert paste.head_mask[y0:y1, x0:x1].min() == 1.0  # the whole head was in the region


def test_a_source_matte_is_removed_inside_the_crop_only() -> None:
    portrait = _portrait()
    portrait[20:340, 20:40] = (20, 20, 230)  # a blue "shoulder" strip, far outside the crop
    portrait[100:120, 160:320] = (20, 20, 230)  # a blue "hair" strip across the head, inside the crop
    crop = _crop(portrait)
    matte = np.zeros((HEIGHT, WIDTH), np.float32)
    matte[20:340, 20:40] = 1.0
    matte[100:120, 160:320] = 1.0
    paste = PasteBack(portrait, crop, None, source_matte=matte)
    (out,) = paste(-np.ones((1, 3, 128, 128), np.float32), np.zeros((1, 1, 32, 32), np.float32))
    np.testing.assert_array_equal(out[20:340, 20:40], portrait[20:340, 20:40])  # outside the crop: kept
    hair = out[104:116, 215:265].astype(int)
    assert (hair[..., 2] - hair[..., 0]).max() < 60  # inside: inpainted, no blue strip left


def test_bad_inputs_are_refused() -> None:
    portrait = _portrait()
    crop = _crop(portrait)
    with pytest.raises(ValueError, match="crop came from"):
        PasteBack(portrait[:100], crop, None)
    paste = PasteBack(portrait, crop, None)
    with pytest.raises(ValueError, match="alpha"):
        paste(-np.ones((2, 3, 128, 128), np.float32), np.zeros((1, 1, 32, 32), np.float32))


def test_the_body_below_the_chin_row_stays_the_portraits_own() -> None:
    """A matte covering head and body: with ``body_row`` only the part above it is inpainted."""
    portrait = _portrait()
    x0, y0, x1, y1 = HEAD
    portrait[y1 : y1 + 40, x0 - 20 : x1 + 20] = (20, 20, 230)  # a blue "collar" under the head
    crop = _crop(portrait)
    matte = _head_mask()
    matte[y1 : y1 + 40, x0 - 20 : x1 + 20] = 1.0
    chin = float(crop.to_crop(np.array([[(x0 + x1) / 2, y1 - 1.0]]))[0, 1])
    blank = (-np.ones((1, 3, 128, 128), np.float32), np.zeros((1, 1, 32, 32), np.float32))
    whole = PasteBack(portrait, crop, None, source_matte=matte)
    trimmed = PasteBack(portrait, crop, None, source_matte=matte, body_row=chin)
    collar = (slice(y1 + 24, y1 + 40), slice(x0, x1))  # beyond the tilt (12°) and the dilation
    assert whole.head_mask[collar].min() == 1.0  # without the row the collar is removed too
    assert trimmed.head_mask[collar].max() == 0.0
    (out,) = trimmed(*blank)
    np.testing.assert_array_equal(out[collar], portrait[collar])
    assert trimmed.head_mask[y0 + 5 : y1 - 10, x0 + 5 : x1 - 5].min() == 1.0  # the head still is


def test_the_body_row_also_bounds_the_renders_own_head_region() -> None:
    portrait = _portrait()
    x0, y0, x1, y1 = HEAD
    crop = _crop(portrait)
    tall = _head_mask()
    tall[y1 : y1 + 40, x0:x1] = 1.0  # the render at the portrait's pose reaches below the chin
    chin = float(crop.to_crop(np.array([[(x0 + x1) / 2, y1 - 1.0]]))[0, 1])
    alpha = _in_crop_framing(tall, crop, 32)
    assert PasteBack(portrait, crop, alpha).head_mask[y1 + 24 : y1 + 40, x0:x1].min() == 1.0
    assert PasteBack(portrait, crop, alpha, body_row=chin).head_mask[y1 + 24 : y1 + 40, x0:x1].max() == 0.0


BLUE = (20, 20, 230)


def _collared_portrait() -> tuple[np.ndarray, np.ndarray, AlignedCrop, float]:
    """The portrait with a wide blue collar under the head and a matte of head + collar; the chin row."""
    portrait = _portrait()
    x0, y0, x1, y1 = HEAD
    portrait[y1 : y1 + 60, x0 - 40 : x1 + 40] = BLUE
    crop = _crop(portrait)
    matte = _head_mask()
    matte[y1 : y1 + 60, x0 - 40 : x1 + 40] = 1.0
    chin = float(crop.to_crop(np.array([[(x0 + x1) / 2, y1 - 1.0]]))[0, 1])
    return portrait, matte, crop, chin


def test_the_hole_is_filled_from_the_background_above_the_neck_and_from_the_body_under_the_chin() -> None:
    """The person's pixels are not sources of the background fill (the collar under the chin smeared
    into a dark band beside the neck); just above the body the fill continues the body upwards."""
    portrait, matte, crop, chin = _collared_portrait()
    x0, y0, x1, y1 = HEAD
    paste = PasteBack(portrait, crop, None, source_matte=matte, body_row=chin)
    (out,) = paste(-np.ones((1, 3, 128, 128), np.float32), np.zeros((1, 1, 32, 32), np.float32))
    blueness = out[..., 2].astype(np.float32) - out[..., 1].astype(np.float32)
    background_blueness = BACKGROUND[2] - BACKGROUND[1]
    # The upper two thirds of the removed head: background colours only.
    upper = (slice(y0 + 5, y0 + 60), slice(x0 + 5, x1 - 5))
    assert paste.head_mask[upper].min() == 1.0
    assert np.abs(blueness[upper] - background_blueness).max() < 12.0
    # Right above the collar, in its columns: mostly the collar's blue.
    neck = (slice(y1 - 8, y1 - 2), slice(x0 + 20, x1 - 20))
    assert paste.head_mask[neck].min() == 1.0
    assert blueness[neck].mean() > 0.6 * (BLUE[2] - BLUE[1])


def test_a_collar_beside_the_chin_stays_when_the_render_is_narrower() -> None:
    """Below the jaw the matte (head and body alike) counts only next to the rendered head: a helmet
    ring or a collar reaching up beside the chin is not inpainted away."""
    portrait, matte, crop, chin = _collared_portrait()
    x0, y0, x1, y1 = HEAD
    ring = (slice(y1 - 25, y1 - 5), slice(x0 - 40, x0 - 25))  # beside the chin, left of the head
    portrait[ring] = BLUE
    matte[ring] = 1.0
    alpha = _in_crop_framing(_head_mask(), crop, 32)
    paste = PasteBack(portrait, crop, alpha, source_matte=matte, body_row=chin)
    assert paste.head_mask[ring].max() == 0.0
    (out,) = paste(-np.ones((1, 3, 128, 128), np.float32), np.zeros((1, 1, 32, 32), np.float32))
    np.testing.assert_array_equal(out[ring], portrait[ring])
    # Without the render's opacity nothing tells head from body there: the whole matte is removed.
    assert PasteBack(portrait, crop, None, source_matte=matte, body_row=chin).head_mask[ring].mean() > 0.9


def test_a_portrait_filled_by_its_person_still_gets_a_plate() -> None:
    portrait, _, crop, chin = _collared_portrait()
    everything = np.ones((HEIGHT, WIDTH), np.float32)
    paste = PasteBack(portrait, crop, None, source_matte=everything, body_row=chin)
    (out,) = paste(-np.ones((1, 3, 128, 128), np.float32), np.zeros((1, 1, 32, 32), np.float32))
    assert out.shape == (*paste.shape, 3) and np.isfinite(paste.plate).all()
