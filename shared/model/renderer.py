"""EG3D-style tri-plane decoder and volume renderer (paper §3, official-code-notes.md §5).

- **Decoder** (`TriPlaneDecoder`): mean of the three plane samples (C-d) → equalised-lr FC C→64 →
  Softplus → FC 64→(1 + F). σ is the raw channel 0; features = sigmoid(·)·1.002 − 0.001, the first
  three of which are RGB. No view direction, no positional encoding.
- **Sampling** (`stratified_depths`, `importance_depths`): ``num_coarse`` stratified samples on
  the fixed ray range [ray_start, ray_end], then ``num_fine`` samples drawn by inverse CDF from the
  coarse weights blurred by a max-then-average filter plus 0.01, all sorted together.
- **Compositing** (`composite`): midpoint quadrature (values and densities averaged over each
  interval), density = softplus(σ + density_bias) with bias −1, alpha compositing onto black,
  colour/features mapped ×2 − 1; expected depth = Σ w·t + (1 − Σ w)·t_far (the transmittance left
  at the end of the ray lands at the far end), clamped to the samples.

Deterministic mode (inference): stratified samples sit at bin centres and importance samples at
quantiles (k + ½)/n: no randomness at all, so a render is a pure function of planes and camera.
Training mode draws the jitter from an optional ``torch.Generator``.

Differences to the released EG3D code, all deliberate: stratified jitter stays inside each bin
(EG3D's can pass ray_end by one bin); importance samples use stratified instead of plain uniform u
during training; the pdf bins are exactly the coarse intervals (EG3D's are off by one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.model import cameras as cams
from shared.model.config import PlaneConfig, RendererConfig
from shared.model.triplane import NUM_PLANES, PlaneTable, check_planes

# A field maps world points (N, 3) and their batch elements (N,) to raw (σ, values) as (N, 1 + K).
Field = Callable[[Tensor, Tensor | int], Tensor]

# Initial logit of the source-colour blend weight (TriPlaneDecoder): m starts at 0.5, half the lifted
# colour (a warm-started decoder then sees at once where the source colour helps; from -2 Adam took
# too many steps to move the bias).
BLEND_INIT_LOGIT = 0.0

# The colour (in [0, 1]) shown inside an open mouth (the mouth-interior map, expression.py): a dark,
# slightly red shadow, what a photographed mouth's inside mostly is at a head's scale.
MOUTH_INTERIOR_RGB = (0.16, 0.06, 0.06)
# The upper teeth's colour (``ExpressionConfig.mouth_teeth``): off-white, shaded by the lip above.
MOUTH_TEETH_RGB = (0.78, 0.74, 0.68)


class FullyConnectedLayer(nn.Module):
    """Linear layer with an equalised learning rate (StyleGAN/EG3D): the stored weight is N(0, 1) /
    lr_multiplier and is scaled by lr_multiplier / √fan_in at run time."""

    def __init__(self, in_features: int, out_features: int, *, lr_multiplier: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def effective(self, out_features: int | None = None) -> tuple[Tensor, Tensor]:
        """The weight and bias the layer applies (gains included), optionally the first outputs only."""
        weight, bias = self.weight, self.bias
        if out_features is not None:  # only the first outputs are needed (e.g. σ + RGB at inference)
            weight, bias = weight[:out_features], bias[:out_features]
        return weight * self.weight_gain, bias * self.bias_gain

    def forward(self, x: Tensor, out_features: int | None = None) -> Tensor:
        return F.linear(x, *self.effective(out_features))


class TriPlaneDecoder(nn.Module):
    """The EG3D OSG decoder. Parameter names ``net.0`` / ``net.2`` follow the released code.

    **Source-colour blend** (``RendererConfig.source_colour_blend``, a deliberate addition): the
    planes then end in the lifted source colour's channels (``colour_offset``: RGB then keep, T_p's
    XY plane only, appearance.py step 5). The decoder predicts one more output, a blend weight
    m = sigmoid(logit), and returns the decoded RGB premultiplied by (1 − m) plus m itself as a last
    channel; both are volume-rendered like any feature. The renderer then adds M · c(P): M = Σ w·m
    the composited blend weight, c the lifted colour read through a per-channel affine map
    (``colour_weight`` · c + ``colour_bias``, no MLP in between, `surface_colour`) at the ray's
    surface point P (the expected depth of its visible mass, `surface_depth`). Reading the colour
    once at the surface, not at every sample, keeps it sharp whatever the density's thickness: the
    XY colour is constant along z, so a fog ±0.15 deep seen from a 0.24 rad yaw smeared it over
    ±4.6 texels. The colour comes from T_p at a 3D point, not from the image. Why at all: the
    32-unit MLP returned a blur of the lifted colour whose dlib descriptor was 0.78 from the
    portrait's (docs/model.md).
    """

    def __init__(
        self,
        plane_channels: int,
        config: RendererConfig,
        *,
        colour_offset: int | None = None,
        colour_scale: float = 1.0,
        gate: bool = False,
        mouth_interior: bool = False,
        mouth_teeth: bool = False,
    ) -> None:
        super().__init__()
        self.feature_channels = config.feature_channels
        self.hidden = config.decoder_hidden
        self.blend = config.source_colour_blend
        # The source-colour gate (expression.py) is the planes' last channel: it scales m only and
        # is not an input of the MLP (net[0] keeps its shape, so a gate-less checkpoint loads).
        self.gate = gate
        if gate and not self.blend:
            raise ValueError("the source-colour gate needs the source-colour blend")
        # The mouth-interior map (expression.py) is the planes' last channel (last but the teeth's),
        # after the gate: where it is 1 the ray shows MOUTH_INTERIOR_RGB (m → 1, the lifted colour →
        # that colour). Not an MLP input either.
        self.mouth_interior = mouth_interior
        if mouth_interior and not self.blend:
            raise ValueError("the mouth-interior map needs the source-colour blend")
        self.register_buffer("interior_rgb", torch.tensor(MOUTH_INTERIOR_RGB), persistent=False)
        # With teeth the map has a second channel after it: the teeth's share τ ≤ k of the interior.
        self.mouth_teeth = mouth_teeth and mouth_interior
        self.register_buffer("teeth_rgb", torch.tensor(MOUTH_TEETH_RGB), persistent=False)
        mouth_channels = (1 if mouth_interior else 0) + (1 if self.mouth_teeth else 0)
        self.extra_channels = (1 if gate else 0) + mouth_channels
        self.net = nn.Sequential(
            FullyConnectedLayer(
                plane_channels - self.extra_channels,
                config.decoder_hidden,
                lr_multiplier=config.decoder_lr_multiplier,
            ),
            nn.Softplus(),
            FullyConnectedLayer(
                config.decoder_hidden,
                1 + config.feature_channels + (1 if self.blend else 0),
                lr_multiplier=config.decoder_lr_multiplier,
            ),
        )
        if self.blend:
            if colour_offset is None or colour_offset + 3 > plane_channels:
                raise ValueError("the source-colour blend needs the colour channels' offset in the planes")
            self.colour_offset = colour_offset
            # The planes hold colour × colour_scale × gain in the XY plane only, and the decoder reads
            # the mean of three planes: this map starts as the inverse, back to [0, 1].
            self.colour_weight = nn.Parameter(torch.full((3,), NUM_PLANES / (2.0 * colour_scale)))
            self.colour_bias = nn.Parameter(torch.full((3,), 0.5))
            with torch.no_grad():  # the blend starts at a constant m = sigmoid(BLEND_INIT_LOGIT)
                self.net[2].weight[-1].zero_()
                self.net[2].bias[-1].fill_(BLEND_INIT_LOGIT)

    def first_layer(self) -> tuple[Tensor, Tensor]:
        """The linear map applied to the mean plane features: net[0] (hidden rows), then with the
        blend the three source-colour rows (and with the gate and the mouth-interior map a row each:
        their XY-plane channel ×3 to undo the three planes' mean). Linear, so inference folds it into
        the plane table."""
        weight, bias = self.net[0].effective()
        if not self.blend:
            return weight, bias
        weight = F.pad(weight, (0, self.extra_channels))  # the MLP reads neither gate nor mouth map
        channels = weight.shape[1]
        pick = F.pad(
            torch.diag(self.colour_weight),
            (self.colour_offset, channels - self.colour_offset - 3),
        )
        rows, offsets = [weight, pick.to(weight.dtype)], [bias, self.colour_bias.to(bias.dtype)]
        for index in range(self.extra_channels):
            before = channels - self.extra_channels + index
            rows.append(F.pad(weight.new_full((1, 1), float(NUM_PLANES)), (before, channels - before - 1)))
            offsets.append(bias.new_zeros(1))
        return torch.cat(rows), torch.cat(offsets)

    def _interior(self, first: Tensor) -> Tensor:
        """The mouth-interior map (..., 1) in [0, 1] from `first_layer` outputs (last, or last but
        the teeth)."""
        index = first.shape[-1] - (2 if self.mouth_teeth else 1)
        return first[..., index : index + 1].clamp(0.0, 1.0)

    def forward(self, plane_features: Tensor, feature_channels: int | None = None) -> Tensor:
        """Mean plane features (..., C) → (..., 1 + F'): raw σ then features in [-0.001, 1.001]
        (with the blend: (1 − m)·RGB, the other features, then m: 1 + F' + 1 channels)."""
        return self.from_first_layer(F.linear(plane_features, *self.first_layer()), feature_channels)

    def _output_layer(self, feature_channels: int | None) -> tuple[Tensor, Tensor]:
        """net[2]'s weight and bias for σ + the first ``feature_channels`` features (+ the blend logit)."""
        weight, bias = self.net[2].effective()
        n_out = 1 + (self.feature_channels if feature_channels is None else feature_channels)
        if self.blend:
            rows = torch.cat([torch.arange(n_out), torch.tensor([weight.shape[0] - 1])]).to(weight.device)
            return weight.index_select(0, rows), bias.index_select(0, rows)
        return weight[:n_out], bias[:n_out]

    def from_first_layer(
        self, first: Tensor, feature_channels: int | None = None, *, inference: bool = False
    ) -> Tensor:
        """The decoder after its first layer: ``first`` = the `first_layer` map of the features
        (..., hidden [+ 3 source-colour values]).

        ``inference=True`` (only without autograd: it updates its output in place) computes the
        same values channel-major, the faster order for serving."""
        hidden = self.net[1](first[..., : self.hidden])
        weight, bias = self._output_layer(feature_channels)
        if inference:
            # Compute the output channel-major, (1 + F' [+ 1], N), so the feature rows are
            # contiguous and mapped in place; the caller's concatenation of chunks absorbs the
            # transpose (measured 2x faster than (N, 1 + F') with strided in-place updates).
            flat = hidden.reshape(-1, hidden.shape[-1])
            out = torch.addmm(bias[:, None], weight, flat.t())
            n_out = out.shape[0] - (1 if self.blend else 0)
            out[1:n_out].sigmoid_().mul_(1 + 2 * 0.001).sub_(0.001)
            if self.blend:
                m = out[n_out].sigmoid_()
                if self.gate:
                    m.mul_(1 - first[..., self.hidden + 3].reshape(-1).clamp(0.0, 1.0))
                if self.mouth_interior:  # m + (1 − m)·k = 1 − (1 − m)(1 − k)
                    keep = 1 - self._interior(first).reshape(-1)
                    m.neg_().add_(1).mul_(keep).neg_().add_(1)
                out[1:4].mul_(1 - m)  # the decoded RGB's share; the lifted one is added per ray
            return out.t().reshape(*hidden.shape[:-1], out.shape[0])
        out = F.linear(hidden, weight, bias)
        if self.blend:
            out, m = out[..., :-1], torch.sigmoid(out[..., -1:])
            if self.gate:
                m = m * (1 - first[..., self.hidden + 3 : self.hidden + 4].clamp(0.0, 1.0))
            if self.mouth_interior:
                m = 1 - (1 - m) * (1 - self._interior(first))
        sigma, features = out[..., :1], torch.sigmoid(out[..., 1:]) * (1 + 2 * 0.001) - 0.001
        if self.blend:
            features = torch.cat([(1 - m) * features[..., :3], features[..., 3:], m], dim=-1)
        return torch.cat([sigma, features], dim=-1)

    def surface_colour(self, first: Tensor) -> Tensor:
        """The lifted source colour in [0, 1] (..., 3) from `first_layer` outputs (..., hidden + 3
        [+ the gate] [+ the mouth map]); MOUTH_INTERIOR_RGB where the mouth map is 1."""
        colour = first[..., self.hidden : self.hidden + 3]
        if not self.mouth_interior:
            return colour
        k = self._interior(first)
        colour = colour * (1 - k) + k * self.interior_rgb.to(colour.dtype)
        if self.mouth_teeth:  # τ of the interior's share shows the teeth instead
            teeth = torch.minimum(first[..., -1:].clamp(0.0, 1.0), k)
            colour = colour + teeth * (self.teeth_rgb - self.interior_rgb).to(colour.dtype)
        return colour


# --- sampling ------------------------------------------------------------------------------------


def stratified_depths(
    num_rays: int,
    num_samples: int,
    ray_start: float,
    ray_end: float,
    *,
    deterministic: bool,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(num_rays, num_samples) depths, one per equal bin of [ray_start, ray_end], sorted."""
    bins = torch.arange(num_samples, device=device, dtype=dtype).expand(num_rays, num_samples)
    if deterministic:
        offsets = torch.full_like(bins, 0.5)
    else:
        offsets = torch.rand(bins.shape, generator=generator, device=device, dtype=dtype)
    return ray_start + (bins + offsets) * ((ray_end - ray_start) / num_samples)


def blur_weights(weights: Tensor) -> Tensor:
    """Max over neighbours then average of adjacent values (mip-NeRF / EG3D), same length."""
    padded = torch.cat([weights[..., :1], weights, weights[..., -1:]], dim=-1)
    maxed = torch.maximum(padded[..., :-1], padded[..., 1:])
    return 0.5 * (maxed[..., :-1] + maxed[..., 1:])


def importance_depths(
    coarse_depths: Tensor,
    interval_weights: Tensor,
    num_samples: int,
    *,
    deterministic: bool,
    generator: torch.Generator | None = None,
    floor: float = 0.01,
) -> Tensor:
    """Inverse-CDF samples (R, num_samples) from the piecewise-constant pdf over the coarse intervals.

    ``interval_weights`` (R, S-1) are the compositing weights of the intervals between the S sorted
    ``coarse_depths``; they are blurred and floored (+0.01) so empty rays still sample evenly.
    """
    pdf = blur_weights(interval_weights.detach()) + floor
    pdf = pdf / pdf.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), pdf.cumsum(dim=-1)], dim=-1).clamp_(max=1.0)
    rays = coarse_depths.shape[0]
    steps = torch.arange(num_samples, device=pdf.device, dtype=pdf.dtype).expand(rays, num_samples)
    if deterministic:
        u = (steps + 0.5) / num_samples
    else:
        u = (
            steps + torch.rand(steps.shape, generator=generator, device=pdf.device, dtype=pdf.dtype)
        ) / num_samples
    u = u.contiguous()
    upper = torch.searchsorted(cdf, u, right=True).clamp_(1, cdf.shape[-1] - 1)
    lower = upper - 1
    cdf_lo, cdf_hi = cdf.gather(-1, lower), cdf.gather(-1, upper)
    edges = coarse_depths.detach()
    edge_lo, edge_hi = edges.gather(-1, lower), edges.gather(-1, upper)
    t = ((u - cdf_lo) / (cdf_hi - cdf_lo).clamp_min(1e-12)).clamp_(0.0, 1.0)
    return edge_lo + t * (edge_hi - edge_lo)


# --- compositing ---------------------------------------------------------------------------------


@dataclass
class RayOutput:
    values: Tensor  # (R, K) composited and mapped ×2 − 1
    depth: Tensor  # (R,)
    opacity: Tensor  # (R,)
    # Source-colour blend only (TriPlaneDecoder): M = Σ w·m (R, 1) and the lifted share M·c(P) of
    # the RGB in [0, 1] (R, 3), kept so the colour can be re-read at a finer resolution.
    blend: Tensor | None = None
    lifted: Tensor | None = None


def composite(
    depths: Tensor, raw: Tensor, *, density_bias: float, need_values: bool = True
) -> tuple[RayOutput | None, Tensor]:
    """Midpoint alpha compositing of sorted samples. raw (R, S, 1 + K). Returns (output, weights (R, S-1))."""
    raw = raw.to(depths.dtype)  # composite in float32 even for half-precision decoders
    deltas = depths[:, 1:] - depths[:, :-1]
    mid = 0.5 * (raw[:, 1:] + raw[:, :-1])
    density = F.softplus(mid[..., 0] + density_bias)
    alpha = 1 - torch.exp(-density * deltas)
    transmittance = torch.cumprod(
        torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], dim=-1), dim=-1
    )[:, :-1]
    weights = alpha * transmittance
    if not need_values:
        return None, weights
    values = torch.einsum("rs,rsk->rk", weights, mid[..., 1:]) * 2 - 1
    total = weights.sum(dim=-1)
    depth_mid = 0.5 * (depths[:, 1:] + depths[:, :-1])
    # The light that passes the whole ray (transmittance 1 - total) lands at the far end, so a
    # background ray ends there, not at the weighted mean of its faint fog (which normalising by
    # ``total`` would lift into the middle of the head: softplus density is never exactly 0).
    leftover = (1.0 - total).clamp_min(0.0)
    depth = (weights * depth_mid).sum(dim=-1) + leftover * depths[:, -1]
    depth = torch.minimum(torch.maximum(depth, depths[:, 0]), depths[:, -1])
    return RayOutput(values=values, depth=depth, opacity=total), weights


def surface_depth(depth: Tensor, opacity: Tensor, ray_start: float, ray_end: float) -> Tensor:
    """The expected depth of a render's visible mass alone: `composite` puts the leftover
    transmittance (1 − α) at ``ray_end``, so Σ w·t = D − (1 − α)·t_far and the mass's own mean is
    that over α. Clamped to the ray range; meaningless where α is ~0 (callers mask those)."""
    alpha = opacity.clamp_min(1e-6)
    return ((depth - (1.0 - opacity) * ray_end) / alpha).clamp(ray_start, ray_end)


@dataclass
class RenderOutput:
    """A rendered image: RGB and features in [-1, 1] (black background = -1), depth, opacity."""

    rgb: Tensor  # (B, 3, H, W)
    features: Tensor  # (B, F, H, W) (F = 3 when only RGB was asked for; rgb = features[:, :3])
    depth: Tensor  # (B, 1, H, W)
    opacity: Tensor  # (B, 1, H, W)
    # Source-colour blend only: M (B, 1, H, W) and M·c(P) (B, 3, H, W) in [0, 1] (RayOutput), and
    # with ``RendererConfig.surface_colour_resolution`` the render with its lifted colour re-read at
    # that resolution, (B, 3, S, S) in [-1, 1] (`VolumeRenderer.surface_detail`).
    blend: Tensor | None = None
    lifted: Tensor | None = None
    detail: Tensor | None = None


@dataclass
class PlaneField:
    """A `Field` of tri-planes through the decoder; with the source-colour blend it also reads the
    lifted colour at surface points (`surface_colour`)."""

    decoder: TriPlaneDecoder
    table: PlaneTable
    feature_channels: int | None
    folded: bool  # the table holds the decoder's first-layer outputs (inference)

    @property
    def blends_source_colour(self) -> bool:
        return self.decoder.blend

    def _first(self, points: Tensor, batch_ids: Tensor | int) -> Tensor:
        sampled = self.table.sample(points, batch_ids)
        return sampled if self.folded else F.linear(sampled, *self.decoder.first_layer())

    def __call__(self, points: Tensor, batch_ids: Tensor | int) -> Tensor:
        return self.decoder.from_first_layer(
            self._first(points, batch_ids), self.feature_channels, inference=self.folded
        )

    def surface_colour(self, points: Tensor, batch_ids: Tensor | int) -> Tensor:
        """The lifted colour in [0, 1] (N, 3) at world points (N, 3)."""
        return self.decoder.surface_colour(self._first(points, batch_ids))


class VolumeRenderer(nn.Module):
    """Renders tri-planes (or any density field) along camera rays."""

    def __init__(
        self,
        config: RendererConfig,
        plane: PlaneConfig,
        channels: int | None = None,
        *,
        colour_scale: float = 1.0,
        gate: bool = False,
        mouth_interior: bool = False,
        mouth_teeth: bool = False,
    ) -> None:
        """``channels``: of the planes the decoder reads (default ``plane.channels``; the network passes
        ``ModelConfig.plane_channels``, whose channels after ``plane.channels`` are the lifted source
        colour, then the gate, then the mouth-interior map). ``colour_scale``: the lifted colour's
        fixed scale (for the source-colour blend). ``gate`` / ``mouth_interior``: the planes end in
        the source-colour gate / the mouth-interior map (expression.py)."""
        super().__init__()
        self.config = config
        self.box_warp = plane.box_warp
        self.decoder = TriPlaneDecoder(
            channels or plane.channels,
            config,
            colour_offset=plane.channels if config.source_colour_blend else None,
            colour_scale=colour_scale,
            gate=gate,
            mouth_interior=mouth_interior,
            mouth_teeth=mouth_teeth,
        )
        # Performance knobs only (never change results): rays per compositing chunk, points per
        # decoder call.
        self.ray_chunk = 4096
        self.point_chunk = 32768

    # -- generic field rendering --

    def render_rays(
        self,
        field: Field,
        origins: Tensor,
        directions: Tensor,
        *,
        deterministic: bool,
        generator: torch.Generator | None = None,
        skip_empty: bool = False,
    ) -> RayOutput:
        """Render rays (B, R, 3) through ``field`` → values (B, R, K), depth and opacity (B, R).

        Rays of all batch elements are processed together in chunks of ``ray_chunk``.
        ``skip_empty``: rays whose coarse opacity is below ``empty_ray_opacity`` keep their coarse
        result and skip the importance pass (an inference saving, not used in training).
        """
        b, r, _ = origins.shape
        batch_ids = torch.arange(b, device=origins.device).repeat_interleave(r)
        chunks = [
            self._render_chunk(field, ids, o, d, deterministic, generator, skip_empty)
            for o, d, ids in zip(
                origins.reshape(-1, 3).split(self.ray_chunk),
                directions.reshape(-1, 3).split(self.ray_chunk),
                batch_ids.split(self.ray_chunk),
            )
        ]
        values = torch.cat([c.values for c in chunks])
        depth = torch.cat([c.depth for c in chunks])
        opacity = torch.cat([c.opacity for c in chunks])
        blend = lifted = None
        if getattr(field, "blends_source_colour", False):
            values, blend, lifted = self._add_surface_colour(
                field, batch_ids, origins.reshape(-1, 3), directions.reshape(-1, 3), values, depth, opacity
            )
            blend, lifted = blend.reshape(b, r, 1), lifted.reshape(b, r, 3)
        return RayOutput(
            values=values.reshape(b, r, -1),
            depth=depth.reshape(b, r),
            opacity=opacity.reshape(b, r),
            blend=blend,
            lifted=lifted,
        )

    def _surface_colour(self, field: PlaneField, points: Tensor, ids: Tensor) -> Tensor:
        """The lifted colour (N, 3) at world points (N, 3) of batch elements ``ids`` (N,), chunked."""
        return torch.cat(
            [
                field.surface_colour(p, i)
                for p, i in zip(points.split(self.point_chunk), ids.split(self.point_chunk))
            ]
        )

    def _add_surface_colour(
        self,
        field: PlaneField,
        ids: Tensor,
        origins: Tensor,
        directions: Tensor,
        values: Tensor,
        depth: Tensor,
        opacity: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Composited [(1 − m)·RGB, features, m] (×2 − 1) → ([RGB + M·c(P), features] (×2 − 1), M,
        M·c(P)): the lifted colour read once per ray at its surface point P (TriPlaneDecoder's
        blend). P's depth is detached: the colour lookup does not move the geometry."""
        cfg = self.config
        surface = surface_depth(depth.detach(), opacity.detach(), cfg.ray_start, cfg.ray_end)
        points = origins + directions * surface.unsqueeze(-1)
        colour = self._surface_colour(field, points, ids).to(values.dtype)
        blend = (values[:, -1:] + 1) * 0.5  # M = Σ w·m
        lifted = blend * colour
        rgb = values[:, :3] + 2.0 * lifted  # (x + 1)/2 + M·c, mapped back ×2 − 1
        return torch.cat([rgb, values[:, 3:-1]], dim=-1), blend, lifted

    def surface_detail(self, field: PlaneField, cameras: Tensor, image: RenderOutput, size: int) -> Tensor:
        """The render with its lifted colour re-read at ``size``² (B, 3, S, S) in [-1, 1]:
        ``up(decoded) + up(M) · c(P')`` with P' on the bilinearly upsampled surface depth. Depth,
        density and M are smooth, the lifted colour is not: the 128² colour plane holds detail a 64²
        render averages away (portrait crop at 64² → dlib id_dist 0.34, at 128² 0.18). No weights;
        at ``size`` = the render's own resolution it returns the render itself."""
        assert image.blend is not None and image.lifted is not None, "needs the source-colour blend"
        cfg = self.config

        def up(t: Tensor) -> Tensor:
            if t.shape[-1] == size:
                return t
            return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)

        surface = up(surface_depth(image.depth.detach(), image.opacity.detach(), cfg.ray_start, cfg.ray_end))
        origins, directions = cams.generate_rays(cameras.float(), size)
        b = origins.shape[0]
        points = (origins + directions * surface.reshape(b, -1, 1).to(origins.dtype)).reshape(-1, 3)
        ids = torch.arange(b, device=points.device).repeat_interleave(size * size)
        colour = self._surface_colour(field, points, ids).to(image.rgb.dtype)
        colour = colour.reshape(b, size, size, 3).permute(0, 3, 1, 2)
        decoded = (image.rgb + 1) * 0.5 - image.lifted
        return (up(decoded) + up(image.blend) * colour) * 2 - 1

    def _eval(self, field: Field, ids: Tensor, origins: Tensor, directions: Tensor, depths: Tensor) -> Tensor:
        rays, samples = depths.shape
        points = (origins.unsqueeze(1) + directions.unsqueeze(1) * depths.unsqueeze(-1)).reshape(-1, 3)
        point_ids = ids.unsqueeze(1).expand(rays, samples).reshape(-1)
        raw = [field(p, i) for p, i in zip(points.split(self.point_chunk), point_ids.split(self.point_chunk))]
        return torch.cat(raw, dim=0).reshape(rays, samples, -1)

    def _render_chunk(
        self,
        field: Field,
        ids: Tensor,
        origins: Tensor,
        directions: Tensor,
        deterministic: bool,
        generator: torch.Generator | None,
        skip_empty: bool,
    ) -> RayOutput:
        cfg = self.config
        coarse_t = stratified_depths(
            origins.shape[0],
            cfg.num_coarse,
            cfg.ray_start,
            cfg.ray_end,
            deterministic=deterministic,
            generator=generator,
            device=origins.device,
            dtype=origins.dtype,
        )
        coarse_raw = self._eval(field, ids, origins, directions, coarse_t)
        if cfg.num_fine == 0:
            out, _ = composite(coarse_t, coarse_raw, density_bias=cfg.density_bias)
            return out  # type: ignore[return-value]
        coarse_out, coarse_w = composite(
            coarse_t, coarse_raw, density_bias=cfg.density_bias, need_values=skip_empty
        )
        if skip_empty:
            assert coarse_out is not None
            active = (coarse_out.opacity >= cfg.empty_ray_opacity).nonzero().squeeze(-1)
            if active.numel() == 0:
                return coarse_out
            if active.numel() < origins.shape[0]:
                fine = self._fine(
                    field,
                    ids[active],
                    origins[active],
                    directions[active],
                    coarse_t[active],
                    coarse_raw[active],
                    coarse_w[active],
                    deterministic,
                    generator,
                )
                return RayOutput(
                    values=coarse_out.values.index_copy(0, active, fine.values),
                    depth=coarse_out.depth.index_copy(0, active, fine.depth),
                    opacity=coarse_out.opacity.index_copy(0, active, fine.opacity),
                )
        return self._fine(
            field, ids, origins, directions, coarse_t, coarse_raw, coarse_w, deterministic, generator
        )

    def _fine(
        self,
        field: Field,
        ids: Tensor,
        origins: Tensor,
        directions: Tensor,
        coarse_t: Tensor,
        coarse_raw: Tensor,
        coarse_w: Tensor,
        deterministic: bool,
        generator: torch.Generator | None,
    ) -> RayOutput:
        cfg = self.config
        fine_t = importance_depths(
            coarse_t, coarse_w, cfg.num_fine, deterministic=deterministic, generator=generator
        )
        fine_raw = self._eval(field, ids, origins, directions, fine_t)
        all_t, order = torch.sort(torch.cat([coarse_t, fine_t], dim=-1), dim=-1)
        all_raw = torch.cat([coarse_raw, fine_raw], dim=1)
        all_raw = all_raw.gather(1, order.unsqueeze(-1).expand(-1, -1, all_raw.shape[-1]))
        out, _ = composite(all_t, all_raw, density_bias=cfg.density_bias)
        assert out is not None
        return out

    # -- tri-planes --

    def planes_field(
        self, planes: Tensor, feature_channels: int | None = None, *, fold_first_layer: bool = False
    ) -> PlaneField:
        """The field σ + features at world points of these planes.

        ``fold_first_layer=True`` (inference, no autograd): the decoder's first layer is linear, so
        it is applied once per texel (3·R² per plane set) instead of once per sample (millions per
        render) and the table gathers its outputs. Same function up to float rounding (see
        PlaneTable). Training keeps the plain order, whose backward is the tested one.
        """
        decoder = self.decoder
        if fold_first_layer:
            return PlaneField(
                decoder,
                PlaneTable(planes, self.box_warp, linear=decoder.first_layer()),
                feature_channels,
                True,
            )
        return PlaneField(decoder, PlaneTable(planes, self.box_warp), feature_channels, False)

    def query(self, planes: Tensor, points: Tensor, *, inference: bool | None = None) -> Tensor:
        """Raw decoder output (B, N, 1 + F) at world points (B, N, 3), e.g. for the TV loss on σ.

        ``inference``: as in ``forward``."""
        field = self.planes_field(planes, fold_first_layer=resolve_inference(inference))
        return torch.stack(
            [
                torch.cat([field(p, b) for p in points[b].split(self.point_chunk)])
                for b in range(points.shape[0])
            ]
        )

    def forward(
        self,
        planes: Tensor,
        cameras: Tensor,
        resolution: int | None = None,
        *,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        rgb_only: bool = False,
        skip_empty: bool | None = None,
        inference: bool | None = None,
        detail: bool = True,
    ) -> RenderOutput:
        """Render tri-planes (B, 3, C, R, R) from EG3D cameras (B, 25) at ``resolution``².

        ``detail``: also `surface_detail` where ``surface_colour_resolution`` asks for it.

        ``rgb_only`` decodes σ + RGB only (the other feature channels are never used downstream at
        inference). ``inference=True`` selects the serving computation (the decoder's first layer
        folded into the planes, in-place channel-major output; only without autograd), ``False``
        the training one whose backward is tested; same values up to float rounding. The caller
        chooses; ``None`` (direct calls that do not say) means "inference exactly when autograd
        is off" (``resolve_inference``). ``skip_empty`` defaults to on exactly in deterministic
        inference calls.
        """
        check_planes(planes)
        res = resolution or self.config.resolution
        inference = resolve_inference(inference)
        if skip_empty is None:
            skip_empty = deterministic and inference
        origins, directions = cams.generate_rays(cameras.float(), res)  # float32 rays for any plane dtype
        field = self.planes_field(planes, 3 if rgb_only else None, fold_first_layer=inference)
        rays = self.render_rays(
            field,
            origins,
            directions,
            deterministic=deterministic,
            generator=generator,
            skip_empty=skip_empty,
        )
        image = rays_to_image(rays, res)
        detail_size = self.config.surface_colour_resolution
        if detail and detail_size and image.blend is not None:
            image.detail = self.surface_detail(field, cameras, image, detail_size)
        if planes.dtype != image.features.dtype:  # images in the network's dtype; depth stays float32
            image.features = image.features.to(planes.dtype)
            image.rgb = image.features[:, :3]
            if image.detail is not None:
                image.detail = image.detail.to(planes.dtype)
        return image


def resolve_inference(inference: bool | None) -> bool:
    """The renderer's computation for a caller that did not choose (``None``): the inference one
    exactly when autograd is off (its in-place updates would break a backward pass)."""
    return (not torch.is_grad_enabled()) if inference is None else inference


def rays_to_image(rays: RayOutput, resolution: int) -> RenderOutput:
    """Row-major rays (B, H*W, ...) → NCHW images."""

    def image(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], resolution, resolution, -1).permute(0, 3, 1, 2)

    values = image(rays.values)
    return RenderOutput(
        rgb=values[:, :3],
        features=values,
        depth=image(rays.depth.unsqueeze(-1)),
        opacity=image(rays.opacity.unsqueeze(-1)),
        blend=None if rays.blend is None else image(rays.blend),
        lifted=None if rays.lifted is None else image(rays.lifted),
    )
