"""Expression branch (paper §3.3): frontal 3DMM render I_exp → E_e → plane head → T_e.

I_exp = R_M(α_s, β_t, C_front) is rendered by the face stack (shared/face) with the source's
identity and the driver's expression from a fixed frontal camera, so T_e only has to encode
expression, never head motion. E_e is SegFormer MiT-b0 whose first patch embedding is freshly
initialised (as in the released code) followed by its own `PlaneHead` (``embedding2expr``).
The paper combines the planes by a plain sum T_c + T_e (+ T_p).

**Source-colour gate** (``ExpressionConfig.colour_gate``, a deliberate addition). The decoder
blends the source colour lifted into T_p with its own (renderer.TriPlaneDecoder); the lifted colour
is the source's face, closed lips and open eyes included, so a blend learned over all expressions
kept the portrait's mouth shut (bench-quality mouth_corr 0.16 and 0.21 per clip, where the decoded
colour alone followed the driver). The gate head (conv 3×3 → 16, LReLU, conv 3×3 → 1, sigmoid) reads
E_e's fused features and marks where the driver's face has moved from its neutral; it is trained
against the exact map `shared.face.render.render_expression_change` (the training loss is in
shared/training/losses.py). The map is warped from I_exp's frontal view into the XY plane (`to_plane`:
each texel centre (x, y) at z = ``gate_depth`` projected by the frontal camera) and becomes the last
channel of T_e's XY plane (XZ / ZY zero); the decoder multiplies its blend weight by (1 − gate). Only
the driver is seen, so the gate is relative to the neutral face, not to the source's expression.

**Mouth interior** (``ExpressionConfig.mouth_interior``, a deliberate addition, no weights). The
lifted source colour holds the portrait's closed lips wherever the driver opens the mouth, and the
decoder never learned to draw the inside of a mouth over them (the learned gate above let its decoded
colour through: a purple blur). But I_exp already shows the open mouth exactly: the face stack shades
the 3DMM's inner-mouth strip with its cavity shading (vertex shading 0.2), darker than any lit skin
(shape shading, shared/face/render.py: lit skin ≥ 2·0.72·0.3 − 1 = −0.568, the cavity ≤ −0.70 where
visible). `mouth_interior_map` marks such pixels that have lit skin on all four sides (the silhouette's
anti-aliased rim has background on one side), smoothed over a texel, warped into the XY plane like the
gate and stored as a channel of T_e's own after the gate's; the decoder shows ``MOUTH_INTERIOR_RGB`` there
(renderer.TriPlaneDecoder). Nostrils (vertex shading 0.37) are partly marked too: they are dark.
With ``mouth_teeth``, `mouth_teeth_map` marks the top ``TEETH_HEIGHT`` of each column of the open
mouth (the upper teeth, what an open mouth mostly shows below the upper lip) as a second channel, and
the decoder shows ``MOUTH_TEETH_RGB`` there.

Ablation (paper §4.5 / appendix A, "linear expression"): `LinearExpressionBranch` learns K = 64
tri-plane bases E_k and sets T_e = Σ_k β_k E_k from the target's 3DMM expression coefficients β.
Its bases are K × 3 × C × R × R parameters (1.6 GB at paper size), so it is meant for the tiny
profile or GPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.model import cameras as cams
from shared.model.canonical import PlaneHead
from shared.model.config import ModelConfig
from shared.model.constants import LEAKY_SLOPE
from shared.model.encoders import SegFormerEncoder, reinitialise_patch_embedding
from shared.model.errors import ModelInputError
from shared.model.triplane import NUM_PLANES, cell_centres, pad_channels

# I_exp values (in [-1, 1]) of the mouth-interior rule: pixels above LIT_SKIN_FLOOR are lit skin
# (shape shading's darkest lit skin is −0.568); a pixel is interior from INTERIOR_RAMP below it.
LIT_SKIN_FLOOR = -0.58
INTERIOR_RAMP = 0.08
# Above this an I_exp pixel is covered by the mesh (the background is −1).
COVERED_FLOOR = -0.97
# Height of the upper teeth's band below the upper lip, as a fraction of I_exp's height (3.2 px at
# 128²; the procedural head's mouth is ~10 px tall at jaw_open 0.9 there).
TEETH_HEIGHT = 0.025


def mouth_interior_map(expression_render: Tensor) -> Tensor:
    """Where I_exp (B, 3, H, W) in [-1, 1] shows the open mouth's cavity: (B, 1, H, W) in [0, 1].

    A pixel counts when it is darker than lit skin (ramped over ``INTERIOR_RAMP``) and lit skin lies
    somewhere left, right, above and below it (the background, −1, and the silhouette's rim fail one
    side). Pure tensor ops, so it runs in the Triton expression model as well."""
    value = expression_render.mean(dim=1)  # shape shading: the three channels are equal
    skin = (value > LIT_SKIN_FLOOR).float()

    def seen_before(mask: Tensor, dim: int) -> Tensor:
        """Whether ``mask`` holds strictly before each position along ``dim``."""
        seen = mask.cummax(dim=dim).values
        return F.pad(seen, (1, 0) if dim == -1 else (0, 0, 1, 0)).narrow(dim, 0, mask.shape[dim])

    enclosed = torch.ones_like(skin)
    for dim in (-1, -2):
        enclosed = enclosed * seen_before(skin, dim) * seen_before(skin.flip(dim), dim).flip(dim)
    dark = ((LIT_SKIN_FLOOR - value) / INTERIOR_RAMP).clamp(0.0, 1.0) * (value > COVERED_FLOOR).float()
    return (dark * enclosed).unsqueeze(1)


def mouth_teeth_map(interior: Tensor) -> Tensor:
    """The upper-teeth share (B, 1, H, W) of a `mouth_interior_map`: its value on the pixels within
    ``TEETH_HEIGHT`` · H below the top of the open mouth in their column, 0 elsewhere (so ≤ it)."""
    height = interior.shape[-2]
    inside = interior > 0.5
    rows = torch.arange(height, device=interior.device).view(1, 1, height, 1).expand_as(interior)
    # The last row above each pixel (or the pixel itself) that is not inside the mouth.
    last_outside = torch.where(inside, torch.full_like(rows, -1), rows).cummax(dim=-2).values
    depth = rows - last_outside  # 1 on the mouth's top row, 0 outside it
    teeth_rows = max(1.0, TEETH_HEIGHT * height)
    return interior * ((depth >= 1) & (depth <= teeth_rows)).to(interior.dtype)


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
        self.gate: nn.Sequential | None = None
        self.mouth_interior = config.mouth_interior
        self.mouth_teeth = config.mouth_teeth
        if config.colour_gate:
            hidden = config.expression.encoder.decoder_hidden_size
            self.gate = nn.Sequential(
                nn.Conv2d(hidden, 16, 3, padding=1),
                nn.LeakyReLU(LEAKY_SLOPE),
                nn.Conv2d(16, 1, 3, padding=1),
            )
            with torch.no_grad():  # starts closed (gate ≈ 0.02): a warm-started blend is unchanged
                self.gate[-1].bias.fill_(-4.0)
        if config.colour_gate or config.mouth_interior:
            # The frontal-view coordinates (grid_sample's [-1, 1], x right, y down) of every XY texel
            # centre at the face's depth: the I_exp → XY-plane warp.
            r, box = config.plane.resolution, config.plane.box_warp
            uv = cell_centres(r) * (box / 2.0)
            points = torch.cat([uv, torch.full((r * r, 1), config.expression.gate_depth)], dim=-1)
            pixels, _ = cams.project_points(points[None], cams.frontal_camera()[None])
            self.register_buffer("plane_grid", (pixels[0] * 2 - 1).reshape(1, r, r, 2), persistent=False)

    def to_plane(self, image_map: Tensor) -> Tensor:
        """A map in I_exp's frontal view (B, 1, h, w) → the same map on the XY plane (B, 1, R, R)."""
        grid = self.plane_grid.to(image_map.dtype).expand(image_map.shape[0], -1, -1, -1)
        return F.grid_sample(image_map, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, expression_render: Tensor) -> Tensor:
        return self.planes_and_gate(expression_render)[0]

    def planes_and_gate(self, expression_render: Tensor) -> tuple[Tensor, Tensor | None]:
        """T_e and, with the gate, the gate on the XY plane (B, R, R) for its loss.

        The gate reads E_e's features detached and enters T_e detached: only its own loss trains
        it. Left to the photometric losses as well, it stayed shut (mean 0.025 where the face moved
        after 600 steps) while its loss alone opened it in 200: early on the decoded mouth is worse
        than the lifted one, so the renders pushed the gate closed and the decoder never learned
        the mouth it would have to draw."""
        features = self.encoder(expression_render)
        planes = self.embedding2plane(features)
        xy_maps: list[Tensor] = []  # (B, K, R, R) each: XY-plane-only channels after the features
        trained_gate = None
        if self.gate is not None:
            gate = self.to_plane(torch.sigmoid(self.gate(features.detach())))
            trained_gate = gate[:, 0]
            xy_maps.append(gate.detach())
        if self.mouth_interior:
            interior = mouth_interior_map(expression_render.detach())
            if self.mouth_teeth:
                interior = torch.cat([interior, mouth_teeth_map(interior)], dim=1)
            if interior.shape[-1] > self.plane_grid.shape[1]:  # finer than a texel: average first
                interior = F.avg_pool2d(interior, 3, stride=1, padding=1, count_include_pad=False)
            xy_maps.append(self.to_plane(interior).clamp(0.0, 1.0))
        planes = pad_channels(planes, self.plane_channels - sum(m.shape[1] for m in xy_maps))
        if not xy_maps:
            return planes, None
        maps = torch.cat(xy_maps, dim=1)  # (B, K, R, R)
        xy_planes = torch.stack([maps, torch.zeros_like(maps), torch.zeros_like(maps)], dim=1)
        return torch.cat([planes, xy_planes], dim=2), trained_gate


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
