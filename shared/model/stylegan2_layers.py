"""StyleGAN2 building blocks shared by the super-resolution network and the discriminator.

Everything here is plain PyTorch ("clean": no custom CUDA kernels), so the same code runs on CPU,
on GPUs and under Triton. Parameter names and shapes follow the public GFPGAN v1.3 "clean" generator
and the basicsr StyleGAN2 discriminator, so their released weight files load by name; the
implementation itself is written from the published architecture descriptions.

Also here: the checked state-dict loader (`load_state_dict_checked`) and its `LoadReport`, used for
both networks' weight files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.model.constants import LEAKY_SLOPE
from shared.model.errors import CheckpointError

# Gain that keeps the activation variance of a leaky ReLU at ~1 (StyleGAN2's "fused lrelu" gain).
LEAKY_GAIN = math.sqrt(2.0)

SampleMode = Literal["upsample", "downsample"] | None


# ---------------------------------------------------------------------------------------------
# Errors and the checked weight loader
# ---------------------------------------------------------------------------------------------


class ModelWeightsError(CheckpointError):
    """A weight file cannot be used for a network; ``report`` says key by key why (when known)."""

    def __init__(self, code: str, message: str, report: LoadReport | None = None) -> None:
        super().__init__(code, message)
        self.report = report


@dataclass
class ShapeMismatch:
    name: str
    expected: tuple[int, ...]
    found: tuple[int, ...]


@dataclass
class LoadReport:
    """What happened when a state dict was matched against a module, key by key."""

    source: str
    network_tensors: int = 0  # entries of the module's state dict
    matching: int = 0  # of those, present in the file with the right shape
    loaded: list[str] = field(default_factory=list)  # actually copied (empty after a strict failure)
    missing: list[str] = field(default_factory=list)  # in the module, absent from the file
    unexpected: list[str] = field(default_factory=list)  # in the file, absent from the module
    shape_mismatched: list[ShapeMismatch] = field(default_factory=list)
    # Keys whose mismatch the caller declared acceptable (they keep their fresh initialisation).
    tolerated: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatched)

    def summary(self, limit: int = 8) -> str:
        def head(items: Sequence[str]) -> str:
            shown = ", ".join(items[:limit])
            return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")

        lines = [
            f"{self.source}: {self.matching} of {self.network_tensors} network tensors match, "
            f"{len(self.loaded)} loaded"
        ]
        if self.missing:
            lines.append(f"  missing from file ({len(self.missing)}): {head(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in file ({len(self.unexpected)}): {head(self.unexpected)}")
        if self.shape_mismatched:
            described = [
                f"{m.name} model{list(m.expected)} file{list(m.found)}" for m in self.shape_mismatched
            ]
            lines.append(f"  shape mismatched ({len(described)}): {head(described)}")
        if self.tolerated:
            lines.append(f"  tolerated, kept fresh ({len(self.tolerated)}): {head(self.tolerated)}")
        return "\n".join(lines)


def read_weight_file(path: str | Path, key: str | None, prefix: str = "") -> dict[str, Tensor]:
    """Tensors of a torch weight file, optionally under a top-level ``key`` and a name ``prefix``.

    Only tensors are unpickled (``weights_only``), so a weight file cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelWeightsError("weights.file_not_found", f"weight file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt files
        raise ModelWeightsError("weights.unreadable", f"cannot read weight file {path}: {exc}") from exc
    if not isinstance(blob, Mapping):
        raise ModelWeightsError("weights.bad_format", f"{path} holds a {type(blob).__name__}, not a dict")
    if key is not None:
        if key not in blob:
            available = sorted(str(k) for k in blob.keys())[:10]
            raise ModelWeightsError(
                "weights.key_not_found", f"{path} has no top-level key {key!r}; it has {available}"
            )
        blob = blob[key]
        if not isinstance(blob, Mapping):
            raise ModelWeightsError("weights.bad_format", f"{path}[{key!r}] is not a state dict")
    state: dict[str, Tensor] = {}
    for name, value in blob.items():
        if not isinstance(name, str) or not name.startswith(prefix):
            continue
        if not isinstance(value, Tensor):
            raise ModelWeightsError("weights.bad_format", f"{path}: entry {name!r} is not a tensor")
        state[name[len(prefix) :]] = value
    if not state:
        raise ModelWeightsError(
            "weights.empty", f"{path}: no tensors under key {key!r} and prefix {prefix!r}"
        )
    return state


def load_state_dict_checked(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str,
    strict: bool = True,
    tolerate_shape_mismatch: Iterable[str] = (),
) -> LoadReport:
    """Copy matching tensors of ``state`` into ``module`` and report every difference.

    Strict: any missing, unexpected or shape-mismatched key raises `ModelWeightsError` (code
    ``weights.mismatch``) and the module is left untouched. Not strict: every tensor that matches
    by name and shape is copied; the rest keep their current values and are listed in the report.
    ``tolerate_shape_mismatch`` names keys whose shape may legitimately differ (e.g. a new input
    conv); they keep their fresh values in both modes.
    """
    tolerated_names = set(tolerate_shape_mismatch)
    own = module.state_dict()
    report = LoadReport(source=source, network_tensors=len(own))
    to_copy: dict[str, Tensor] = {}
    for name, target in own.items():
        if name not in state:
            report.missing.append(name)
            continue
        incoming = state[name]
        if tuple(incoming.shape) != tuple(target.shape):
            if name in tolerated_names:
                report.tolerated.append(name)
            else:
                report.shape_mismatched.append(
                    ShapeMismatch(name, tuple(target.shape), tuple(incoming.shape))
                )
            continue
        to_copy[name] = incoming
    report.unexpected = sorted(k for k in state if k not in own)
    report.matching = len(to_copy)
    if strict and not report.ok:
        raise ModelWeightsError(
            "weights.mismatch", "weight file does not match the network:\n" + report.summary(), report
        )
    with torch.no_grad():
        for name, incoming in to_copy.items():
            own[name].copy_(incoming.to(dtype=own[name].dtype))
    report.loaded = sorted(to_copy)
    return report


# ---------------------------------------------------------------------------------------------
# Generator blocks (GFPGAN "clean" StyleGAN2)
# ---------------------------------------------------------------------------------------------


class NormStyleCode(nn.Module):
    """Pixel-norm of a style vector (unit RMS), the first layer of the mapping MLP."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


def inference_inplace() -> bool:
    """Whether layers may update their own fresh intermediate tensors in place: only without
    autograd (in-place updates would overwrite values the backward pass needs). Same values
    either way; in place saves a pass and an allocation per op on the SR's largest tensors."""
    return not torch.is_grad_enabled()


def resample2x(x: Tensor, mode: SampleMode) -> Tensor:
    if mode is None:
        return x
    factor = 2.0 if mode == "upsample" else 0.5
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class ModulatedConv2d(nn.Module):
    """Conv whose per-input-channel scale comes from a style vector, with optional demodulation.

    Stored as StyleGAN2 stores it (a (1, out, in, k, k) weight with unit-variance init and a
    ``modulation`` affine layer whose bias starts at 1). Computed as "modulate the input, convolve
    with the shared weight, demodulate the output" instead of building a weight per sample: the
    result is the same, but one ordinary batched conv is much faster on CPUs than a grouped conv
    with B groups.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_style_feat: int,
        *,
        demodulate: bool = True,
        sample_mode: SampleMode = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.sample_mode = sample_mode
        self.eps = eps
        self.modulation = nn.Linear(num_style_feat, in_channels, bias=True)
        nn.init.kaiming_normal_(self.modulation.weight, a=0.0, mode="fan_in", nonlinearity="linear")
        nn.init.constant_(self.modulation.bias, 1.0)  # styles start as the identity scale
        self.weight = nn.Parameter(
            torch.randn(1, out_channels, in_channels, kernel_size, kernel_size)
            / math.sqrt(in_channels * kernel_size**2)
        )

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        out, demod = self.modulated(x, style)
        return out if demod is None else out * demod[:, :, None, None]

    def modulated(self, x: Tensor, style: Tensor) -> tuple[Tensor, Tensor | None]:
        """The conv of the style-scaled input and the demodulation factor (B, out) still to be
        applied to it (None without demodulation), so callers can fuse it into their epilogue."""
        scale = self.modulation(style)  # (B, in)
        weight = self.weight[0]  # (out, in, k, k)
        # Scaling channels commutes with bilinear resampling; scaling first is cheaper when upsampling.
        x = resample2x(x * scale[:, :, None, None], self.sample_mode)
        out = F.conv2d(x, weight, padding=self.kernel_size // 2)
        if not self.demodulate:
            return out, None
        # ||W * s||^2 over (in, k, k) for every output channel = s^2 @ sum_k(W^2)^T.
        energy = scale.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t()  # (B, out)
        return out, torch.rsqrt(energy + self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"demodulate={self.demodulate}, sample_mode={self.sample_mode}"
        )


class StyleConv(nn.Module):
    """Modulated conv + per-pixel noise (learned strength ``weight``) + bias + leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_style_feat: int,
        *,
        demodulate: bool = True,
        sample_mode: SampleMode = None,
    ) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(
            in_channels,
            out_channels,
            kernel_size,
            num_style_feat,
            demodulate=demodulate,
            sample_mode=sample_mode,
        )
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor, style: Tensor, noise: Tensor) -> Tensor:
        # The sqrt(2) gain sits before the activation in the "clean" layout (the CUDA version fused
        # it into the activation); keeping it here keeps released weights meaningful.
        out, demod = self.modulated_conv.modulated(x, style)
        if demod is None:
            demod = out.new_ones(out.shape[:2])
        gain = (demod * LEAKY_GAIN)[:, :, None, None]
        if inference_inplace():
            # Noise and bias do not depend on the conv: (1 or B, C, H, W), not B frames' worth,
            # laid out like ``out`` (mixed layouts make the fused op several times slower).
            layout = (
                torch.channels_last
                if out.is_contiguous(memory_format=torch.channels_last)
                else torch.contiguous_format
            )
            offset = torch.empty(
                (noise.shape[0], *out.shape[1:]), dtype=out.dtype, device=out.device, memory_format=layout
            )
            torch.addcmul(self.bias, noise, self.weight, out=offset)
            # out * gain + offset, then the activation, both in place: two passes over the largest
            # tensors of the SR instead of five, no new allocations, and out keeps its memory format.
            torch.addcmul(offset, out, gain, out=out)
            return F.leaky_relu_(out, LEAKY_SLOPE)
        # Scaled output first, so the sum keeps the conv output's memory format (channels_last).
        return F.leaky_relu(out * gain + (self.weight * noise + self.bias), LEAKY_SLOPE)


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB, added to the upsampled previous RGB skip."""

    def __init__(self, in_channels: int, num_style_feat: int, *, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            out = out + (resample2x(skip, "upsample") if self.upsample else skip)
        return out


class ConstantInput(nn.Module):
    """The learned 4x4 start tensor of the StyleGAN2 synthesis network."""

    def __init__(self, num_channel: int, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, num_channel, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.weight.expand(batch, -1, -1, -1)


class UNetResBlock(nn.Module):
    """GFPGAN-clean residual block: conv, bilinear resample x2 or x0.5, conv, plus a 1x1 skip."""

    def __init__(self, in_channels: int, out_channels: int, mode: Literal["down", "up"]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.sample_mode: SampleMode = "downsample" if mode == "down" else "upsample"

    def forward(self, x: Tensor) -> Tensor:
        inplace = inference_inplace()
        out = F.leaky_relu(self.conv1(x), LEAKY_SLOPE, inplace=inplace)
        out = resample2x(out, self.sample_mode)
        out = F.leaky_relu(self.conv2(out), LEAKY_SLOPE, inplace=inplace)
        skip = self.skip(resample2x(x, self.sample_mode))
        return out.add_(skip) if inplace else out + skip


def stylegan_channels(channel_multiplier: float, narrow: float) -> dict[int, int]:
    """Feature width per resolution, StyleGAN2's table (512 up to 32², then halving)."""
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    return {
        res: int(width * (channel_multiplier if res >= 64 else 1) * narrow) for res, width in base.items()
    }


# ---------------------------------------------------------------------------------------------
# Discriminator blocks (basicsr StyleGAN2Discriminator layout, equalised learning rate)
# ---------------------------------------------------------------------------------------------


class EqualConv2d(nn.Module):
    """Conv with unit-variance weights scaled by 1/sqrt(fan_in) at run time (equalised lr)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate, optionally followed by a biased scaled leaky ReLU."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        lr_mul: float = 1.0,
        activate: bool = False,
    ) -> None:
        super().__init__()
        self.lr_mul = lr_mul
        self.activate = activate
        self.scale = lr_mul / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight * self.scale)
        out = out + self.bias * self.lr_mul
        if self.activate:
            out = F.leaky_relu(out, LEAKY_SLOPE) * LEAKY_GAIN
        return out


class BiasedLeakyReLU(nn.Module):
    """Per-channel bias, leaky ReLU, sqrt(2) gain (StyleGAN2's fused activation, unfused)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x + self.bias[None, :, None, None], LEAKY_SLOPE) * LEAKY_GAIN


class ScaledLeakyReLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, LEAKY_SLOPE) * LEAKY_GAIN


class BlurForDownsample(nn.Module):
    """Separable FIR low-pass before a stride-2 conv (anti-aliasing), padded for ``kernel_size``.

    The filter is a constant, not state: it is rebuilt from ``resample_kernel`` and never stored.
    """

    def __init__(self, resample_kernel: Sequence[int], kernel_size: int, factor: int = 2) -> None:
        super().__init__()
        taps = torch.tensor(list(resample_kernel), dtype=torch.float32)
        fir = taps[:, None] * taps[None, :]
        self._fir = fir / fir.sum()
        total = (len(taps) - factor) + (kernel_size - 1)
        self.pad = ((total + 1) // 2, total // 2)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        before, after = self.pad
        x = F.pad(x, (before, after, before, after))
        fir = self._fir.to(device=x.device, dtype=x.dtype).flip(0, 1)
        return F.conv2d(x, fir.expand(channels, 1, -1, -1), groups=channels)


class DiscConvLayer(nn.Sequential):
    """[blur] -> equalised conv -> [bias + scaled leaky ReLU]; indices match basicsr's ConvLayer."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        downsample: bool = False,
        resample_kernel: Sequence[int] = (1, 3, 3, 1),
        bias: bool = True,
        activate: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        if downsample:
            layers.append(BlurForDownsample(resample_kernel, kernel_size))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(
            EqualConv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                bias=bias and not activate,
            )
        )
        if activate:
            layers.append(BiasedLeakyReLU(out_channels) if bias else ScaledLeakyReLU())
        super().__init__(*layers)


class DiscResBlock(nn.Module):
    """Discriminator residual block: two 3x3 convs (second one downsamples) + blurred 1x1 skip."""

    def __init__(
        self, in_channels: int, out_channels: int, resample_kernel: Sequence[int] = (1, 3, 3, 1)
    ) -> None:
        super().__init__()
        self.conv1 = DiscConvLayer(in_channels, in_channels, 3)
        self.conv2 = DiscConvLayer(
            in_channels, out_channels, 3, downsample=True, resample_kernel=resample_kernel
        )
        self.skip = DiscConvLayer(
            in_channels,
            out_channels,
            1,
            downsample=True,
            resample_kernel=resample_kernel,
            bias=False,
            activate=False,
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        # Dividing by sqrt(2) keeps the sum of two unit-variance paths at unit variance.
        return (out + self.skip(x)) / LEAKY_GAIN
