"""Training losses of GOHA (paper §3.5, Eq. 1–2; official-code-notes.md §7).

- ``PerceptualLoss``: a VGG-19 written here (torchvision layout, so an ImageNet ``vgg19`` state
  dict from a user path loads into it) with the basicsr layer weights conv1_2 0.1, conv2_2 0.1,
  conv3_4 / conv4_4 / conv5_4 1.0 and an L1 criterion. Nothing is downloaded: without a weights
  file the loss falls back to ``GradientSSIMLoss`` (documented substitute: multi-scale L1 of
  image gradients + (1 − SSIM) over 3 scales) and says so through ``description``.
- ``tv_density_loss``: σ smoothness between random points inside the planes' box
  [−box_warp/2, box_warp/2]³ and jittered copies.
- ``neutral_expression_loss``: the "cano" term (Eq. 1): I_c against I_neu inside M_neu and
  against the target with eyes/brows/mouth blacked out.
- ``reconstruction_loss``: L1 + perceptual (Eq. 2 terms without TV).
- ``opacity_loss``: L1 of the render's accumulated opacity against the data's coverage (not in
  the paper; makes the head a surface instead of a see-through fog).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.model.constants import IMAGENET_MEAN, IMAGENET_STD
from shared.training.errors import TrainingError, WeightsError
from shared.training.lpips import LPIPS, load_state_file, lpips_at_least, match_state

# torchvision's vgg19 "features" layout: numbers are conv widths, "M" a 2×2 max-pool.
_VGG19_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip
# basicsr's layer weights (after ReLU of these convs; indices into ``features``).
VGG_LAYER_WEIGHTS: dict[str, float] = {
    "conv1_2": 0.1,
    "conv2_2": 0.1,
    "conv3_4": 1.0,
    "conv4_4": 1.0,
    "conv5_4": 1.0,
}


def _vgg_layer_names() -> dict[str, int]:
    """conv name → index of its ReLU in ``features``."""
    names: dict[str, int] = {}
    block, conv, index = 1, 1, 0
    for item in _VGG19_LAYOUT:
        if item == "M":
            block, conv = block + 1, 1
            index += 1
        else:
            names[f"conv{block}_{conv}"] = index + 1  # the ReLU after the conv
            conv += 1
            index += 2
    return names


_VGG_ERROR_CODES = {
    "weights.missing": "training.vgg_weights_missing",
    "weights.unreadable": "training.vgg_weights_unreadable",
    "weights.mismatch": "training.vgg_weights_mismatch",
}


class VGG19Features(nn.Module):
    """VGG-19 convolutional trunk (no classifier), truncated after the last layer needed."""

    def __init__(self, last_layer: str = "conv5_4") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for item in _VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(item, int)
                layers += [nn.Conv2d(in_ch, item, 3, padding=1), nn.ReLU(inplace=False)]
                in_ch = item
        self.layer_index = _vgg_layer_names()
        self.features = nn.Sequential(*layers[: self.layer_index[last_layer] + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def load_imagenet(self, path: str | os.PathLike[str]) -> None:
        """Load a torchvision ``vgg19`` state dict (``features.N.weight`` keys) from a local file.

        Errors keep their documented ``training.vgg_weights_*`` codes (missing / unreadable /
        mismatch, the last one also for a key with another shape)."""
        try:
            match_state(self.features, load_state_file(path, "VGG-19"), path, "VGG-19", prefix="features.")
        except WeightsError as exc:
            raise TrainingError(_VGG_ERROR_CODES[exc.code], str(exc)) from exc

    def forward(self, image: Tensor, layers: list[str]) -> dict[str, Tensor]:
        """``image`` in [-1, 1]; returns the ReLU activations of the named layers."""
        x = ((image + 1) * 0.5 - self.mean) / self.std
        wanted = {self.layer_index[name]: name for name in layers}
        out: dict[str, Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
                if len(out) == len(wanted):
                    break
        return out


def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim(a: Tensor, b: Tensor, *, data_range: float = 2.0, window: int = 7, sigma: float = 1.5) -> Tensor:
    """Mean SSIM (Gaussian window, 'valid' borders) of (B, 3, H, W) images, per image (B,)."""
    size = min(window, a.shape[-1], a.shape[-2])
    w = _gaussian_window(size, sigma, a.device, a.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, w, groups=3)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return value.flatten(1).mean(1)


def _gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


class GradientSSIMLoss(nn.Module):
    """The documented stand-in for a pretrained perceptual loss: over 3 scales, L1 of the image
    gradients (edges / texture) plus (1 − SSIM) (local structure and contrast). Zero iff equal."""

    def __init__(self, scales: int = 3) -> None:
        super().__init__()
        self.scales = scales

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        total = pred.new_zeros(())
        for s in range(self.scales):
            if s:
                if min(pred.shape[-2:]) < 8:
                    break
                pred, target = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2)
            (pgx, pgy), (tgx, tgy) = _gradients(pred), _gradients(target)
            total = total + (pgx - tgx).abs().mean() + (pgy - tgy).abs().mean()
            total = total + (1 - ssim(pred, target)).mean()
        return total


class PerceptualLoss(nn.Module):
    """basicsr-style VGG-19 perceptual loss when ImageNet weights are given, else GradientSSIMLoss.

    ``description`` says which one is active (the trainer writes it to its log)."""

    def __init__(self, vgg_weights: str | os.PathLike[str] | None = None, *, min_size: int = 64) -> None:
        super().__init__()
        self.vgg: VGG19Features | None = None
        self.fallback = GradientSSIMLoss()
        self.min_size = min_size  # small renders are upsampled so conv5_4 still sees a spatial map
        if vgg_weights:
            self.vgg = VGG19Features()
            self.vgg.load_imagenet(vgg_weights)
            self.vgg.requires_grad_(False).eval()
            self.description = f"VGG-19 perceptual loss (ImageNet weights from {vgg_weights})"
        else:
            self.description = (
                "no VGG-19 ImageNet weights given (--vgg-weights): using the substitute perceptual loss "
                "GradientSSIMLoss (3-scale gradient L1 + (1 - SSIM))"
            )

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.vgg is None:
            return self.fallback(pred, target)
        if pred.shape[-1] < self.min_size:
            pred = F.interpolate(pred, size=self.min_size, mode="bilinear", align_corners=False)
            target = F.interpolate(target, size=self.min_size, mode="bilinear", align_corners=False)
        names = list(VGG_LAYER_WEIGHTS)
        fp, ft = self.vgg(pred, names), self.vgg(target.detach(), names)
        return sum(VGG_LAYER_WEIGHTS[n] * (fp[n] - ft[n]).abs().mean() for n in names)  # type: ignore[return-value]


class LPIPSLoss(nn.Module):
    """LPIPS (frozen, from user-supplied weights) as a training loss: the mean distance of the batch.
    Renders smaller than ``min_size`` are upsampled first, as for the VGG loss."""

    def __init__(self, model: LPIPS, *, min_size: int = 64) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.min_size = min_size
        self.description = (
            f"LPIPS-{model.net_name} perceptual loss (backbone {model.sources.get('backbone')}, "
            f"lin {model.sources.get('lin')})"
        )

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return lpips_at_least(self.model, pred, target.detach(), self.min_size).mean()


def perceptual_loss_for_stage(
    stage: int,
    *,
    vgg_weights: str | os.PathLike[str] | None = None,
    lpips_backbone_weights: str | os.PathLike[str] | None = None,
    lpips_lin_weights: str | os.PathLike[str] | None = None,
    lpips_net: str = "alex",
) -> PerceptualLoss | LPIPSLoss:
    """The perceptual term of a stage (official-code-notes.md §7: LPIPS-AlexNet in stage 1, the
    VGG-19 loss in stage 2). Each stage uses what the user supplied, preferring its own choice:
    stage 1 LPIPS > VGG-19 > substitute, stage 2 VGG-19 > LPIPS > substitute."""
    if bool(lpips_backbone_weights) != bool(lpips_lin_weights):
        raise WeightsError(
            "training.lpips_weights_incomplete",
            "LPIPS needs both the backbone weights and the lin-layer weights",
        )
    lpips = (
        LPIPSLoss(LPIPS.from_files(lpips_backbone_weights, lpips_lin_weights, lpips_net))  # type: ignore[arg-type]
        if lpips_backbone_weights
        else None
    )
    if lpips is not None and (stage == 1 or not vgg_weights):
        return lpips
    return PerceptualLoss(vgg_weights)


def blackout(image: Tensor, keep: Tensor) -> Tensor:
    """Pixels where ``keep`` is 0 become black (-1); ``keep`` (B, 1, H, W) is resized to the image."""
    keep = resize_mask(keep, image.shape[-1])
    return image * keep + (-1.0) * (1 - keep)


def resize_mask(mask: Tensor, size: int) -> Tensor:
    if mask.shape[-1] == size:
        return mask
    return (F.adaptive_avg_pool2d(mask, size) > 0.5).to(mask.dtype)


def resize_image(image: Tensor, size: int) -> Tensor:
    if image.shape[-1] == size:
        return image
    if image.shape[-1] > size:
        return F.adaptive_avg_pool2d(image, size)  # area: what a low-res camera would see
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


@dataclass
class LossTerms:
    total: Tensor
    parts: dict[str, float]


def reconstruction_loss(
    pred: Tensor, target: Tensor, perceptual: Callable[[Tensor, Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """(L1, perceptual) of a render against an image resized to the render's size."""
    target = resize_image(target, pred.shape[-1])
    return (pred - target).abs().mean(), perceptual(pred, target)


def opacity_loss(opacity: Tensor, coverage: Tensor) -> Tensor:
    """Mean |O − A↓| of the accumulated opacity O (B, 1, r, r) of a render and the coverage A
    (B, 1, S, S) in [0, 1] of the image it reproduces, area-downsampled to r (a low-res pixel's
    coverage is the mean of the high-res pixels it spans, as for the images).

    Not a term of the paper. Its losses compare colours on a black background only, which an
    opaque dim surface and a half-transparent bright one satisfy alike; on synthetic data the
    coverage is known exactly, so the opacity is supervised directly. The weight (``TrainConfig.
    opacity_weight``, 1.0) is on the scale of the L1 colour terms: opacity is in [0, 1], images in
    [-1, 1]."""
    if opacity.ndim != 4 or opacity.shape[1] != 1 or coverage.shape[:2] != opacity.shape[:2]:
        raise TrainingError(
            "training.bad_opacity",
            f"opacity {tuple(opacity.shape)} and coverage {tuple(coverage.shape)} must be (B, 1, H, W)",
        )
    size = opacity.shape[-1]
    if coverage.shape[-1] != size:
        coverage = F.adaptive_avg_pool2d(coverage, size)
    return (opacity - coverage.to(opacity.dtype)).abs().mean()


def region_l1_loss(pred: Tensor, target: Tensor, region: Tensor) -> Tensor:
    """Mean |pred − target| over a soft region (B, 1, S, S) in [0, 1], area-downsampled to the
    render's size: the L1 of the pixels inside the region alone, whatever its area.

    Not a term of the paper. The expression region (eyes, brows, mouth: the complement of the
    data's keep-mask) covers ~6 % of the image, so the whole-image L1 barely sees whether the
    mouth opened like the target's; this is that L1 on those pixels only (``TrainConfig.
    expression_region_weight``). An empty region contributes 0."""
    if region.ndim != 4 or region.shape[1] != 1 or region.shape[0] != pred.shape[0]:
        raise TrainingError(
            "training.bad_region",
            f"region {tuple(region.shape)} must be (B, 1, H, W) for a render {tuple(pred.shape)}",
        )
    size = pred.shape[-1]
    region = region.to(pred.dtype)
    if region.shape[-1] != size:
        region = F.adaptive_avg_pool2d(region, size)
    target = resize_image(target, size)
    weighted = ((pred - target).abs() * region).sum()
    return weighted / (region.sum() * pred.shape[1]).clamp_min(1e-6)


# Weight of the gate loss's moved texels: they are ~0.3 % of the plane, and a gate left shut where
# the face moved keeps the source's mouth (the failure it is for), while one open too wide only
# trades the source's colour for the decoded one there.
GATE_POSITIVE_WEIGHT = 4.0


def gate_loss(gate: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of the source-colour gate (B, R, R) in [0, 1] (T_e's XY gate channel,
    shared/model/expression.py) against the expression-change map warped to the same plane
    (`shared.face.render.render_expression_change`, soft values in [0, 1]).

    Not a term of the paper: the gate is this project's addition, and this is the only loss that
    trains it (T_e holds the gate detached: expression.py says why). The map is known exactly on
    synthetic data, so the gate is supervised directly."""
    if gate.shape != target.shape:
        raise TrainingError(
            "training.bad_gate", f"gate {tuple(gate.shape)} and target {tuple(target.shape)} differ"
        )
    eps = 1e-4
    target = target.to(gate.dtype).clamp(0.0, 1.0)
    weight = 1 + (GATE_POSITIVE_WEIGHT - 1) * target
    return F.binary_cross_entropy(gate.clamp(eps, 1 - eps), target, weight=weight)


def neutral_expression_loss(
    canonical: Tensor,
    neutral_image: Tensor,
    neutral_mask: Tensor,
    target_image: Tensor,
    target_keep: Tensor,
    perceptual: Callable[[Tensor, Tensor], Tensor],
    *,
    neutral_perceptual_weight: float = 3.0,
) -> tuple[Tensor, dict[str, float]]:
    """Eq. 1 ("cano" steps): I_c vs I_neu inside M_neu, and vs the target with eyes/brows/mouth
    blacked out in both. Loss = L1 terms + 3·perceptual(neutral) + perceptual(target).

    Both L1 terms are means over all pixels of the blacked-out images (outside the mask both sides
    are black, so those pixels contribute 0), the same normalisation as every other L1 term of the
    trainer. Dividing by the mask area instead weighted the neutral L1 ~3x (M_neu covers about a
    third of the image) without that being a decision anyone made."""
    size = canonical.shape[-1]
    mask = resize_mask(neutral_mask, size)
    neu = resize_image(neutral_image, size)
    pred_neu, ref_neu = blackout(canonical, mask), blackout(neu, mask)
    l1_neu = (pred_neu - ref_neu).abs().mean()
    perc_neu = perceptual(pred_neu, ref_neu)
    keep = resize_mask(target_keep, size)
    tgt = resize_image(target_image, size)
    pred_tgt, ref_tgt = blackout(canonical, keep), blackout(tgt, keep)
    l1_tgt = (pred_tgt - ref_tgt).abs().mean()
    perc_tgt = perceptual(pred_tgt, ref_tgt)
    total = l1_neu + l1_tgt + neutral_perceptual_weight * perc_neu + perc_tgt
    return total, {
        "l1_neutral": float(l1_neu.detach()),
        "perc_neutral": float(perc_neu.detach()),
        "l1_target_masked": float(l1_tgt.detach()),
        "perc_target_masked": float(perc_tgt.detach()),
    }


def tv_density_loss(
    query: Callable[[Tensor, Tensor], Tensor],
    planes: Tensor,
    *,
    box_warp: float,
    num_points: int = 1000,
    sigma: float = 0.004,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mean |σ(x) − σ(x + ε)|, x ~ U[−box_warp/2, box_warp/2]³, ε ~ N(0, sigma²) (the notes' TV term).

    The released code draws x in [−1, 1]³, which is the planes' box only in EG3D's normalised
    coordinates; in world units the planes cover the cube of side ``box_warp`` centred at 0
    (``PlaneConfig.box_warp``), so world points in [−1, 1]³ put 7/8 of the samples (box_warp 1)
    outside the planes, where every sample reads the zero padding (σ is the decoder's constant of
    zero features) and the term regularises nothing. Deliberate difference: x is drawn inside the box. ``box_warp`` is required so a
    caller cannot silently fall back to a wrong cube."""
    b = planes.shape[0]
    half = 0.5 * box_warp
    points = (
        torch.rand(b, num_points, 3, generator=generator, device=planes.device, dtype=planes.dtype) * 2 - 1
    ) * half
    noise = (
        torch.randn(b, num_points, 3, generator=generator, device=planes.device, dtype=planes.dtype) * sigma
    )
    both = torch.cat([points, points + noise], dim=1)
    sigma_values = query(planes, both)[..., 0]
    return (sigma_values[:, :num_points] - sigma_values[:, num_points:]).abs().mean()
