"""The render's opacity (``AnimateOutput.alpha``) as served: in [0, 1], zero where rays meet nothing.

A random network is a fog everywhere, so "zero on background rays" is checked on a network whose
decoder is set by hand: density only where the tri-planes hold a blob at the centre of the cube, none
elsewhere. Rays that miss the blob must come back fully transparent; rays through it opaque.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.inference.engine import InProcessInference
from shared.model import cameras
from shared.model.config import get_profile
from shared.model.network import GOHANetwork

BLOB_RADIUS = 0.3  # in normalised plane coordinates ([-1, 1] spans the cube's side)


def _set_layer(
    layer: torch.nn.Module, weights: dict[tuple[int, int], float], biases: dict[int, float]
) -> None:
    """Give an equalised-lr layer these *effective* weights and biases; everything else zero."""
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        for (out, inp), value in weights.items():
            layer.weight[out, inp] = value / layer.weight_gain
        for out, value in biases.items():
            layer.bias[out] = value / layer.bias_gain


@pytest.fixture(scope="module")
def blob_engine() -> InProcessInference:
    torch.manual_seed(0)
    network = GOHANetwork(get_profile("tiny")).eval()
    decoder = network.renderer.decoder
    # hidden_0 = softplus(4 f_0 - 20): ~0 unless plane channel 0 is large; σ = 5 hidden_0 - 40, so the
    # density softplus(σ - 1) is ~1e-18 wherever channel 0 is 0 and ~60 per unit inside the blob.
    _set_layer(decoder.net[0], {(0, 0): 4.0}, {0: -20.0})
    _set_layer(decoder.net[2], {(0, 0): 5.0}, {0: -40.0})
    # Only the planes sent over the wire: no expression planes added on top.
    network.expression_planes = lambda *args, **kwargs: None  # type: ignore[method-assign]
    return InProcessInference(network, model_version="blob-test")


def _blob_planes(engine: InProcessInference) -> np.ndarray:
    channels, resolution = engine.contract.shapes.plane_channels, engine.contract.shapes.plane_resolution
    centres = (np.arange(resolution) * 2 + 1) / resolution - 1
    inside = (centres[:, None] ** 2 + centres[None, :] ** 2) < BLOB_RADIUS**2
    planes = np.zeros((3, channels, resolution, resolution), np.float32)
    planes[:, 0][:, inside] = 10.0
    return planes


def test_alpha_is_zero_on_background_rays_and_one_through_the_head(blob_engine: InProcessInference) -> None:
    size = blob_engine.contract.shapes.expr_size
    renders = np.zeros((2, 3, size, size), np.float32)
    cams = torch.cat([cameras.frontal_camera().reshape(1, 25)] * 2).numpy().astype(np.float32)
    output = blob_engine.animate(_blob_planes(blob_engine), renders, cams)
    alpha = output.alpha
    low = blob_engine.contract.shapes.low_res_size
    assert alpha.shape == (2, 1, low, low) and alpha.dtype == np.float32
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    # Where each pixel's ray meets the centre plane z = 0, in plane units.
    origins, directions = cameras.generate_rays(torch.from_numpy(cams[:1]), low)
    t = -origins[0, :, 2] / directions[0, :, 2]
    hit = (origins[0] + t[:, None] * directions[0])[:, :2].numpy() * 2.0  # box_warp 1: world * 2
    radius = np.linalg.norm(hit, axis=1).reshape(low, low)
    frame = alpha[0, 0]
    # Rays that pass well outside the blob (all three projections of every sample outside it) see nothing.
    background = radius > 1.5 * BLOB_RADIUS
    assert background.sum() > low * low // 2
    assert frame[background].max() < 1e-6, frame[background].max()
    # Rays through the middle of the blob are opaque.
    core = radius < 0.5 * BLOB_RADIUS
    assert core.sum() >= 4
    assert frame[core].min() > 0.99, frame[core].min()
    np.testing.assert_array_equal(alpha[0], alpha[1])  # same inputs, same opacity


def test_alpha_of_a_real_network_stays_in_range(inprocess, reference) -> None:  # noqa: ANN001
    low = inprocess.contract.shapes.low_res_size
    assert reference.alpha.shape == (3, 1, low, low)
    assert reference.alpha.min() >= 0.0 and reference.alpha.max() <= 1.0
    assert reference.alpha.std() > 0  # an image of opacity, not a constant
