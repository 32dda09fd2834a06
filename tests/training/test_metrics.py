import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from shared.training import metrics as M


def test_psnr_l1_match_hand_computed_values() -> None:
    target = torch.full((1, 3, 8, 8), 0.5)
    pred = target + 0.1  # every pixel off by 0.1 -> MSE 0.01 -> PSNR 20 dB, L1 0.1
    assert M.psnr(pred, target).item() == pytest.approx(20.0, abs=1e-4)
    assert M.l1(pred, target).item() == pytest.approx(0.1, abs=1e-6)
    half = target.clone()
    half[..., :4] += 0.2  # half the pixels off by 0.2 -> MSE 0.02
    assert M.psnr(half, target).item() == pytest.approx(10 * math.log10(1 / 0.02), abs=1e-4)
    assert math.isinf(M.psnr(target, target).item())


def test_ssim_matches_scikit_image_and_is_one_for_equal_images() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((32, 32, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    expected = structural_similarity(
        a, b, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    ta = torch.from_numpy(a).permute(2, 0, 1)[None]
    tb = torch.from_numpy(b).permute(2, 0, 1)[None]
    assert M.ssim(tb, ta).item() == pytest.approx(expected, abs=2e-3)
    assert M.ssim(ta, ta).item() == pytest.approx(1.0, abs=1e-6)


def test_keypoint_distance_and_cosine() -> None:
    a = np.zeros((2, 2))
    b = np.array([[3.0, 4.0], [0.0, 1.0]])  # distances 5 and 1 -> mean 3
    assert M.keypoint_distance(a, b) == pytest.approx(3.0)
    assert M.cosine_similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    box = M.box_from_landmarks(np.array([[10.0, 20.0], [30.0, 60.0]]), margin=0.5)
    assert box.tolist() == [0.0, 0.0, 40.0, 80.0]
