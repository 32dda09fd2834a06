"""Tri-plane conventions: plane axes, box warp, sampling and summation.

A tri-plane tensor has shape (B, 3, C, R, R). Plane ``p`` is indexed (row, col) = (v, u) with

=====  ======  ======  ======
plane  name    u ←     v ←
=====  ======  ======  ======
0      XY      x       y
1      XZ      x       z
2      ZY      z       y
=====  ======  ======  ======

World coordinates are scaled by ``2 / box_warp`` so the cube [-box_warp/2, box_warp/2]³ fills the
planes. Sampling is bilinear with zero padding and ``align_corners=False`` (texel centres at
``(2k + 1) / R - 1``), i.e. exactly ``torch.nn.functional.grid_sample`` on each plane; the three
samples are averaged (the EG3D decoder's first step). The paper combines tri-planes by a plain
sum (T_c + T_e + T_p), see `sum_planes`.

`sample_planes` does not call ``grid_sample``: it gathers the 12 bilinear taps of the three
planes from one channels-last table with ``embedding_bag`` (weighted sum, fused), which on CPU
is several times faster for the millions of points a render queries, and numerically the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from shared.model.errors import ModelInputError

# (u axis, v axis) of each plane; 0 = x, 1 = y, 2 = z.
PLANE_AXES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (2, 1))
PLANE_NAMES: tuple[str, ...] = ("xy", "xz", "zy")
NUM_PLANES = 3

# Points per embedding_bag call: big enough to amortise the call, small enough to stay in cache.
DEFAULT_SAMPLE_CHUNK = 32768


def check_planes(planes: Tensor) -> None:
    if planes.ndim != 5 or planes.shape[1] != NUM_PLANES or planes.shape[-1] != planes.shape[-2]:
        raise ModelInputError(
            "model.bad_planes", f"tri-planes must be (B, 3, C, R, R), got {tuple(planes.shape)}"
        )


def project_to_planes(points: Tensor, box_warp: float = 1.0) -> Tensor:
    """World points (B, N, 3) → normalised plane coordinates (B, 3, N, 2) in grid_sample's (u, v) order."""
    scaled = points * (2.0 / box_warp)
    return torch.stack([scaled[..., list(axes)] for axes in PLANE_AXES], dim=1)


def cell_centres(
    resolution: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Normalised (u, v) of every texel centre, (R*R, 2), row-major (index = row * R + col)."""
    centres = (torch.arange(resolution, device=device, dtype=dtype) * 2 + 1) / resolution - 1
    vv, uu = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=-1)


def upsample_planes(planes: Tensor, resolution: int) -> Tensor:
    """Tri-planes (B, 3, C, R, R) bilinearly resized to ``resolution`` (returned as is when equal)."""
    b, n, c, r, _ = planes.shape
    if r == resolution:
        return planes
    flat = F.interpolate(
        planes.reshape(b * n, c, r, r), size=(resolution, resolution), mode="bilinear", align_corners=False
    )
    return flat.view(b, n, c, resolution, resolution)


def sum_planes(*planes: Tensor | None) -> Tensor:
    """T_c + T_e + T_p: the paper's combination is an unweighted sum (None terms are skipped).

    Terms at a lower resolution than the finest (T_c and T_e at 64² when T_p carries a 128² colour
    plane, ``AppearanceConfig.colour_plane_resolution``) are bilinearly upsampled to it first."""
    present = [p for p in planes if p is not None]
    if not present:
        raise ModelInputError("model.bad_planes", "nothing to sum")
    resolution = max(p.shape[-1] for p in present)
    total = upsample_planes(present[0], resolution)
    for p in present[1:]:
        total = total + upsample_planes(p, resolution)
    return total


def pad_channels(planes: Tensor, channels: int) -> Tensor:
    """Tri-planes (B, 3, C, R, R) with zero channels appended up to ``channels``."""
    extra = channels - planes.shape[2]
    if extra < 0:
        raise ModelInputError("model.bad_planes", f"planes have {planes.shape[2]} > {channels} channels")
    return planes if extra == 0 else F.pad(planes, (0, 0, 0, 0, 0, extra))


class PlaneTable:
    """The tri-planes of a batch, padded by one zero texel and laid out channels-last for gathering.

    Build once per render; `sample` is then called for every chunk of points.

    ``linear = (weight, bias)`` (out, C) and (out,) stores ``weight @ texel + bias`` instead of the
    texel, border included (where the texel is 0, so the border holds ``bias``); `sample` then
    returns ``linear(mean of the samples)`` (N, out). Exact up to float rounding: bilinear sampling
    and the plane mean are a weighted sum whose 12 weights sum to one, and a linear map commutes
    with it. The renderer uses it to fold the decoder's first layer into the table at inference.
    """

    def __init__(
        self, planes: Tensor, box_warp: float = 1.0, linear: tuple[Tensor, Tensor] | None = None
    ) -> None:
        check_planes(planes)
        self.batch, _, self.channels, self.resolution, _ = planes.shape
        self.box_warp = box_warp
        # One zero texel before each axis and two after: texel coordinates are clamped to
        # [0, R + 1] (the border) before flooring, so the upper tap can reach R + 2. Border taps
        # read 0 = grid_sample's zero padding.
        self.padded = self.resolution + 3
        padded = F.pad(planes, (1, 2, 1, 2))
        texels = padded.permute(0, 1, 3, 4, 2).reshape(-1, self.channels)
        if linear is None:
            self.table = texels.contiguous()
        else:
            weight, bias = linear
            self.table = torch.addmm(bias.to(texels.dtype), texels, weight.to(texels.dtype).t())
        # Index arithmetic runs in float (exact below 2^24 table rows) and is converted once.
        self._index_dtype = torch.float32 if self.table.shape[0] < 2**24 else torch.float64
        # The 12 taps (3 planes × 2 rows × 2 columns) as one small matrix product: row index of
        # tap t = [floor(x), floor(y), floor(z), batch] @ tap_matrix[:, t] + tap_offset[t] (integers,
        # exact in float), and its weight = (1 − f, f)[v side] / 3 × (1 − f, f)[u side].
        width = self.padded
        matrix = torch.zeros(4, 4 * NUM_PLANES, dtype=torch.float64)
        offsets, v_columns, u_columns = [], [], []
        for plane, (u, v) in enumerate(PLANE_AXES):
            for dv in (0, 1):
                for du in (0, 1):
                    tap = len(offsets)
                    matrix[v, tap], matrix[u, tap] = width, 1
                    matrix[3, tap] = NUM_PLANES * width**2
                    offsets.append(plane * width**2 + dv * width + du)
                    # Columns of [1 − frac (x, y, z), frac (x, y, z)].
                    v_columns.append(v + 3 * dv)
                    u_columns.append(u + 3 * du)
        device = planes.device
        self._tap_matrix = matrix.to(device=device, dtype=self._index_dtype)
        self._tap_offsets = torch.tensor(offsets, device=device, dtype=self._index_dtype)
        self._v_columns = torch.tensor(v_columns, device=device)
        self._u_columns = torch.tensor(u_columns, device=device)

    def sample(self, points: Tensor, batch_index: Tensor | int) -> Tensor:
        """Mean over the three planes of the bilinear samples at world points (N, 3) → (N, C)
        (→ (N, out) with ``linear``: that layer applied to the mean).

        ``batch_index``: the batch element of every point (N,) or one for all.
        """
        res = self.resolution
        # Texel coordinate with align_corners=False, +1 for the zero border:
        # x_pix = (x_norm + 1) * R / 2 - 0.5 + 1. Points beyond the border are clamped onto it,
        # where they read zeros, as grid_sample's zero padding does (their upper tap has weight 0).
        pix = (points.to(self._index_dtype) * (res / self.box_warp) + (res + 1) / 2).clamp_(0, res + 1)
        coords = torch.empty(points.shape[0], 4, device=points.device, dtype=self._index_dtype)
        torch.floor(pix, out=coords[:, :3])
        coords[:, 3] = batch_index
        # Whole numbers below 2^24 (2^53 in float64): the product is exact in any summation order.
        index = torch.addmm(self._tap_offsets, coords, self._tap_matrix).to(torch.int32)
        frac = (pix - coords[:, :3]).to(self.table.dtype)
        sides = torch.cat([1 - frac, frac], dim=1)
        # The plane mean (1/3) rides on the v-side factor, as one weight per tap.
        weights = sides.index_select(1, self._v_columns).mul_(1.0 / NUM_PLANES)
        weights.mul_(sides.index_select(1, self._u_columns))
        return F.embedding_bag(index, self.table, per_sample_weights=weights, mode="sum")


def sample_planes(
    planes: Tensor, points: Tensor, box_warp: float = 1.0, chunk: int = DEFAULT_SAMPLE_CHUNK
) -> Tensor:
    """Mean of the three planes' bilinear samples at points (B, N, 3) → (B, N, C). Differentiable."""
    if points.ndim != 3 or points.shape[-1] != 3 or points.shape[0] != planes.shape[0]:
        raise ModelInputError(
            "model.bad_points", f"points must be (B, N, 3) matching planes, got {tuple(points.shape)}"
        )
    table = PlaneTable(planes, box_warp)
    out = []
    for b in range(points.shape[0]):
        out.append(torch.cat([table.sample(c, b) for c in points[b].split(chunk)], dim=0))
    return torch.stack(out, dim=0)


def sample_planes_grid_sample(planes: Tensor, points: Tensor, box_warp: float = 1.0) -> Tensor:
    """Per-plane reference sampling with ``grid_sample`` → (B, 3, N, C) (used by tests and tools)."""
    check_planes(planes)
    b, _, c, r, _ = planes.shape
    grid = project_to_planes(points, box_warp).reshape(b * NUM_PLANES, 1, -1, 2)
    out = F.grid_sample(
        planes.reshape(b * NUM_PLANES, c, r, r),
        grid.to(planes.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return out.reshape(b, NUM_PLANES, c, -1).transpose(-1, -2)
