"""StyleGAN2 discriminator (residual, equalised learning rate, minibatch standard deviation).

The paper's GAN stages use basicsr's StyleGAN2Discriminator at 512² with channel multiplier 1
(initialised from GFPGAN's ``GFPGANv1_net_d.pth``): on the 3-channel upsampled render in stage
1's GAN phase, and as a *dual* discriminator on 6 channels [SR output, upsampled low-res] in stage
2, where only the first conv is new. Parameter names follow that layout so the file can be loaded
with `load_discriminator_weights`; the code is written from the architecture description.

Layout: ``conv_body.0`` (1x1 conv from the input channels), ``conv_body.1..`` residual blocks that
halve the resolution down to 4², minibatch-stddev channel, ``final_conv`` (3x3),
``final_linear`` (two equalised linear layers) -> one logit per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from shared.model.errors import ConfigError, ModelInputError
from shared.model.stylegan2_layers import (
    DiscConvLayer,
    DiscResBlock,
    EqualLinear,
    LoadReport,
    ModelWeightsError,
    load_state_dict_checked,
    read_weight_file,
    stylegan_channels,
)

__all__ = [
    "DiscriminatorConfig",
    "LoadReport",
    "ConfigError",
    "ModelInputError",
    "ModelWeightsError",
    "StyleGAN2Discriminator",
    "load_discriminator_weights",
    "paper_discriminator_config",
    "tiny_discriminator_config",
]

FIRST_CONV_WEIGHT = "conv_body.0.0.weight"


@dataclass
class DiscriminatorConfig:
    size: int  # input resolution (paper 512)
    in_channels: int = 3  # 3: single image; 6: the stage-2 dual D on [SR, upsampled low-res]
    channel_multiplier: float = 1
    narrow: float = 1.0
    stddev_group: int = 4
    resample_kernel: tuple[int, ...] = (1, 3, 3, 1)

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    def channels(self) -> dict[int, int]:
        return stylegan_channels(self.channel_multiplier, self.narrow)

    def validate(self) -> None:
        if self.size < 8 or self.size > 1024 or 2**self.log_size != self.size:
            raise ConfigError(
                "discriminator.bad_config", f"size must be a power of two in [8, 1024], got {self.size}"
            )
        if self.in_channels < 1:
            raise ConfigError("discriminator.bad_config", f"in_channels must be >= 1, got {self.in_channels}")
        if self.stddev_group < 1:
            raise ConfigError(
                "discriminator.bad_config", f"stddev_group must be >= 1, got {self.stddev_group}"
            )
        channels = self.channels()
        if min(channels[2**i] for i in range(2, self.log_size + 1)) < 1:
            raise ConfigError(
                "discriminator.bad_config", f"narrow={self.narrow} leaves a layer without channels"
            )


def paper_discriminator_config(in_channels: int = 3) -> DiscriminatorConfig:
    """basicsr StyleGAN2Discriminator(512, channel_multiplier=1), as in the paper's GAN stages."""
    return DiscriminatorConfig(size=512, in_channels=in_channels, channel_multiplier=1)


def tiny_discriminator_config(in_channels: int = 3) -> DiscriminatorConfig:
    """Same architecture at 128², 1/8 width: matches the tiny SR output."""
    return DiscriminatorConfig(size=128, in_channels=in_channels, channel_multiplier=1, narrow=0.125)


class StyleGAN2Discriminator(nn.Module):
    """Images (B, in_channels, size, size), roughly in [-1, 1] -> realness logits (B, 1)."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        channels = config.channels()
        in_channels = channels[config.size]
        body: list[nn.Module] = [DiscConvLayer(config.in_channels, in_channels, 1)]
        for level in range(config.log_size, 2, -1):
            out_channels = channels[2 ** (level - 1)]
            body.append(DiscResBlock(in_channels, out_channels, config.resample_kernel))
            in_channels = out_channels
        self.conv_body = nn.Sequential(*body)
        # +1 input channel: the minibatch standard deviation feature.
        self.final_conv = DiscConvLayer(in_channels + 1, channels[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(channels[4] * 4 * 4, channels[4], activate=True),
            EqualLinear(channels[4], 1),
        )

    def _stddev_group(self, batch: int) -> int:
        # basicsr requires the batch to be divisible by min(batch, 4); taking the largest divisor
        # not above the configured group gives the same result there and also accepts odd batches.
        return max(g for g in range(1, min(batch, self.config.stddev_group) + 1) if batch % g == 0)

    def minibatch_stddev(self, features: Tensor) -> Tensor:
        """Append one channel: the mean std over groups of samples (lets D see a lack of variety)."""
        batch, channels, height, width = features.shape
        group = self._stddev_group(batch)
        grouped = features.view(group, batch // group, channels, height, width)
        std = (grouped.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (B/g, C, H, W)
        std = std.mean(dim=(1, 2, 3), keepdim=True)  # (B/g, 1, 1, 1)
        std = std.repeat(group, 1, height, width)
        return torch.cat([features, std], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        cfg = self.config
        expected = (cfg.in_channels, cfg.size, cfg.size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ModelInputError(
                "discriminator.bad_input",
                f"expected images of shape (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}",
            )
        out = self.conv_body(images)
        out = self.final_conv(self.minibatch_stddev(out))
        return self.final_linear(out.flatten(1))


def load_discriminator_weights(
    model: StyleGAN2Discriminator,
    path: str | Path,
    *,
    key: str = "params",
    strict: bool = True,
    prefix: str = "",
) -> LoadReport:
    """Load a basicsr StyleGAN2Discriminator file (e.g. GFPGANv1_net_d.pth, key ``params``).

    With ``in_channels != 3`` the file's 3-channel first conv cannot fit; it is reported as
    tolerated and the new first conv keeps its fresh initialisation (the paper's dual D does the
    same). Any other difference raises `ModelWeightsError` in strict mode.
    """
    state = read_weight_file(path, key, prefix)
    tolerate = (FIRST_CONV_WEIGHT,) if model.config.in_channels != 3 else ()
    return load_state_dict_checked(
        model, state, source=f"{path}[{key!r}]{prefix}", strict=strict, tolerate_shape_mismatch=tolerate
    )
