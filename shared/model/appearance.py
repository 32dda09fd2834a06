"""Appearance branch (paper §3.2): E_p features → Lifting → Rasterization → upsampler → T_p.

1. **Depth.** The base tri-plane (T_c by default: the paper's formulation, which makes T_c + T_p a
   function of the source alone and therefore cacheable) is rendered from the source camera at
   the encoder's feature resolution (128² for 512² input); see ``GOHANetwork.appearance_planes``.
2. **Lifting** (`lift`). Feature pixel (i, j) is ray i·W + j; its point is P = o + D·d with d the
   unit ray direction and D the expected depth along the ray. Every pixel is lifted, background
   included (background rays end at the far end of the ray range).
3. **Rasterization** (`rasterize`). For each plane (XY, XZ, ZY) the points are projected onto it
   (triplane.project_to_planes) and every texel centre of an R_f × R_f grid takes the feature of
   its *exact* nearest projected point. No radius, no depth test, no averaging (as in the paper
   and the released code). Ties go to the lowest point index. The search never builds the N×N
   distance matrix: a KD-tree on CPU (scipy, indices only) or bounded chunks of distances on GPU.
   Features are gathered with torch, so gradients reach E_p (not the positions: nearest-neighbour
   selection is piecewise constant).
4. **Upsampler** (`AppearanceUpsampler`, the released ``IDUpsampler``): per plane, a transposed
   conv 4×4 s2 F→128, LReLU(0.2), conv3×3 128→C branch plus a 1×1-conv skip on bilinearly
   upsampled features → T_p (B, 3, C, R, R). The released code applies plane 0's branch to all
   three planes (its XZ/ZY branches are dead weights); here each plane uses its own branch.

5. **Colour lifting** (`AppearanceBranch.colour_planes`, when ``colour_resolution`` > 0). The paper
   says the branch maps *pixel values* of the input image into 3D; at the tiny profile's 32² feature
   grid E_p's features alone cannot carry a face's colour. The source RGB (unmasked: eyes and brows
   carry much of a person's identity) and the keep-mask (4 channels; the mask tells the decoder
   where the source's expression parts are, which T_e must override when the driver's differ)
   are lifted at ``colour_resolution`` with the depth rendered there, and
   rasterised (same exact-nearest rule) into the XY plane only, resized to the plane resolution and
   scaled by ``colour_scale`` × a learned per-channel gain (the planes' own values are O(10)); they
   become four channels of T_p's XY plane of their own (XZ / ZY zero there, and T_c / T_e are zero in
   them: ``ModelConfig.plane_channels``), so the decoder reads the colour unmixed. (Added to T_p's
   first channels instead, the colour drowned in T_c's values there: 700 steps moved its effect on
   the render from 0.041 to 0.047 while T_c's channels grew.)
   Only XY: a (near-)frontal portrait projects onto XY one-to-one, while on XZ / ZY whole columns
   of the face collapse onto one texel (the nearest of them wins arbitrarily). The colour plane may
   be finer than the branch planes (``colour_plane_resolution``, tiny 128² against 64²: the head
   is only ~20 texels wide at 64²); T_p's features are then upsampled to it and so are T_c / T_e
   where they are summed with T_p (triplane.sum_planes).

Deliberate differences to the released code: the rasterisation grid is the planes' texel-centre
grid (the released grid is linspace(-1, 1), half a texel off the ``align_corners=False``
sampling); the skip's 1×1 conv runs before the bilinear upsampling (equal, both are linear);
in "composite" input mode the erosion uses the source keep-mask only (no face parser here).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor, nn

from shared.model.config import COLOUR_CHANNELS, ModelConfig
from shared.model.constants import LEAKY_SLOPE
from shared.model.encoders import SegFormerEncoder, reinitialise_patch_embedding
from shared.model.errors import ModelInputError
from shared.model.triplane import NUM_PLANES, PLANE_NAMES, cell_centres, project_to_planes, upsample_planes

NearestMethod = Literal["auto", "kdtree", "chunked"]

# Candidates fetched per query to break exact distance ties by the lowest point index.
_TIE_CANDIDATES = 4
# Upper bound on distance-matrix elements held at once by the chunked (GPU) search.
_CHUNK_ELEMENTS = 1 << 24


def lift(origins: Tensor, directions: Tensor, depth: Tensor) -> Tensor:
    """P = o + D·d for rays (B, N, 3) and depths (B, N) → points (B, N, 3)."""
    return origins + directions * depth.unsqueeze(-1)


def _nearest_kdtree(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    unique, first = np.unique(points, axis=0, return_index=True)  # coincident points: keep lowest index
    tree = cKDTree(unique)
    k = min(_TIE_CANDIDATES, len(unique))
    dist, idx = tree.query(queries, k=k)
    if k == 1:
        dist, idx = dist[:, None], idx[:, None]
    candidates = first[idx]
    tied = dist == dist[:, :1]
    best = np.where(tied, candidates, np.iinfo(np.int64).max).min(axis=1)
    if k < len(unique):
        # All k candidates tie: more equidistant points may exist beyond them (symmetric layouts).
        for q in np.nonzero(tied[:, -1])[0]:
            near = np.asarray(tree.query_ball_point(queries[q], r=dist[q, 0] * (1 + 1e-12)), dtype=np.int64)
            d = np.linalg.norm(unique[near] - queries[q], axis=1)
            best[q] = first[near[d == d.min()]].min()
    return best


def _nearest_chunked(points: Tensor, queries: Tensor) -> Tensor:
    chunk = max(1, _CHUNK_ELEMENTS // max(1, points.shape[0]))
    out = []
    for q in queries.split(chunk):
        dist = torch.cdist(q.unsqueeze(0), points.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist")[
            0
        ]
        out.append(dist.argmin(dim=1))  # argmin returns the first (lowest) index on ties
    return torch.cat(out)


@torch.no_grad()
def nearest_indices(points: Tensor, queries: Tensor, method: NearestMethod = "auto") -> Tensor:
    """Index of the exact nearest point (N, 2) for every query (M, 2) → (M,) int64.

    Ties (equal distances, coincident points) resolve to the lowest point index, as brute-force
    ``argmin`` over ``torch.cdist`` does.
    """
    if method == "auto":
        method = "kdtree" if points.device.type == "cpu" else "chunked"
    if method == "kdtree":
        idx = _nearest_kdtree(points.detach().double().cpu().numpy(), queries.detach().double().cpu().numpy())
        return torch.from_numpy(idx).to(points.device)
    if method == "chunked":
        return _nearest_chunked(points.detach(), queries.detach().to(points.dtype))
    raise ValueError(f"unknown nearest-neighbour method {method!r}")


def rasterize(
    points: Tensor,
    features: Tensor,
    resolution: int,
    box_warp: float = 1.0,
    method: NearestMethod = "auto",
    planes: tuple[int, ...] = tuple(range(NUM_PLANES)),
) -> Tensor:
    """Neural point cloud → tri-plane. points (B, N, 3), features (B, F, N) → (B, P, F, R, R) for the
    P planes asked for (all three by default, in ``PLANE_NAMES`` order).

    Texel (row v, col u) of plane p gets the feature of the point whose projection onto plane p
    is nearest to the texel centre.
    """
    b, f, n = features.shape
    if points.shape != (b, n, 3):
        raise ModelInputError(
            "model.bad_points", f"points {tuple(points.shape)} do not match features {tuple(features.shape)}"
        )
    queries = cell_centres(resolution, device=points.device, dtype=points.dtype)
    projected = project_to_planes(points, box_warp)  # (B, 3, N, 2)
    rasterised = [
        torch.stack(
            [
                # index_select on (F, N) writes each plane channel-first without a transpose copy.
                features[i].index_select(1, nearest_indices(projected[i, p], queries, method))
                for p in planes
            ]
        )
        for i in range(b)
    ]
    return torch.stack(rasterised).view(b, len(planes), f, resolution, resolution)


# Where colour_planes puts the points it must not lift (box_warp units): far from every texel.
_OUTSIDE_PLANES = 1000.0

OUTPUT_INIT_GAIN = 0.1  # scale of T_p's output layers at initialisation


class AppearanceUpsampler(nn.Module):
    """Rasterised features (B, 3, F, r, r) → T_p (B, 3, C, r·2^k, r·2^k), one branch per plane."""

    def __init__(self, in_channels: int, hidden: int, plane_channels: int, upsamples: int) -> None:
        super().__init__()
        self.scale = 2**upsamples
        for name in PLANE_NAMES:
            layers: list[nn.Module] = []
            width = in_channels
            for _ in range(upsamples):
                layers += [
                    nn.ConvTranspose2d(width, hidden, 4, stride=2, padding=1),
                    nn.LeakyReLU(LEAKY_SLOPE),
                ]
                width = hidden
            if upsamples == 0:
                layers += [nn.Conv2d(width, hidden, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
            layers.append(nn.Conv2d(hidden, plane_channels, 3, padding=1))
            self.add_module(f"up_{name}", nn.Sequential(*layers))
            self.add_module(f"skip_{name}", nn.Conv2d(in_channels, plane_channels, 1))
            # T_p is switched on mid-training (official-code-notes.md §7: from 240k of 695k steps)
            # into planes the decoder already reads; at full default scale it lands as a random
            # offset the decoder must first unlearn. Small output layers start it near zero while
            # keeping gradients flowing to every upsampler layer.
            for output_layer in (layers[-1], getattr(self, f"skip_{name}")):
                with torch.no_grad():
                    output_layer.weight.mul_(OUTPUT_INIT_GAIN)
                    output_layer.bias.zero_()

    def forward(self, rasterised: Tensor) -> Tensor:
        planes = []
        for p, name in enumerate(PLANE_NAMES):
            x = rasterised[:, p].contiguous(memory_format=torch.channels_last)
            up = getattr(self, f"up_{name}")(x)
            skip = getattr(self, f"skip_{name}")(x)
            if self.scale > 1:
                skip = F.interpolate(skip, scale_factor=self.scale, mode="bilinear", align_corners=False)
            planes.append((up + skip).contiguous())
        return torch.stack(planes, dim=1)


class AppearanceBranch(nn.Module):
    """E_p + lifting + rasterisation + upsampler. The depth render is the network's job."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config.appearance
        self.box_warp = config.plane.box_warp
        self.encoder = SegFormerEncoder(config.appearance.encoder)
        if config.appearance.encoder.in_channels != 3:
            reinitialise_patch_embedding(self.encoder)
        self.upsampler = AppearanceUpsampler(
            config.appearance.encoder.decoder_hidden_size,
            config.appearance.upsampler_hidden,
            config.plane.channels,
            int(round(np.log2(config.plane.resolution / config.feature_resolution))),
        )
        self.nearest_method: NearestMethod = "auto"  # runtime knob; every method gives identical indices
        self.colour_resolution = config.appearance.colour_resolution
        self.plane_resolution = config.colour_plane_resolution or config.plane.resolution
        if self.colour_resolution:
            # Scale of the lifted colour in the planes: fixed × learned (the decoder sees the 3-plane mean).
            self.colour_scale = config.appearance.colour_scale
            self.colour_gain = nn.Parameter(torch.ones(COLOUR_CHANNELS))

    def encode(self, source: Tensor, keep_mask: Tensor, canonical_rgb: Tensor | None = None) -> Tensor:
        """E_p features (B, F, h, w). ``canonical_rgb`` (B, 3, h', w') is needed in composite mode."""
        if self.config.input_mode == "masked_source":
            return self.encoder(source, keep_mask=keep_mask)
        if canonical_rgb is None:
            raise ValueError("composite appearance input needs the canonical render")
        size = source.shape[-2:]
        canonical = F.interpolate(canonical_rgb, size=size, mode="bilinear", align_corners=False)
        k = self.config.mask_erosion
        eroded = 1 - F.max_pool2d(1 - keep_mask, k, stride=1, padding=k // 2)
        blended = source * eroded + canonical * (1 - eroded)
        return self.encoder(torch.cat([blended, canonical], dim=1))

    def forward(self, features: Tensor, depth: Tensor, origins: Tensor, directions: Tensor) -> Tensor:
        """features (B, F, h, w), depth (B, 1, h, w), rays (B, h·w, 3) of the same pixels → T_p."""
        b, f, h, w = features.shape
        points = lift(origins, directions, depth.reshape(b, h * w).to(origins.dtype))
        rasterised = rasterize(points, features.reshape(b, f, h * w), h, self.box_warp, self.nearest_method)
        return self.upsampler(rasterised)

    def colour_planes(
        self,
        source: Tensor,
        keep_mask: Tensor,
        depth: Tensor,
        origins: Tensor,
        directions: Tensor,
        visible: Tensor | None = None,
    ) -> Tensor:
        """Lifted source colour for T_p's XY plane (B, 4, R, R): [RGB, keep] rasterised.

        ``depth`` (B, 1, r, r) and the rays (B, r·r, 3) are at ``colour_resolution`` r; the source
        (B, 3, S, S) and keep-mask are area-averaged to r. The result is at the colour plane's
        resolution (``ModelConfig.colour_plane_resolution``). ``visible`` (B, 1, r, r) bool: only
        these pixels are lifted (the others are moved far outside the planes, so no texel takes
        them): a background ray ends at the far end of the ray range, and from a turned source
        camera that point projects onto the face's own XY texels (0.6 behind the origin at a yaw
        of 0.24 rad is 18 texels of a 128² plane sideways), where it left a grid of black dots.
        """
        b, _, r, _ = depth.shape
        if source.shape[-1] != r:
            source = F.interpolate(source, size=(r, r), mode="area")
            keep_mask = F.interpolate(keep_mask, size=(r, r), mode="area")
        values = torch.cat([source, keep_mask], dim=1).reshape(b, COLOUR_CHANNELS, r * r)
        points = lift(origins, directions, depth.reshape(b, r * r).to(origins.dtype))
        if visible is not None:
            hidden = ~visible.reshape(b, r * r, 1)
            points = torch.where(hidden, points.new_tensor(_OUTSIDE_PLANES * self.box_warp), points)
        xy = rasterize(points, values, r, self.box_warp, self.nearest_method, planes=(0,))[:, 0]
        if r != self.plane_resolution:
            xy = F.interpolate(xy, size=(self.plane_resolution,) * 2, mode="bilinear", align_corners=False)
        return xy * (self.colour_scale * self.colour_gain).view(1, -1, 1, 1).to(xy.dtype)

    @staticmethod
    def add_colour(planes: Tensor, colour: Tensor) -> Tensor:
        """T_p (B, 3, C, R, R) with the lifted colour (B, 4, R', R') appended as four channels of its
        own: the colour in the XY plane, zeros in XZ and ZY; T_p's features are bilinearly upsampled to
        the colour's resolution R' when it is finer."""
        b, _, r, _ = colour.shape
        planes = upsample_planes(planes, r)
        blank = colour.new_zeros(b, NUM_PLANES - 1, colour.shape[1], r, r)
        return torch.cat([planes, torch.cat([colour.unsqueeze(1), blank], dim=1)], dim=2)
