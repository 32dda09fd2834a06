"""Super-resolution network: GFPGAN-v1-clean style U-Net + SFT-modulated StyleGAN2 decoder.

The paper's SR takes the RGB volume render (224²), upsamples it bilinearly (align_corners=True) to
512² and restores it with GFPGANv1Clean (out 512, channel multiplier 2, one latent per style layer,
latent input, SFT on half of the channels). Structure:

- **Encoder** (U-Net down path): ``conv_body_first`` (1x1) then ``conv_body_down`` residual blocks
  halving the resolution down to 4x4, then ``final_conv``. ``final_linear`` maps the 4x4 feature
  to one 512-d latent per style layer (``num_latent = 2 log2(out) - 2``); the latents are used
  directly (the ``style_mlp`` mapping network exists for weight compatibility but is unused).
- **Decoder path** (U-Net up path): ``conv_body_up`` residual blocks, each fed the feature plus the
  encoder skip of the same size; per scale, ``condition_scale`` / ``condition_shift`` (conv, leaky
  ReLU, conv) give the SFT maps and ``toRGB`` an auxiliary RGB image (GFPGAN's pyramid loss).
- **StyleGAN2 generator** (``stylegan_decoder``): constant 4x4 input, modulated convs with
  demodulation and per-pixel noise, bilinear upsampling, skip-RGB outputs; after the first conv
  of every scale, the second half of the channels becomes ``x * scale + shift`` (``sft_half``).

Parameter names and shapes follow the public GFPGAN v1.3 release, so its ``params_ema`` can be
loaded with `load_gfpgan_weights`.

**Deliberate difference (``residual``, the tiny profile only):** the output is the upsampled input plus
a learned gain times the generator's image, ``I_sr = up(I_lr) + g * G(up(I_lr))`` with ``g`` one
scalar initialised to 0 (ReZero-style); ``up(I_lr)`` is replaced by the render's detail image where the
renderer makes one (``base``, ``RendererConfig.surface_colour_resolution``). A freshly initialised or briefly trained SR then starts at
the upsampled render and can only move away from it where its losses gain: measured on the tiny
checkpoint trained without it, the plain SR lost 1.4 dB to the low-res render it was given and
shifted hair colours (issue 13). The paper profile keeps ``residual=False`` so GFPGAN's released
weights mean what they meant.

**The tiny profile does not run the generator** (``generator=False``): its output is the render's
detail image itself. Measured on the shipped tiny checkpoint (trained residual gain 0.0098), the
generator's correction cost what ``make bench-quality`` reads (the same checkpoint, generator off
against on): served reconstruction 27.20 against 26.94 dB, reenactment 25.45 against 25.11
(copying the source 24.26), id_dist 0.415 against 0.45, mouth_corr 0.55 against 0.47, yaw_corr 0.96
against 0.97. A network this narrow (1/16 of GFPGAN's width) trained for minutes on synthetic heads
adds texture the detail image does not need; stage 2 (the SR's GAN training) then has nothing to
train in this profile. The weights stay, so ``generator=True`` brings it back for an experiment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.model.constants import LEAKY_SLOPE
from shared.model.errors import ConfigError, ModelInputError
from shared.model.stylegan2_layers import (
    ConstantInput,
    LoadReport,
    ModelWeightsError,
    NormStyleCode,
    StyleConv,
    ToRGB,
    UNetResBlock,
    inference_inplace,
    load_state_dict_checked,
    read_weight_file,
    stylegan_channels,
)

__all__ = [
    "LoadReport",
    "ConfigError",
    "ModelInputError",
    "ModelWeightsError",
    "SuperResConfig",
    "SuperResolution",
    "StyleGAN2GeneratorSFT",
    "load_gfpgan_weights",
    "paper_superres_config",
    "tiny_superres_config",
]

# GFPGAN's mapping network depth; kept so that the released weight file's keys all exist.
NUM_MAPPING_LAYERS = 8


@dataclass
class SuperResConfig:
    in_size: int  # low-res render size (paper 224, tiny e.g. 32)
    out_size: int  # paper 512, tiny e.g. 128
    num_style_feat: int = 512
    channel_multiplier: float = 2
    narrow: float = 1.0  # GFPGAN's width factor
    sft_half: bool = True
    residual: bool = False  # output = upsampled input + gain * generator image (gain starts at 0)
    # False: the SR's output is its starting image alone (the render's detail image, else the
    # bilinearly upsampled render); the generator is not run. Its weights stay in the network (old
    # checkpoints load strictly), unused. The tiny profile's choice, by measurement (module docstring).
    generator: bool = True

    @property
    def log_size(self) -> int:
        return int(math.log2(self.out_size))

    @property
    def num_latent(self) -> int:
        """Latents consumed by the generator: 2 per scale from 4² up, one per conv / to-RGB."""
        return 2 * self.log_size - 2

    @property
    def num_noise_layers(self) -> int:
        return 2 * (self.log_size - 2) + 1

    def decoder_channels(self) -> dict[int, int]:
        return stylegan_channels(self.channel_multiplier, self.narrow)

    def unet_channels(self) -> dict[int, int]:
        # GFPGAN's U-Net is half as wide as the StyleGAN2 decoder it conditions.
        return stylegan_channels(self.channel_multiplier, self.narrow * 0.5)

    def validate(self) -> None:
        if self.out_size < 8 or self.out_size > 1024 or 2**self.log_size != self.out_size:
            raise ConfigError(
                "superres.bad_config", f"out_size must be a power of two in [8, 1024], got {self.out_size}"
            )
        if self.in_size < 1 or self.in_size > self.out_size:
            raise ConfigError(
                "superres.bad_config", f"in_size must be in [1, out_size={self.out_size}], got {self.in_size}"
            )
        if self.num_style_feat < 1:
            raise ConfigError(
                "superres.bad_config", f"num_style_feat must be >= 1, got {self.num_style_feat}"
            )
        decoder, unet = self.decoder_channels(), self.unet_channels()
        for res in (2**i for i in range(2, self.log_size + 1)):
            if unet[res] < 1:
                raise ConfigError(
                    "superres.bad_config", f"narrow={self.narrow} leaves no U-Net channels at {res}²"
                )
            # SFT maps are U-Net wide; they must cover half the decoder channels (sft_half) or all.
            if decoder[res] != 2 * unet[res]:
                raise ConfigError(
                    "superres.bad_config",
                    f"at {res}² the decoder has {decoder[res]} channels and the U-Net {unet[res]}; SFT needs "
                    "exactly twice as many decoder channels: choose narrow/channel_multiplier giving even widths",
                )


def tiny_superres_config() -> SuperResConfig:
    """32² -> 128², the same architecture small enough for 2 CPU cores.

    narrow 1/16 with channel multiplier 2 keeps the high-resolution layers as wide as narrow 1/8
    would (decoder 32 channels at 64², 16 at 128²) and halves the 4²..32² ones (32 instead of 64),
    which only need to encode a 32² input: ~0.76 GFLOP per frame instead of ~1.15.
    """
    return SuperResConfig(in_size=32, out_size=128, num_style_feat=64, channel_multiplier=2, narrow=0.0625)


def paper_superres_config() -> SuperResConfig:
    """GFPGANv1Clean as used by the paper: 224² render -> 512², channel multiplier 2, sft_half."""
    return SuperResConfig(in_size=224, out_size=512, num_style_feat=512, channel_multiplier=2, narrow=1.0)


class StyleGAN2GeneratorSFT(nn.Module):
    """StyleGAN2 synthesis network whose features are modulated by spatial SFT maps."""

    def __init__(self, config: SuperResConfig) -> None:
        super().__init__()
        self.sft_half = config.sft_half
        self.num_latent = config.num_latent
        self.num_noise_layers = config.num_noise_layers
        style = config.num_style_feat
        channels = config.decoder_channels()

        mapping: list[nn.Module] = [NormStyleCode()]
        for _ in range(NUM_MAPPING_LAYERS):
            linear = nn.Linear(style, style)
            nn.init.kaiming_normal_(linear.weight, a=LEAKY_SLOPE, mode="fan_in", nonlinearity="leaky_relu")
            nn.init.zeros_(linear.bias)
            mapping += [linear, nn.LeakyReLU(LEAKY_SLOPE)]
        # Unused here (the encoder produces latents directly); present so released weights load.
        self.style_mlp = nn.Sequential(*mapping)

        self.constant_input = ConstantInput(channels[4], size=4)
        self.style_conv1 = StyleConv(channels[4], channels[4], 3, style)
        self.to_rgb1 = ToRGB(channels[4], style, upsample=False)

        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_channels = channels[4]
        for level in range(3, config.log_size + 1):
            out_channels = channels[2**level]
            self.style_convs.append(StyleConv(in_channels, out_channels, 3, style, sample_mode="upsample"))
            self.style_convs.append(StyleConv(out_channels, out_channels, 3, style))
            self.to_rgbs.append(ToRGB(out_channels, style, upsample=True))
            in_channels = out_channels

        # Fixed noise used in deterministic mode (GFPGAN's randomize_noise=False). Layer 0 is the
        # 4² conv, then two layers per scale.
        self.noises = nn.Module()
        for index in range(self.num_noise_layers):
            res = 2 ** ((index + 5) // 2)
            self.noises.register_buffer(f"noise{index}", torch.randn(1, 1, res, res))

    def noise_shapes(self) -> list[tuple[int, int]]:
        return [tuple(getattr(self.noises, f"noise{i}").shape[-2:]) for i in range(self.num_noise_layers)]

    def make_noise(
        self,
        batch: int,
        *,
        like: Tensor,
        generator: torch.Generator | None,
        deterministic: bool,
    ) -> list[Tensor]:
        if deterministic:
            return [getattr(self.noises, f"noise{i}").to(like.dtype) for i in range(self.num_noise_layers)]
        return [
            torch.randn(batch, 1, h, w, generator=generator, device=like.device, dtype=like.dtype)
            for h, w in self.noise_shapes()
        ]

    def _apply_sft(self, out: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        modulated = out[:, out.shape[1] // 2 :] if self.sft_half else out
        if inference_inplace():
            # ``out`` is the fresh output of a style conv: update (half of) it in place, one pass.
            torch.addcmul(shift, modulated, scale, out=modulated)
            return out
        if not self.sft_half:
            return out * scale + shift
        return torch.cat([out[:, : out.shape[1] // 2], modulated * scale + shift], dim=1)

    def forward(
        self, latents: Tensor, conditions: list[tuple[Tensor, Tensor]], noise: list[Tensor]
    ) -> Tensor:
        """latents (B, num_latent, style); conditions: (scale, shift) per scale from 8² up."""
        # channels_last from the start: every later layer keeps its input's memory format (see
        # SuperResolution.forward_with_pyramid).
        out = self.constant_input(latents.shape[0]).contiguous(memory_format=torch.channels_last)
        out = self.style_conv1(out, latents[:, 0], noise[0])
        skip = self.to_rgb1(out, latents[:, 1])
        latent_index = 1
        for level, to_rgb in enumerate(self.to_rgbs):
            conv_up, conv = self.style_convs[2 * level], self.style_convs[2 * level + 1]
            out = conv_up(out, latents[:, latent_index], noise[2 * level + 1])
            if level < len(conditions):
                out = self._apply_sft(out, *conditions[level])
            out = conv(out, latents[:, latent_index + 1], noise[2 * level + 2])
            skip = to_rgb(out, latents[:, latent_index + 2], skip)
            latent_index += 2
        return skip


def _sft_branch(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1),
        nn.LeakyReLU(LEAKY_SLOPE),
        nn.Conv2d(channels, out_channels, 3, 1, 1),
    )


class SuperResolution(nn.Module):
    """Low-res render in [-1, 1] -> high-res image (unclamped, ~[-1, 1])."""

    def __init__(self, config: SuperResConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        log_size = config.log_size
        unet = config.unet_channels()
        style = config.num_style_feat

        self.conv_body_first = nn.Conv2d(3, unet[config.out_size], 1)
        self.conv_body_down = nn.ModuleList()
        in_channels = unet[config.out_size]
        for level in range(log_size, 2, -1):
            self.conv_body_down.append(UNetResBlock(in_channels, unet[2 ** (level - 1)], "down"))
            in_channels = unet[2 ** (level - 1)]
        self.final_conv = nn.Conv2d(in_channels, unet[4], 3, 1, 1)

        self.conv_body_up = nn.ModuleList()
        self.toRGB = nn.ModuleList()  # noqa: N815 - GFPGAN's parameter name
        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        in_channels = unet[4]
        for level in range(3, log_size + 1):
            out_channels = unet[2**level]
            self.conv_body_up.append(UNetResBlock(in_channels, out_channels, "up"))
            self.toRGB.append(nn.Conv2d(out_channels, 3, 1))
            sft_channels = out_channels if config.sft_half else 2 * out_channels
            self.condition_scale.append(_sft_branch(out_channels, sft_channels))
            self.condition_shift.append(_sft_branch(out_channels, sft_channels))
            in_channels = out_channels

        self.final_linear = nn.Linear(unet[4] * 4 * 4, config.num_latent * style)
        self.stylegan_decoder = StyleGAN2GeneratorSFT(config)
        if config.residual:
            # Zero: the untrained SR is the identity on the upsampled render (see the module docstring).
            self.residual_gain = nn.Parameter(torch.zeros(()))

    def _check_input(self, low_res: Tensor) -> None:
        size = self.config.in_size
        if low_res.ndim != 4 or low_res.shape[1] != 3 or tuple(low_res.shape[2:]) != (size, size):
            raise ModelInputError(
                "superres.bad_input",
                f"expected low_res of shape (B, 3, {size}, {size}), got {tuple(low_res.shape)}",
            )
        if not low_res.is_floating_point():
            raise ModelInputError(
                "superres.bad_input", f"low_res must be floating point, got {low_res.dtype}"
            )

    def upsample_input(self, low_res: Tensor) -> Tensor:
        """The SR's actual input: the render bilinearly resized to out_size (align_corners=True)."""
        out = self.config.out_size
        if low_res.shape[-1] == out:
            return low_res
        return F.interpolate(low_res, size=(out, out), mode="bilinear", align_corners=True)

    def forward_with_pyramid(
        self,
        low_res: Tensor,
        *,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
        return_pyramid: bool = True,
        base: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Like `forward`, also returning the U-Net's per-scale RGB images (8² .. out²)."""
        self._check_input(low_res)
        if base is not None and tuple(base.shape) != (low_res.shape[0], 3, *(self.config.out_size,) * 2):
            raise ModelInputError(
                "superres.bad_input",
                f"base must be (B, 3, {self.config.out_size}, {self.config.out_size}), got {tuple(base.shape)}",
            )
        # channels_last (NHWC) throughout: oneDNN convolutions skip their layout reorders (10-25%
        # faster per conv on CPU) and bilinear resampling is 5x faster than on NCHW (measured,
        # one core, batch 8 at 256²-512²). Convs, resampling and elementwise ops keep the format.
        x = (self.upsample_input(low_res) if base is None else base.to(low_res.dtype)).contiguous(
            memory_format=torch.channels_last
        )
        if not self.config.generator:
            return x.contiguous(), []
        inplace = inference_inplace()

        feat = F.leaky_relu(self.conv_body_first(x), LEAKY_SLOPE, inplace=inplace)
        skips: list[Tensor] = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = F.leaky_relu(self.final_conv(feat), LEAKY_SLOPE, inplace=inplace)

        # flatten follows the logical (C, H, W) order whatever the memory format, as the weights expect.
        latents = self.final_linear(feat.flatten(1)).view(x.shape[0], self.config.num_latent, -1)

        conditions: list[tuple[Tensor, Tensor]] = []
        pyramid: list[Tensor] = []
        for index, block in enumerate(self.conv_body_up):
            # The deepest skip (4²) meets the bottleneck first.
            feat = block(feat + skips[-1 - index])
            conditions.append((self.condition_scale[index](feat), self.condition_shift[index](feat)))
            if return_pyramid:
                pyramid.append(self.toRGB[index](feat).contiguous())

        noise = self.stylegan_decoder.make_noise(
            x.shape[0], like=x, generator=generator, deterministic=deterministic
        )
        image = self.stylegan_decoder(latents, conditions, noise)
        if self.config.residual:
            image = x + self.residual_gain * image
        return image.contiguous(), pyramid

    def forward(
        self,
        low_res: Tensor,
        *,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
        base: Tensor | None = None,
    ) -> Tensor:
        """low_res (B, 3, in, in) in [-1, 1] -> (B, 3, out, out).

        ``deterministic``: use the stored noise buffers, so repeated calls are identical. Otherwise
        fresh per-pixel noise is drawn (from ``generator`` when given), as the paper does. ``base``
        (B, 3, out, out): the image the SR starts from instead of the bilinearly upsampled input
        (the render with its colour re-read at out², `RenderOutput.detail`).
        """
        image, _ = self.forward_with_pyramid(
            low_res, generator=generator, deterministic=deterministic, return_pyramid=False, base=base
        )
        return image


def load_gfpgan_weights(
    model: SuperResolution,
    path: str | Path,
    *,
    key: str = "params_ema",
    strict: bool = True,
    prefix: str = "",
) -> LoadReport:
    """Load a GFPGANv1Clean weight file (e.g. GFPGANv1.3.pth) into ``model``.

    ``key``: the file's top-level entry holding the state dict (GFPGAN releases: ``params_ema``).
    ``prefix``: only entries starting with it are used, with it stripped (e.g.
    ``"neural_layers.gfpgan."`` inside a full-model checkpoint). Strict: raises `ModelWeightsError`
    (code ``weights.mismatch``, report attached) unless every key and shape matches.
    """
    state = read_weight_file(path, key, prefix)
    return load_state_dict_checked(model, state, source=f"{path}[{key!r}]{prefix}", strict=strict)


def _benchmark(argv: list[str] | None = None) -> dict[str, object]:
    """Best-of-N CPU timing of the SR profiles (`python -m shared.model.superres [--paper]`)."""
    import argparse
    import json
    import os
    import time

    parser = argparse.ArgumentParser(description=_benchmark.__doc__)
    parser.add_argument("--paper", action="store_true", help="also time the paper profile (batch 1, slow)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    def time_profile(config: SuperResConfig, batch: int, repeats: int) -> dict[str, object]:
        torch.manual_seed(0)
        model = SuperResolution(config).eval()
        low_res = torch.rand(batch, 3, config.in_size, config.in_size) * 2 - 1
        timings, cpu_times = [], []
        with torch.inference_mode():
            model(low_res)  # warm-up (allocator, oneDNN kernel selection)
            for _ in range(repeats):
                start, cpu_start = time.perf_counter(), time.process_time()
                model(low_res)
                timings.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
        timings.sort()
        cpu_times.sort()
        return {
            "config": f"{config.in_size}->{config.out_size} narrow={config.narrow} cm={config.channel_multiplier}",
            "params": sum(p.numel() for p in model.parameters()),
            "batch": batch,
            "best_ms_per_frame": round(1000 * timings[0] / batch, 2),
            "median_ms_per_frame": round(1000 * timings[len(timings) // 2] / batch, 2),
            # CPU seconds of all threads: less sensitive than wall time to other load on shared cores.
            "best_cpu_ms_per_frame": round(1000 * cpu_times[0] / batch, 2),
        }

    result: dict[str, object] = {
        "threads": args.threads,
        "load_average_1min": os.getloadavg()[0],  # other work on the machine skews wall times
        "tiny": time_profile(tiny_superres_config(), 8, args.repeats),
    }
    if args.paper:
        result["paper"] = time_profile(paper_superres_config(), 1, max(2, args.repeats // 5))
    else:
        result["paper_params"] = sum(p.numel() for p in SuperResolution(paper_superres_config()).parameters())
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    _benchmark()
