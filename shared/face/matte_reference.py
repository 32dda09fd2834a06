"""A hand-drawn reference mask for the portrait matte: the astronaut's head and hair.

Why here and not in the tests: ``make bench-face`` reports ``matte_iou`` against the same polygon.
"""

from __future__ import annotations

import cv2
import numpy as np

# Head and hair of the astronaut (skimage.data.astronaut(), 512x512), traced once by hand on a 3x
# zoom with a 25 px grid: (x, y) pixel coordinates clockwise from the top of the hair. It ends at the
# jaw line; below the ears the matte rightly continues into the neck and shoulders, so below the ear
# row only the head itself is compared (see ``head_iou``).
ASTRONAUT_HEAD_AND_HAIR = np.array(
    [
        (233, 15), (257, 18), (277, 30), (292, 47), (300, 67), (302, 87), (297, 110), (280, 125),
        (271, 131), (265, 142), (260, 157), (245, 172), (222, 180), (199, 171), (188, 158), (182, 143),
        (177, 128), (175, 120), (163, 110), (155, 93), (153, 73), (160, 57), (177, 40), (200, 25),
    ],
    dtype=np.int32,
)  # fmt: skip
EAR_ROW = 128  # the polygon's ear vertices


def head_mask() -> np.ndarray:
    """(512, 512) bool: the polygon filled."""
    mask = np.zeros((512, 512), np.uint8)
    cv2.fillPoly(mask, [ASTRONAUT_HEAD_AND_HAIR], 1)
    return mask.astype(bool)


def head_iou(matte: np.ndarray, mask: np.ndarray, ear_row: int) -> float:
    """IoU of matte > 0.5 and the head mask over everything down to the ears plus the head itself
    below them: the matte's neck and shoulders are neither counted for nor against it."""
    domain = mask.copy()
    domain[: ear_row + 1] = True
    predicted = (matte > 0.5) & domain
    truth = mask & domain
    return float((predicted & truth).sum() / max((predicted | truth).sum(), 1))
