from __future__ import annotations

import numpy as np
import pytest

from shared.media.errors import MediaError
from shared.media.label import CORNERS, LabelStyle, draw_label, label_box, label_frames


def _changed_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.any(before != after, axis=2)


@pytest.mark.parametrize("corner", CORNERS)
def test_label_changes_only_its_corner(corner: str) -> None:
    frame = np.full((360, 640, 3), 120, np.uint8)
    labelled = draw_label(frame, corner=corner)  # type: ignore[arg-type]
    changed = _changed_mask(frame, labelled)
    ys, xs = np.nonzero(changed)
    assert ys.size > 0
    box = label_box(640, 360, LabelStyle(corner=corner))  # type: ignore[arg-type]
    # Every changed pixel lies in the box, and the box sits in the requested quarter of the frame.
    assert ys.min() >= box.y0 and ys.max() < box.y1 and xs.min() >= box.x0 and xs.max() < box.x1
    centre_x, centre_y = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    assert (centre_x > 320) == corner.endswith("right")
    assert (centre_y > 180) == corner.startswith("bottom")
    # Readable: bright text pixels on a darkened box.
    region = labelled[box.y0 : box.y1, box.x0 : box.x1]
    assert region.max() >= 230 and np.median(region) < 100
    assert np.array_equal(frame, np.full((360, 640, 3), 120, np.uint8))  # input untouched


def test_default_corner_is_bottom_right() -> None:
    frame = np.zeros((256, 256, 3), np.uint8)
    changed = _changed_mask(frame, draw_label(frame))
    ys, xs = np.nonzero(changed)
    assert ys.min() > 128 and xs.min() > 128


def test_label_scales_with_frame_size() -> None:
    small, large = label_box(512, 512), label_box(1024, 1024)
    small_h, large_h = small.y1 - small.y0, large.y1 - large.y0
    assert large_h == pytest.approx(2 * small_h, rel=0.15)
    assert (large.x1 - large.x0) == pytest.approx(2 * (small.x1 - small.x0), rel=0.15)
    # A narrow frame still gets a label that fits inside it.
    narrow = label_box(96, 400)
    assert 0 <= narrow.x0 < narrow.x1 <= 96


def test_label_on_white_frame_darkens_box() -> None:
    frame = np.full((200, 300, 3), 255, np.uint8)
    box = label_box(300, 200)
    region = draw_label(frame)[box.y0 : box.y1, box.x0 : box.x1]
    assert region.min() < 120  # the translucent dark box is visible even on white


def test_label_cannot_be_disabled_or_emptied() -> None:
    frame = np.zeros((128, 128, 3), np.uint8)
    for kwargs in (
        {"corner": "center"},
        {"corner": ""},
        {"text": ""},
        {"text": "   "},
        {"text": "Original video"},
    ):
        with pytest.raises(MediaError) as excinfo:
            draw_label(frame, **kwargs)  # type: ignore[arg-type]
        assert excinfo.value.code == "label_invalid_argument"
    localised = draw_label(frame, text="Généré par IA / AI")
    assert _changed_mask(frame, localised).any()
    with pytest.raises(MediaError):
        draw_label(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(MediaError):
        draw_label(np.zeros((128, 128), np.uint8))


def test_label_frames_and_in_place() -> None:
    frames = [np.full((128, 160, 3), value, np.uint8) for value in (10, 200)]
    out = label_frames(frames, corner="top-left")
    assert all(_changed_mask(before, after)[:40, :80].any() for before, after in zip(frames, out))
    target = frames[0]
    returned = draw_label(target, in_place=True)
    assert returned is target and _changed_mask(np.full_like(target, 10), target).any()
