"""The maths of one training step: which step type an iteration is, the network inputs of a step
type, and the loss each step type assembles (paper §3.5; the schedule and the losses are described
in trainer.py's docstring and docs/training.md). No optimiser, no state, no I/O: `Trainer`
(trainer.py) draws the samples, runs the network, calls these and steps the optimisers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from shared.face.morphable import load_procedural_model
from shared.face.render import render_expression, render_expression_change
from shared.model.gan_losses import R1Config, d_logistic_loss, g_nonsaturating_loss, lazy_r1_loss
from shared.model.network import GOHABatch, GOHANetwork, TrainingOutput
from shared.training.losses import (
    gate_loss,
    neutral_expression_loss,
    opacity_loss,
    reconstruction_loss,
    region_l1_loss,
    tv_density_loss,
)

if TYPE_CHECKING:  # annotations only: trainer.py imports this module
    from collections.abc import Callable

    from shared.training.trainer import TrainConfig

# --- step types ----------------------------------------------------------------------------------


def step_kind(step: int, config: TrainConfig) -> str:
    """Stage-1 step type of an iteration (official-code-notes.md §7 schedule)."""
    if step < config.expression_from:
        return "cano"
    return ("full_src", "full_tar", "coarse", "coarse", "cano", "cano")[step % 6]


def tv_due(step: int, kind: str) -> bool:
    if kind.startswith("full"):
        return True
    if kind == "coarse":
        return step % 4 == 0
    return step % 6 == 4


# --- inputs ----------------------------------------------------------------------------------------


def source_expression_renders(samples: dict[str, Tensor], size: int, supersample: int = 2) -> Tensor:
    """I_exp(α, β_source) for ``full_src`` steps (the dataset stores only the target's), rendered
    like the dataset's own I_exp (pass its ``SyntheticConfig.supersample``)."""
    model = load_procedural_model()
    return render_expression(model, samples["alpha"], samples["source_beta"], size, supersample=supersample)


def gate_targets(samples: dict[str, Tensor], kind: str, network: GOHANetwork, supersample: int = 2) -> Tensor:
    """The source-colour gate's target on T_e's XY plane (B, R, R): where the expression the step
    renders (the source's for ``full_src`` steps, else the target's) moved the face from its
    neutral, rendered in I_exp's view at half the image size and warped like the gate itself."""
    beta = samples["source_beta" if kind == "full_src" else "target_beta"]
    change = render_expression_change(
        load_procedural_model(),
        samples["alpha"],
        beta,
        network.config.image_size // 2,
        supersample=supersample,
    )
    return network.expression.to_plane(change.to(samples["alpha"].device))[:, 0]


def make_batch(
    samples: dict[str, Tensor],
    kind: str,
    network: GOHANetwork,
    config: TrainConfig,
    step: int,
    *,
    expression_supersample: int = 2,
) -> tuple[GOHABatch, Tensor]:
    """The network inputs of one step type and the image it must reproduce."""
    at_source = kind == "full_src"
    use_expression = kind in ("full_src", "full_tar", "coarse")
    use_appearance = (
        kind.startswith("full") and step >= config.appearance_from and network.appearance is not None
    )
    if at_source:
        expression = (
            source_expression_renders(samples, network.config.image_size, expression_supersample)
            if use_expression
            else None
        )
        coefficients, camera, target = (
            samples["source_beta"],
            samples["source_camera"],
            samples["source_image"],
        )
    else:
        expression = samples["expression_image"]
        coefficients, camera, target = (
            samples["target_beta"],
            samples["target_camera"],
            samples["target_image"],
        )
    open_gate = None
    if config.gate_open_prob > 0 and kind.startswith("full"):
        # Per-step draws (seed, step): a resumed run opens the same items.
        draw = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        open_gate = torch.rand(samples["source_image"].shape[0], generator=draw) < config.gate_open_prob
    batch = GOHABatch(
        source_image=samples["source_image"],
        source_mask=samples["source_keep"],
        source_camera=samples["source_camera"],
        target_camera=camera,
        expression_render=expression,
        expression_coefficients=coefficients,
        use_expression=use_expression,
        use_appearance=use_appearance,
        use_superres=False,
        open_gate=open_gate,
    )
    return batch, target


def dual_pairs(real: Tensor, fake: Tensor, condition: Tensor) -> tuple[Tensor, Tensor]:
    """The dual discriminator's 6-channel inputs: [real image, condition] and [SR, condition].

    ``condition`` is the frozen low-res render up-sampled to the SR size, the same for both: it is
    the SR's input, not something the SR can change, so conditioning real pairs on anything else
    (EG3D uses the down-and-up-sampled real image) would let D tell real from fake on those three
    channels alone."""
    condition = condition.detach()
    return torch.cat([real, condition], 1).detach(), torch.cat([fake, condition], 1)


# --- losses ----------------------------------------------------------------------------------------


def stage1_loss(
    out: TrainingOutput,
    samples: dict[str, Tensor],
    target: Tensor,
    kind: str,
    step: int,
    config: TrainConfig,
    perceptual: Callable[[Tensor, Tensor], Tensor],
    network: GOHANetwork,
    generator: torch.Generator,
) -> tuple[Tensor, dict[str, float]]:
    """The stage-1 loss of one step of type ``kind`` and its logged parts: Eq. 1 for ``cano``
    steps, L1 + perceptual otherwise (+ the expression-region L1 when weighted), + the opacity
    loss (every step), + the gate loss (steps with T_e, when the config has the gate), + TV when due
    (``generator`` draws its points, after the forward that used it)."""
    pred = out.final.rgb
    parts: dict[str, float] = {}
    if kind == "cano":
        total, parts = neutral_expression_loss(
            pred,
            samples["neutral_image"],
            samples["neutral_mask"],
            samples["target_image"],
            samples["target_keep"],
            perceptual,
            neutral_perceptual_weight=config.neutral_perceptual_weight,
        )
    else:
        l1, perc = reconstruction_loss(pred, target, perceptual)
        total = l1 + perc
        parts = {"l1": float(l1.detach()), "perceptual": float(perc.detach())}
        if config.expression_region_weight > 0:
            keep = samples["source_keep" if kind == "full_src" else "target_keep"]
            region = region_l1_loss(pred, target, 1 - keep)
            total = total + config.expression_region_weight * region
            parts["region"] = float(region.detach())
    if config.opacity_weight > 0:
        coverage = samples["source_alpha" if kind == "full_src" else "target_alpha"]
        alpha = opacity_loss(out.final.opacity, coverage)
        total = total + config.opacity_weight * alpha
        parts["alpha"] = float(alpha.detach())
    if config.gate_weight > 0 and out.expression_gate is not None:
        gate = gate_loss(out.expression_gate, gate_targets(samples, kind, network))
        total = total + config.gate_weight * gate
        parts["gate"] = float(gate.detach())
    if config.tv_weight > 0 and tv_due(step, kind):
        tv = tv_density_loss(
            network.query,
            out.planes,
            box_warp=network.config.plane.box_warp,
            num_points=config.tv_points,
            generator=generator,
        )
        total = total + config.tv_weight * tv
        parts["tv"] = float(tv.detach())
    return total, parts


def stage2_generator_loss(
    sr: Tensor,
    real: Tensor,
    up_low: Tensor,
    perceptual: Callable[[Tensor, Tensor], Tensor],
    discriminator: nn.Module,
    gan_weight: float,
) -> tuple[Tensor, dict[str, float]]:
    """The SR's loss: L1 + perceptual against the full-resolution image + ``gan_weight`` × the
    non-saturating GAN loss of D on [SR, up-sampled low-res render] (D's weights frozen by the
    caller)."""
    l1 = (sr - real).abs().mean()
    perc = perceptual(sr, real)
    g_gan = g_nonsaturating_loss(discriminator(torch.cat([sr, up_low], 1)))
    total = l1 + perc + gan_weight * g_gan
    parts = {"l1": float(l1.detach()), "perceptual": float(perc.detach()), "g_gan": float(g_gan.detach())}
    return total, parts


def stage2_discriminator_loss(
    real: Tensor,
    fake: Tensor,
    up_low: Tensor,
    discriminator: nn.Module,
    r1: R1Config,
    d_step: int,
) -> tuple[Tensor, dict[str, float]]:
    """D's logistic loss on the dual pairs (`dual_pairs`) + the lazy R1 penalty when ``d_step``
    is due; ``fake`` is the detached SR output."""
    real_pair, fake_pair = dual_pairs(real, fake, up_low)
    r1_due = r1.is_due(d_step)
    if r1_due:
        real_pair.requires_grad_(True)
    real_logits = discriminator(real_pair)
    d_loss = d_logistic_loss(real_logits, discriminator(fake_pair))
    parts = {"d_loss": float(d_loss.detach())}
    if r1_due:
        r1_loss = lazy_r1_loss(real_logits, real_pair, r1)
        d_loss = d_loss + r1_loss
        parts["r1"] = float(r1_loss.detach())
    return d_loss, parts
