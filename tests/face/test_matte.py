"""The portrait matte (shared/face/matte.py) on the astronaut against a hand-drawn head-and-hair mask
and on synthetic renders whose coverage is known."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from shared.face.matte import PortraitMatter, guided_filter
from shared.face.matte_reference import EAR_ROW, head_iou, head_mask
from tests.face.analysis_support import astronaut, astronaut_portrait


@pytest.fixture(scope="module")
def matter() -> PortraitMatter:
    return PortraitMatter()


def test_astronaut_matte_matches_the_hand_drawn_head(matter: PortraitMatter) -> None:
    matte = matter.source_matte(astronaut())
    assert matte.shape == (512, 512) and matte.dtype == np.float32
    assert 0.0 <= matte.min() and matte.max() <= 1.0
    assert head_iou(matte, head_mask(), EAR_ROW) >= 0.9  # measured 0.97
    # Soft at the edges, not a hard cut-out: some pixels are in between along the hair outline.
    assert ((matte > 0.05) & (matte < 0.95)).sum() > 200
    # Background corners are background; the suit (the body) is person.
    assert matte[:40, :40].max() < 0.1 and matte[:60, 440:].max() < 0.1
    assert matte[400:460, 150:250].mean() > 0.9


def test_portrait_analysis_carries_the_matte_in_both_framings() -> None:
    portrait = astronaut_portrait()
    size = portrait.crop.shape[0]
    assert portrait.matte.shape == (size, size) and portrait.matte.dtype == np.float32
    assert portrait.source_matte.shape == (512, 512)
    # The crop's matte is the source matte moved by the crop transform: check at the landmarks.
    for crop_point, source_point in zip(portrait.landmarks[::7], portrait.source_landmarks[::7], strict=True):
        x, y = np.round(crop_point).astype(int)
        sx, sy = np.round(source_point).astype(int)
        if 0 <= x < size and 0 <= y < size:
            assert abs(float(portrait.matte[y, x]) - float(portrait.source_matte[sy, sx])) < 0.1
    # The face is person; the top corners of the crop (background beside the hair) are not.
    assert portrait.matte[size // 2, size // 2] > 0.95
    assert min(portrait.matte[:6, :6].max(), portrait.matte[:6, -6:].max()) < 0.2


def test_large_portrait_matte_is_computed_downscaled_and_resized(matter: PortraitMatter) -> None:
    large = cv2.resize(astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    matte = matter.source_matte(large)
    assert matte.shape == (1024, 1024)
    small = matter.source_matte(astronaut())
    down = cv2.resize(matte, (512, 512), interpolation=cv2.INTER_AREA)
    assert np.abs(down - small).mean() < 0.02


def test_guided_filter_moves_a_misplaced_mask_edge_onto_the_image_edge() -> None:
    guide = np.zeros((64, 64), np.float32)
    guide[:, 32:] = 1.0
    coarse = np.zeros((64, 64), np.float32)
    coarse[:, 35:] = 1.0  # the network's edge, 3 px off and blurred by its upsampling
    coarse = cv2.GaussianBlur(coarse, (0, 0), 1.5)
    refined = guided_filter(guide, coarse, 6, 1e-3)
    row = refined[32]
    assert np.abs(row[:32]).max() < 0.02  # nothing bleeds onto the background side
    crossing = int(np.argmax(row > 0.45))
    assert abs(crossing - 32) <= 1 and abs(int(np.argmax(coarse[32] > 0.45)) - 32) >= 2


@pytest.mark.parametrize("identity_index", [0, 3, 5])
def test_synthetic_heads_on_black_match_their_known_coverage_above_the_chin(
    matter: PortraitMatter, identity_index: int
) -> None:
    from shared.face.morphable import load_procedural_model
    from shared.model import cameras
    from shared.training import synthetic

    model = load_procedural_model()
    config = synthetic.SyntheticConfig(image_size=256)
    identity = synthetic.sample_identity(model, config, 0, "holdout", identity_index)
    beta = np.zeros(model.num_expression, np.float32)
    scene = synthetic.build_scene(model, identity, beta)
    camera = cameras.spherical_camera(0.2 * (identity_index - 2), 0.05).numpy().astype(np.float32)
    with torch.no_grad():
        image, _, coverage = synthetic.render_scene(scene, camera, identity.light, 256, 2)
    rgb = np.ascontiguousarray(((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    known = coverage[0].numpy() > 0.5
    landmarks = synthetic.project_landmarks(model, identity.alpha, beta, camera, 256)
    ear_row = int(min(landmarks[0, 1], landmarks[16, 1]))  # the jaw's top ends
    matte = matter.source_matte(rgb)
    # Measured 0.97-0.995. Below the ears the network paints a neck and shoulders under these
    # floating heads (its training data always has a body): documented, and black here anyway.
    assert head_iou(matte, known, ear_row) >= 0.9
    assert max(matte[:16, :16].max(), matte[:16, -16:].max()) < 0.1  # black corners: background
