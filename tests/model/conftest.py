"""Shared helpers for the network tests: a micro config (same code, smallest sizes) and inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from shared.model import cameras as cams
from shared.model.config import (
    AppearanceConfig,
    EncoderConfig,
    ExpressionConfig,
    ModelConfig,
    PlaneConfig,
    RendererConfig,
    SuperResConfig,
)
from shared.model.network import GOHABatch, GOHANetwork

# One thread: these tests run many small ops, and on 2 cores shared with other jobs a second
# OpenMP thread mostly spins (measured several times slower under load).
torch.set_num_threads(1)

MICRO_ENCODER = EncoderConfig(
    hidden_sizes=(8, 16, 24, 32),
    depths=(1, 1, 1, 1),
    num_attention_heads=(1, 1, 2, 2),
    decoder_hidden_size=32,
)


def micro_config(**overrides: object) -> ModelConfig:
    """64² input, 8-channel 32² planes, 16² renders with 8+8 samples, SR 16² → 32²."""
    base = ModelConfig(
        profile="micro",
        image_size=64,
        canonical_encoder=MICRO_ENCODER,
        plane=PlaneConfig(channels=8, resolution=32, head_channels=(32, 16)),
        appearance=AppearanceConfig(encoder=MICRO_ENCODER, upsampler_hidden=16),
        expression=ExpressionConfig(encoder=MICRO_ENCODER, num_bases=6),
        renderer=RendererConfig(
            resolution=16,
            depth_resolution=16,
            num_coarse=8,
            num_fine=8,
            decoder_hidden=16,
            feature_channels=4,
        ),
        superres=SuperResConfig(
            in_size=16, out_size=32, num_style_feat=32, channel_multiplier=1, narrow=0.125
        ),
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def activate_noise(network: GOHANetwork, strength: float = 0.1) -> None:
    """Fresh StyleGAN2 noise strengths are 0; give them a value so noise modes are observable."""
    with torch.no_grad():
        for name, param in network.superres.named_parameters():
            if param.numel() == 1 and name.endswith(".weight"):
                param.fill_(strength)


def make_network(config: ModelConfig | None = None, seed: int = 0) -> GOHANetwork:
    torch.manual_seed(seed)
    network = GOHANetwork(config or micro_config())
    activate_noise(network)
    return network.eval()


def make_batch(
    config: ModelConfig, batch: int = 2, seed: int = 1, num_coefficients: int | None = None
) -> GOHABatch:
    gen = torch.Generator().manual_seed(seed)
    size = config.image_size
    image = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    mask = torch.ones(batch, 1, size, size)
    mask[:, :, size // 3 : size // 2, size // 4 : 3 * size // 4] = 0  # the "eyes" band
    yaw = torch.linspace(-0.3, 0.3, batch) if batch > 1 else torch.tensor([0.2])
    source_camera = cams.spherical_camera(yaw, torch.full((batch,), 0.05))
    target_camera = cams.spherical_camera(-yaw * 0.5, torch.full((batch,), -0.1))
    expression = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    coefficients = None
    if num_coefficients:
        coefficients = torch.randn(batch, num_coefficients, generator=gen)
    return GOHABatch(
        source_image=image,
        source_mask=mask,
        source_camera=source_camera,
        target_camera=target_camera,
        expression_render=expression,
        expression_coefficients=coefficients,
    )


@pytest.fixture(scope="session")
def micro_network() -> GOHANetwork:
    return make_network()
