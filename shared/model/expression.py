"""Expression branch (paper §3.3): frontal 3DMM render I_exp → E_e → plane head → T_e.

I_exp = R_M(α_s, β_t, C_front) is rendered by the face stack (shared/face) with the source's
identity and the driver's expression from a fixed frontal camera, so T_e only has to encode
expression, never head motion. E_e is SegFormer MiT-b0 whose first patch embedding is freshly
initialised (as in the released code) followed by its own `PlaneHead` (``embedding2expr``).
The paper combines the planes by a plain sum T_c + T_e (+ T_p).

Ablation (paper §4.5 / appendix A, "linear expression"): `LinearExpressionBranch` learns K = 64
tri-plane bases E_k and sets T_e = Σ_k β_k E_k from the target's 3DMM expression coefficients β.
Its bases are K × 3 × C × R × R parameters (1.6 GB at paper size), so it is meant for the tiny
profile or GPUs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shared.model.canonical import PlaneHead
from shared.model.config import ModelConfig
from shared.model.encoders import SegFormerEncoder, reinitialise_patch_embedding
from shared.model.errors import ModelInputError
from shared.model.triplane import NUM_PLANES, pad_channels


class ExpressionBranch(nn.Module):
    """I_exp (B, 3, S, S) in [-1, 1] → T_e (B, 3, C, R, R)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.encoder = SegFormerEncoder(config.expression.encoder)
        reinitialise_patch_embedding(self.encoder)
        self.embedding2plane = PlaneHead(
            config.expression.encoder.decoder_hidden_size,
            config.plane.head_channels,
            config.plane.channels,
            config.head_upsamples,
        )
        self.plane_channels = config.plane_channels  # zero beyond plane.channels (T_p's colour)

    def forward(self, expression_render: Tensor) -> Tensor:
        return pad_channels(self.embedding2plane(self.encoder(expression_render)), self.plane_channels)


class LinearExpressionBranch(nn.Module):
    """3DMM expression coefficients (B, K) → T_e = Σ_k β_k E_k (B, 3, C, R, R)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        k, c, r = config.expression.num_bases, config.plane.channels, config.plane.resolution
        # Zero bases: training starts from "no expression offset", like an untrained residual.
        self.bases = nn.Parameter(torch.zeros(k, NUM_PLANES, c, r, r))
        self.plane_channels = config.plane_channels

    def forward(self, coefficients: Tensor) -> Tensor:
        if coefficients.ndim != 2 or coefficients.shape[1] != self.bases.shape[0]:
            raise ModelInputError(
                "model.bad_coefficients",
                f"expression coefficients must be (B, {self.bases.shape[0]}), got {tuple(coefficients.shape)}",
            )
        planes = torch.einsum("bk,kpcij->bpcij", coefficients.to(self.bases.dtype), self.bases)
        return pad_channels(planes, self.plane_channels)
