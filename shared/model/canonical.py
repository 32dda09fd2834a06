"""Canonical branch (paper §3.1): E_c + plane head → canonical, neutral-expression tri-plane T_c.

The plane head (`PlaneHead`, the released code's ``Embed2Plane``) maps the encoder's
(B, 256, 128, 128) features to (B, 3·C, 256, 256) and views them as (B, 3, C, 256, 256):

    conv3×3 256→256, LReLU(0.2) → conv3×3 256→128, LReLU(0.2)
    → [transposed conv 4×4 s2 128→128, LReLU(0.2)] × log2(R / feature resolution)
    → conv3×3 128→128, LReLU(0.2) → conv3×3 128→3C (no activation)

Channels 0..C-1 are plane 0 (XY), C..2C-1 plane 1 (XZ), 2C..3C-1 plane 2 (ZY); see triplane.py.
With one upsampling step the ``up_layers`` indices 0, 2, 4, 6, 8 match the released code's names.
The same head class serves the expression branch (``embedding2expr``).

The input of E_c is the source image × keep-mask (eyes/brows/mouth zeroed), as in the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shared.model.config import ModelConfig
from shared.model.constants import LEAKY_SLOPE
from shared.model.encoders import SegFormerEncoder
from shared.model.errors import ModelInputError
from shared.model.triplane import NUM_PLANES, pad_channels


class PlaneHead(nn.Module):
    def __init__(
        self, in_channels: int, head_channels: tuple[int, int], plane_channels: int, upsamples: int
    ) -> None:
        super().__init__()
        first, width = head_channels
        self.plane_channels = plane_channels
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, first, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(first, width, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
        ]
        for _ in range(upsamples):
            layers += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
        layers += [
            nn.Conv2d(width, width, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(width, NUM_PLANES * plane_channels, 3, padding=1),
        ]
        self.up_layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        # channels_last is markedly faster for these convolutions on CPU (oneDNN) and on GPUs.
        out = self.up_layers(features.contiguous(memory_format=torch.channels_last))
        b, _, h, w = out.shape
        return out.contiguous().view(b, NUM_PLANES, self.plane_channels, h, w)


def check_image(images: Tensor, size: int, channels: int, name: str) -> None:
    if images.ndim != 4 or images.shape[1] != channels or tuple(images.shape[-2:]) != (size, size):
        raise ModelInputError(
            "model.bad_image", f"{name} must be (B, {channels}, {size}, {size}), got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ModelInputError("model.bad_image", f"{name} must be a floating point tensor in [-1, 1]")


class CanonicalBranch(nn.Module):
    """Source image (B, 3, S, S) in [-1, 1] and keep-mask (B, 1, S, S) → T_c (B, 3, C, R, R)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.encoder = SegFormerEncoder(config.canonical_encoder)
        self.embedding2plane = PlaneHead(
            config.canonical_encoder.decoder_hidden_size,
            config.plane.head_channels,
            config.plane.channels,
            config.head_upsamples,
        )
        self.plane_channels = config.plane_channels  # zero beyond plane.channels (T_p's colour)

    def forward(self, source: Tensor, keep_mask: Tensor | None) -> Tensor:
        planes = self.embedding2plane(self.encoder(source, keep_mask=keep_mask))
        return pad_channels(planes, self.plane_channels)
