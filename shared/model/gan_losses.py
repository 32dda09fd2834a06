"""GAN objectives of the paper's adversarial stages (StyleGAN2 recipe).

- Non-saturating logistic loss (basicsr's ``wgan_softplus``): D minimises
  softplus(-D(real)) + softplus(D(fake)); G minimises softplus(-D(fake)). The paper weights the G
  term by 0.1; weights are left to the trainer.
- R1 penalty: squared gradient norm of D's real logits w.r.t. the real images, applied lazily
  (every ``every`` D steps, scaled by ``every`` so the average strength stays gamma/2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from shared.model.errors import ConfigError, ModelInputError

__all__ = [
    "R1Config",
    "d_logistic_loss",
    "g_nonsaturating_loss",
    "lazy_r1_loss",
    "r1_penalty",
]


def d_logistic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss: low when real logits are high and fake logits are low."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits: Tensor) -> Tensor:
    """Generator loss: low when D calls the fakes real (non-saturating form)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """Mean over the batch of ||d sum(real_logits) / d real_image||², differentiable (create_graph).

    ``real_images`` must have ``requires_grad=True`` before being passed through D.
    """
    if not real_images.requires_grad:
        raise ModelInputError(
            "gan.r1_no_grad", "r1_penalty needs real_images.requires_grad_(True) before the D forward"
        )
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1).mean()


@dataclass
class R1Config:
    gamma: float = 10.0  # the paper's R1 weight
    every: int = 16  # lazy regularisation interval, in D steps

    def __post_init__(self) -> None:
        if self.gamma < 0 or self.every < 1:
            raise ConfigError("gan.bad_r1_config", f"need gamma >= 0 and every >= 1, got {self}")

    def is_due(self, d_step: int) -> bool:
        return d_step % self.every == 0


def lazy_r1_loss(real_logits: Tensor, real_images: Tensor, config: R1Config) -> Tensor:
    """The term to add to the D loss on R1 steps: gamma / 2 * R1 * every."""
    penalty = r1_penalty(real_logits, real_images)
    # `0 * logit` keeps D's output in the graph so every D parameter receives a (zero) gradient,
    # which DistributedDataParallel requires.
    return config.gamma / 2.0 * penalty * config.every + 0.0 * real_logits.flatten()[0]
