"""LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric").

Written here because the ``lpips`` package needs torchvision, which does not import beside the
pinned torch (docs/training.md). The formulation, for images x, y in [-1, 1]:

    d(x, y) = Σ_l mean_{h,w} ‖ w_l ⊙ (ŷ_l − x̂_l)_{h,w} ‖²

where x̂_l are the backbone activations of layer l (after the input "scaling layer"), normalised
to unit length along channels, and w_l ≥ 0 a learned per-channel weight (a 1×1 convolution to
one channel). Backbones: AlexNet (relu1..relu5; what the paper's stage-1 training uses) and
VGG-16 (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).

Weights come from two local files, nothing is downloaded:

- the backbone: a torchvision ImageNet state dict (``alexnet`` or ``vgg16``; only the
  ``features.N.*`` keys are read, the classifier is ignored);
- the lin layers: the lpips package's v0.1 weight file (``alex.pth`` / ``vgg.pth``) with keys
  ``lin{l}.model.1.weight`` of shape (1, C_l, 1, 1).

A missing file, a missing key or a wrong shape raises ``WeightsError`` with a code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.training.errors import WeightsError

# The lpips package's v0.1 scaling layer: (x − shift) / scale on [-1, 1] inputs, i.e. ImageNet
# normalisation re-expressed for the [-1, 1] range.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NETS = ("alex", "vgg")

# torchvision ``features`` layouts. AlexNet: (out, kernel, stride, padding) convs, "M" = 3×3/2
# max-pool. VGG-16: conv widths (3×3, padding 1), "M" = 2×2/2 max-pool.
_ALEX_LAYOUT: tuple[tuple[int, int, int, int] | str, ...] = (
    (64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1),
)  # fmt: skip
_VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip


def load_state_file(path: str | os.PathLike[str], what: str) -> dict[str, Tensor]:
    """A ``torch.save``d state dict from a local file (``{"state_dict": ...}`` wrappers unwrapped)."""
    if not Path(path).is_file():
        raise WeightsError("weights.missing", f"no {what} weights file at {path}")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or truncated files
        raise WeightsError("weights.unreadable", f"{what} weights {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError("weights.unreadable", f"{what} weights {path}: not a state dict of tensors")
    return state


def match_state(
    module: nn.Module, state: dict[str, Tensor], path: str | os.PathLike[str], what: str, prefix: str = ""
) -> None:
    """Load ``state[prefix + key]`` into every parameter / buffer of ``module``; keys of the file
    that the module does not have are ignored (classifier heads, ``num_batches_tracked``), keys the
    module needs must all be there with the same shape."""
    wanted = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in wanted if prefix + k not in state]
    if missing:
        raise WeightsError(
            "weights.mismatch",
            f"{what} weights {path}: {len(missing)} keys missing, e.g. {[prefix + k for k in missing[:4]]}",
        )
    wrong = [
        f"{prefix + k} {tuple(state[prefix + k].shape)} != {tuple(v.shape)}"
        for k, v in wanted.items()
        if state[prefix + k].shape != v.shape
    ]
    if wrong:
        raise WeightsError("weights.mismatch", f"{what} weights {path}: wrong shapes: {wrong[:4]}")
    module.load_state_dict({k: state[prefix + k].float() for k in wanted}, strict=False)


class _TappedFeatures(nn.Module):
    """A torchvision ``features`` trunk returning the activations at the layer indices ``taps``."""

    features: nn.Sequential
    taps: list[int]

    def forward(self, x: Tensor) -> list[Tensor]:
        out: list[Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


class AlexNetFeatures(_TappedFeatures):
    """torchvision ``alexnet().features`` (up to relu5); taps after each ReLU."""

    channels = (64, 192, 384, 256, 256)
    min_size = 31  # conv1 (11/4) and two 3/2 max-pools need at least 31 pixels

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for item in _ALEX_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(3, 2))
            else:
                assert isinstance(item, tuple)
                out, k, s, p = item
                layers += [nn.Conv2d(in_ch, out, k, s, p), nn.ReLU(inplace=False)]
                in_ch = out
        self.features = nn.Sequential(*layers)
        self.taps = [i for i, m in enumerate(self.features) if isinstance(m, nn.ReLU)]


class VGG16Features(_TappedFeatures):
    """torchvision ``vgg16().features`` up to relu5_3; taps after relu1_2, 2_2, 3_3, 4_3, 5_3."""

    channels = (64, 128, 256, 512, 512)
    min_size = 16  # four 2×2 max-pools before relu5_3

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        self.taps: list[int] = []
        for item in _VGG16_LAYOUT:
            if item == "M":
                self.taps.append(len(layers) - 1)  # the ReLU before each pool ends a block
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(item, int)
                layers += [nn.Conv2d(in_ch, item, 3, padding=1), nn.ReLU(inplace=False)]
                in_ch = item
        self.taps.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)


class LinLayer(nn.Module):
    """The per-layer channel weighting: ``model.1`` is the 1×1 conv (``model.0`` a dropout that the
    lpips package keeps in its v0.1 layout; identity in eval mode)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _unit_normalise(x: Tensor, eps: float = 1e-10) -> Tensor:
    # eps outside the square root as in lpips v0.1: an all-zero activation stays zero.
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance; ``forward(a, b)`` with (N, 3, H, W) images in [-1, 1] → (N,)."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in NETS:
            raise WeightsError("lpips.unknown_net", f"LPIPS backbone {net!r}; known: {list(NETS)}")
        self.net_name = net
        self.net: AlexNetFeatures | VGG16Features = AlexNetFeatures() if net == "alex" else VGG16Features()
        for i, ch in enumerate(self.net.channels):
            self.add_module(f"lin{i}", LinLayer(ch))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.sources: dict[str, str] = {}

    @property
    def lins(self) -> list[LinLayer]:
        return [getattr(self, f"lin{i}") for i in range(len(self.net.channels))]

    def load_backbone(self, path: str | os.PathLike[str]) -> None:
        """A torchvision ImageNet ``alexnet`` / ``vgg16`` state dict (``features.N.weight`` ...)."""
        what = "AlexNet" if self.net_name == "alex" else "VGG-16"
        match_state(self.net, load_state_file(path, what), path, what)
        self.sources["backbone"] = str(path)

    def load_lin(self, path: str | os.PathLike[str]) -> None:
        """The lpips package's v0.1 lin-layer file (``lin0.model.1.weight`` ...)."""
        state = load_state_file(path, f"LPIPS-{self.net_name} lin")
        for i, lin in enumerate(self.lins):
            match_state(lin, state, path, f"LPIPS-{self.net_name} lin", prefix=f"lin{i}.")
        self.sources["lin"] = str(path)

    @classmethod
    def from_files(
        cls, backbone: str | os.PathLike[str], lin: str | os.PathLike[str], net: str = "alex"
    ) -> LPIPS:
        """A frozen, eval-mode metric loaded from the two local files."""
        model = cls(net)
        model.load_backbone(backbone)
        model.load_lin(lin)
        model.eval()
        model.requires_grad_(False)
        return model

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise WeightsError(
                "lpips.bad_input",
                f"LPIPS needs two (N, 3, H, W) batches of one shape, got {a.shape}, {b.shape}",
            )
        if min(a.shape[-2:]) < self.net.min_size:
            raise WeightsError(
                "lpips.too_small",
                f"LPIPS-{self.net_name} needs images of at least {self.net.min_size}², got {tuple(a.shape[-2:])}",
            )
        # One backbone pass over both batches (same cost, half the Python overhead).
        feats = self.net((torch.cat([a, b]) - self.shift) / self.scale)
        n = a.shape[0]
        total = a.new_zeros(n)
        for f, lin in zip(feats, self.lins):
            diff = (_unit_normalise(f[:n]) - _unit_normalise(f[n:])).pow(2)
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


def lpips_at_least(model: LPIPS, a: Tensor, b: Tensor, min_size: int = 64) -> Tensor:
    """LPIPS of small images (low-res renders) after bilinear upsampling of both to ``min_size``;
    the backbones' receptive fields make distances on a few dozen pixels meaningless otherwise."""
    if min(a.shape[-2:]) < min_size:
        a = F.interpolate(a, size=min_size, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=min_size, mode="bilinear", align_corners=False)
    return model(a, b)
