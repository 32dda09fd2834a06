"""A z-buffered triangle rasteriser in plain torch (no OpenGL, no per-triangle Python loop).

Per triangle: project with the EG3D camera (``shared/model/cameras.py``), take the pixel-centre
bounding box, expand every (triangle, candidate pixel) pair with ``repeat_interleave``, test it
with edge functions, and keep the nearest per pixel with ``scatter_reduce(amin)`` on a packed
int64 key ``(float32 bits of depth) << 31 | face id``: positive float bit patterns sort like the
floats, so one integer minimum is an exact depth test that also names the winning face. The
winners' barycentrics are then recomputed per pixel and made perspective-correct.

Pixel (row i, col j) samples the image point ``u = (j + 0.5) / W, v = (i + 0.5) / H``, the same
centres ``cameras.generate_rays`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from shared.errors import CodedError
from shared.model import cameras as cam

_FACE_BITS = 31
_FACE_MASK = (1 << _FACE_BITS) - 1
_EMPTY = torch.iinfo(torch.int64).max
# Pixel-box sizes (rows and columns) of the dense stamps; larger boxes use the pair expansion.
_STAMP_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)
# Dense elements per stamp block (small enough for the temporaries to stay in cache).
_STAMP_BLOCK = 65536


class RasterizerError(CodedError, ValueError):
    """Bad rasteriser input; ``code`` is machine readable."""


class Hits(NamedTuple):
    """The covered pixels of a ``Fragments`` as flat lists (ascending pixel order)."""

    index: Tensor  # (N,) int64 flat pixel index into B*H*W
    batch: Tensor  # (N,) int64 batch item of each pixel
    face: Tensor  # (N,) int64 visible face
    barycentric: Tensor  # (N, 3) perspective-correct barycentrics
    depth: Tensor  # (N,) camera-space z


@dataclass(frozen=True)
class Fragments:
    """The nearest triangle per pixel."""

    face_index: Tensor  # (B, H, W) int64, -1 = background
    barycentric: Tensor  # (B, H, W, 3) perspective-correct, zeros on background
    depth: Tensor  # (B, H, W) camera-space z of the visible surface, 0 on background
    # The same covered pixels as flat lists, when the rasteriser already has them (saves a search).
    cached_hits: Hits | None = field(default=None, repr=False, compare=False)

    @property
    def mask(self) -> Tensor:
        """(B, H, W) bool coverage."""
        return self.face_index >= 0

    def hits(self) -> Hits:
        """The covered pixels as flat lists (from the rasteriser when it recorded them)."""
        if self.cached_hits is not None:
            return self.cached_hits
        batch, height, width = self.face_index.shape
        flat = self.face_index.reshape(-1)
        index = torch.nonzero(flat >= 0).squeeze(1)
        return Hits(
            index=index,
            batch=torch.div(index, height * width, rounding_mode="floor"),
            face=flat.index_select(0, index),
            barycentric=self.barycentric.reshape(-1, 3).index_select(0, index),
            depth=self.depth.reshape(-1).index_select(0, index),
        )

    @staticmethod
    def from_hits(hits: Hits, shape: tuple[int, int, int]) -> Fragments:
        """Dense fragments of (B, H, W) from the covered pixels."""
        count = shape[0] * shape[1] * shape[2]
        device = hits.index.device
        face_index = torch.full((count,), -1, dtype=torch.int64, device=device).index_copy_(
            0, hits.index, hits.face
        )
        depth = torch.zeros(count, dtype=torch.float32, device=device).index_copy_(0, hits.index, hits.depth)
        barycentric = torch.zeros(count, 3, dtype=torch.float32, device=device).index_copy_(
            0, hits.index, hits.barycentric
        )
        return Fragments(
            face_index=face_index.reshape(shape),
            barycentric=barycentric.reshape(*shape, 3),
            depth=depth.reshape(shape),
            cached_hits=hits,
        )

    def interpolate(self, attributes: Tensor, faces: Tensor) -> Tensor:
        """Interpolate per-vertex attributes (B, V, C) or (V, C) to pixels -> (B, H, W, C).

        Background pixels get zeros.
        """
        batch, height, width = self.face_index.shape
        channels = attributes.shape[-1]
        values = torch.zeros(
            batch * height * width, channels, dtype=attributes.dtype, device=attributes.device
        )
        # Only covered pixels are interpolated (the background is often most of the image).
        hits = self.hits()
        if hits.index.numel() > 0:
            values.index_copy_(0, hits.index, interpolate_hits(attributes, faces, hits))
        return values.reshape(batch, height, width, channels)


def interpolate_hits(attributes: Tensor, faces: Tensor, hits: Hits) -> Tensor:
    """Per-vertex attributes (B, V, C) or (V, C) interpolated at the covered pixels -> (N, C)."""
    corner_ids = faces.index_select(0, hits.face)  # (N, 3)
    if attributes.ndim == 3:
        num_vertices = attributes.shape[1]
        corner_ids = corner_ids + (hits.batch * num_vertices).unsqueeze(1)
        attributes = attributes.reshape(-1, attributes.shape[-1])
    channels = attributes.shape[-1]
    corner_values = attributes.index_select(0, corner_ids.reshape(-1)).reshape(-1, 3, channels)
    bary = hits.barycentric.unsqueeze(-1).to(corner_values.dtype)
    return (corner_values * bary).sum(dim=1)


class MeshRasterizer:
    """z-buffered rasteriser of triangle meshes seen by EG3D cameras.

    ``cull_backfaces`` drops triangles that face away from the camera (faces must be
    counter-clockwise seen from outside); a closed mesh renders the same either way, only faster.
    ``max_candidates`` bounds memory: triangles are processed in chunks of at most that many
    (triangle, pixel) pairs.
    """

    def __init__(self, *, cull_backfaces: bool = True, near: float = 1e-3, max_candidates: int = 4_000_000):
        self.cull_backfaces = cull_backfaces
        self.near = near
        self.max_candidates = max_candidates

    def project(self, vertices: Tensor, cameras: Tensor, resolution: int | tuple[int, int]) -> Tensor:
        """Vertices (B, V, 3) world -> (B, V, 3): pixel x, pixel y (continuous), camera depth."""
        height, width = _size(resolution)
        rot, trans = cam.world_to_camera(cameras)
        _, k = cam.from_vector(cameras)
        points = vertices @ rot.transpose(-1, -2) + trans.unsqueeze(-2)
        depth = points[..., 2]
        safe = torch.where(depth.abs() < 1e-12, torch.full_like(depth, 1e-12), depth)
        xn, yn = points[..., 0] / safe, points[..., 1] / safe
        fx, skew, cx = k[:, 0, 0:1], k[:, 0, 1:2], k[:, 0, 2:3]
        fy, cy = k[:, 1, 1:2], k[:, 1, 2:3]
        px = (fx * xn + skew * yn + cx) * width
        py = (fy * yn + cy) * height
        return torch.stack([px, py, depth], dim=-1)

    def rasterize(
        self, vertices: Tensor, faces: Tensor, cameras: Tensor, resolution: int | tuple[int, int]
    ) -> Fragments:
        """vertices (B, V, 3) world, faces (F, 3) int64, cameras (B, 25) -> Fragments at H x W."""
        height, width = _size(resolution)
        hits = self.rasterize_hits(vertices, faces, cameras, resolution)
        return Fragments.from_hits(hits, (vertices.shape[0], height, width))

    def rasterize_hits(
        self, vertices: Tensor, faces: Tensor, cameras: Tensor, resolution: int | tuple[int, int]
    ) -> Hits:
        """``rasterize`` as flat lists of the covered pixels only (no dense (B, H, W) buffers)."""
        height, width = _size(resolution)
        _validate(vertices, faces, cameras)
        vertices = vertices.detach().float()
        cameras = cameras.detach().float().to(vertices.device)
        faces = faces.to(vertices.device, torch.int64)
        batch, num_faces = vertices.shape[0], faces.shape[0]
        if num_faces >= (1 << _FACE_BITS):
            raise RasterizerError("too_many_faces", f"at most {1 << _FACE_BITS} faces, got {num_faces}")

        screen = self.project(vertices, cameras, (height, width))  # (B, V, 3)
        # Triangle corners as rows over all B*F triangles (triangle id = batch item * F + face):
        # x0 x1 x2 y0 y1 y2 z0 z1 z2 (9, B*F), so every per-triangle quantity is a contiguous vector.
        by_coord = screen.permute(2, 0, 1).contiguous()  # (3, B, V)
        corners = torch.stack([by_coord.index_select(2, faces[:, k]) for k in range(3)], dim=1).reshape(
            9, batch * num_faces
        )
        x0, x1, x2, y0, y1, y2, z0, z1, z2 = corners.unbind(0)
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        # Counter-clockwise-from-outside triangles that face the camera have negative area in
        # pixel coordinates (y grows downward).
        keep = (z0 > self.near) & (z1 > self.near) & (z2 > self.near) & (area.abs() > 1e-12)
        if self.cull_backfaces:
            keep &= area < 0
        col_lo = torch.ceil(torch.minimum(torch.minimum(x0, x1), x2) - 0.5).clamp(0, width)
        col_hi = torch.floor(torch.maximum(torch.maximum(x0, x1), x2) - 0.5).clamp(-1, width - 1)
        row_lo = torch.ceil(torch.minimum(torch.minimum(y0, y1), y2) - 0.5).clamp(0, height)
        row_hi = torch.floor(torch.maximum(torch.maximum(y0, y1), y2) - 0.5).clamp(-1, height - 1)
        box_w = (col_hi - col_lo + 1).clamp_min(0)
        box_h = (row_hi - row_lo + 1).clamp_min(0)
        live = keep & (box_w > 0) & (box_h > 0)

        # The z-buffer has a tail past the last pixel: stamp pixels outside their box land there
        # (with an empty key) instead of being filtered out.
        count = batch * height * width
        zbuf = torch.full(
            (count + _STAMP_SIZES[-1] * (width + 1),), _EMPTY, dtype=torch.int64, device=vertices.device
        )
        # Small boxes (nearly all triangles of a head mesh) go through fixed-size pixel stamps; the
        # rest through the general (triangle, pixel) pair expansion.
        small = (box_w <= _STAMP_SIZES[-1]) & (box_h <= _STAMP_SIZES[-1])
        stamp_ids = torch.nonzero(live & small).squeeze(1)
        if stamp_ids.numel() > 0:
            self._scatter_stamps(
                zbuf, stamp_ids, corners, (area, col_lo, row_lo, box_w, box_h), num_faces, height, width
            )
        flat_ids = torch.nonzero(live & ~small).squeeze(1)  # triangle ids
        if flat_ids.numel() > 0:
            flat_counts = (box_w * box_h).long()[flat_ids]
            ends = torch.cumsum(flat_counts, 0)
            geometry = (corners[0:3].T, corners[3:6].T, corners[6:9].T, col_lo, row_lo, box_w.long())
            start = 0
            while start < flat_ids.numel():
                # Largest chunk of triangles whose candidates fit in max_candidates (at least one).
                base = (
                    ends[start - 1] if start > 0 else torch.zeros((), dtype=torch.int64, device=ends.device)
                )
                stop = int(torch.searchsorted(ends, base + self.max_candidates, right=True))
                stop = max(stop, start + 1)
                self._scatter_chunk(
                    zbuf, flat_ids[start:stop], flat_counts[start:stop], geometry, num_faces, height, width
                )
                start = stop

        return self._resolve(zbuf[:count], corners, num_faces, height, width)

    def _scatter_stamps(
        self,
        zbuf: Tensor,
        ids: Tensor,
        corners: Tensor,
        boxes: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
        num_faces: int,
        height: int,
        width: int,
    ) -> None:
        """Triangles ``ids`` whose boxes fit a stamp, grouped by stamp size (rows x columns from
        ``_STAMP_SIZES``): each group tests dense (rows, columns, T) blocks of pixel centres by
        broadcasting per-triangle vectors, with no per-pair gathers and no filtering (pixels
        outside the triangle scatter an empty key).

        The arithmetic is the same, operation for operation, as ``_barycentric`` and the depth of
        ``_scatter_chunk``, so every key (and the z-buffer) is bit-identical to the pair expansion.
        """
        device = zbuf.device
        area, col_lo, row_lo, box_w, box_h = boxes
        sizes = torch.tensor(_STAMP_SIZES, dtype=torch.float32, device=device)
        classes = len(_STAMP_SIZES)
        group = torch.bucketize(box_h[ids], sizes) * classes + torch.bucketize(box_w[ids], sizes)
        group = group.to(torch.uint8)  # small keys sort by radix
        order = torch.sort(group).indices
        ids = ids[order]
        per_group = torch.bincount(group, minlength=classes * classes).tolist()
        table = torch.cat(
            [
                corners.index_select(1, ids),
                torch.stack([area, col_lo, row_lo, box_w, box_h]).index_select(1, ids),
            ]
        )  # (14, T), grouped
        batch_index = torch.div(ids, num_faces, rounding_mode="floor")
        face = ids - batch_index * num_faces
        pixel_base = (batch_index * height + table[11].long()) * width + table[10].long()
        start = 0
        for g, count in enumerate(per_group):
            if count == 0:
                continue
            rows, cols = _STAMP_SIZES[g // classes], _STAMP_SIZES[g % classes]
            step = max(1, min(self.max_candidates, _STAMP_BLOCK) // (rows * cols))
            for lo in range(start, start + count, step):
                hi = min(lo + step, start + count)
                _scatter_stamp_block(zbuf, table[:, lo:hi], face[lo:hi], pixel_base[lo:hi], rows, cols, width)
            start += count

    def _scatter_chunk(
        self,
        zbuf: Tensor,
        ids: Tensor,
        counts: Tensor,
        geometry: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
        num_faces: int,
        height: int,
        width: int,
    ) -> None:
        x, y, z, col_lo, row_lo, box_w = geometry  # (B*F, 3) corners, (B*F,) boxes
        total = int(counts.sum())
        owner = torch.repeat_interleave(
            torch.arange(ids.numel(), device=ids.device), counts, output_size=total
        )
        first = torch.cumsum(counts, 0) - counts
        local = torch.arange(total, device=ids.device) - first[owner]
        tri_id = ids[owner]
        w_box = box_w[tri_id]
        row = row_lo[tri_id].long() + local // w_box
        col = col_lo[tri_id].long() + local % w_box
        px, py = col.float() + 0.5, row.float() + 0.5
        tx, ty, tz = x[tri_id], y[tri_id], z[tri_id]  # (N, 3)
        bary = _barycentric(tx, ty, px, py)
        inside = (bary >= 0).all(dim=-1)
        if not bool(inside.any()):
            return
        bary, tz, row, col, tri_id = bary[inside], tz[inside], row[inside], col[inside], tri_id[inside]
        depth = 1.0 / (bary / tz).sum(dim=-1)  # perspective-correct depth
        batch_index = torch.div(tri_id, num_faces, rounding_mode="floor")
        face = tri_id - batch_index * num_faces
        key = (depth.float().view(torch.int32).long() << _FACE_BITS) | face
        pixel = (batch_index * height + row) * width + col
        zbuf.scatter_reduce_(0, pixel, key, reduce="amin", include_self=True)

    def _resolve(self, zbuf: Tensor, corners: Tensor, num_faces: int, height: int, width: int) -> Hits:
        hit_idx = torch.nonzero(zbuf != _EMPTY).squeeze(1)
        keys = zbuf.index_select(0, hit_idx)
        face = keys & _FACE_MASK
        # int32 division is several times faster than int64 (B*H*W < 2**31 in practice).
        small = zbuf.shape[0] < (1 << 31)
        flat = hit_idx.to(torch.int32) if small else hit_idx
        b = torch.div(flat, height * width, rounding_mode="floor")
        pix = flat - b * (height * width)
        row = torch.div(pix, width, rounding_mode="floor")
        col = pix - row * width
        b = b.long()
        tri = corners.index_select(1, b * num_faces + face)  # (9, N)
        x0, x1, x2, y0, y1, y2, z0, z1, z2 = tri.unbind(0)
        # _barycentric's arithmetic on contiguous vectors (the same results, bit for bit).
        px, py = col.float() + 0.5, row.float() + 0.5
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        w0 = (x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)
        w1 = (x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)
        w2 = area - w0 - w1
        weighted = [(w / area).clamp_min(0) / zk for w, zk in ((w0, z0), (w1, z1), (w2, z2))]
        total = weighted[0] + weighted[1] + weighted[2]
        return Hits(
            index=hit_idx,
            batch=b,
            face=face,
            barycentric=torch.stack([w / total for w in weighted], dim=-1),
            depth=(keys >> _FACE_BITS).to(torch.int32).view(torch.float32),
        )


def _scatter_stamp_block(
    zbuf: Tensor, table: Tensor, face: Tensor, pixel_base: Tensor, rows: int, cols: int, width: int
) -> None:
    """One dense (rows, cols, T) stamp block into the z-buffer; T (the triangles) is innermost."""
    device = table.device
    x0, x1, x2, y0, y1, y2, z0, z1, z2, area, col_lo, row_lo, box_w, box_h = table.unbind(0)
    j = torch.arange(cols, device=device, dtype=torch.float32).unsqueeze(1)  # (cols, 1)
    i = torch.arange(rows, device=device, dtype=torch.float32).unsqueeze(1)  # (rows, 1)
    px = col_lo + j + 0.5  # (cols, T): the same pixel centres as (col_lo + j).float() + 0.5
    py = row_lo + i + 0.5  # (rows, T)
    dx0, dx1, dx2 = ((xk - px).unsqueeze(0) for xk in (x0, x1, x2))  # (1, cols, T)
    dy0, dy1, dy2 = ((yk - py).unsqueeze(1) for yk in (y0, y1, y2))  # (rows, 1, T)
    w0 = dx1 * dy2 - dx2 * dy1
    w1 = dx2 * dy0 - dx0 * dy2
    w2 = area - w0 - w1
    b0, b1, b2 = w0 / area, w1 / area, w2 / area
    inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0)
    inside &= (j < box_w).unsqueeze(0) & (i < box_h).unsqueeze(1)
    depth = 1.0 / (b0 / z0 + b1 / z1 + b2 / z2)  # perspective-correct depth
    key = torch.where(inside, (depth.view(torch.int32).long() << _FACE_BITS) | face, _EMPTY)
    offsets = torch.arange(rows, device=device).view(rows, 1, 1) * width + torch.arange(
        cols, device=device
    ).view(1, cols, 1)
    zbuf.scatter_reduce_(
        0, (pixel_base + offsets).reshape(-1), key.reshape(-1), reduce="amin", include_self=True
    )


def _barycentric(tx: Tensor, ty: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """Screen-space barycentrics (N, 3) of points (px, py) in triangles (N, 3) x/y."""
    x0, x1, x2 = tx.unbind(-1)
    y0, y1, y2 = ty.unbind(-1)
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    w0 = (x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)
    w1 = (x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)
    w2 = area - w0 - w1
    return torch.stack([w0, w1, w2], dim=-1) / area.unsqueeze(-1)


def _size(resolution: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    if height <= 0 or width <= 0:
        raise RasterizerError("bad_resolution", f"resolution must be positive, got {resolution}")
    return int(height), int(width)


def _validate(vertices: Tensor, faces: Tensor, cameras: Tensor) -> None:
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise RasterizerError("bad_vertices", f"vertices must be (B, V, 3), got {tuple(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise RasterizerError("bad_faces", f"faces must be (F, 3), got {tuple(faces.shape)}")
    if cameras.ndim != 2 or cameras.shape != (vertices.shape[0], 25):
        raise RasterizerError(
            "bad_cameras", f"cameras must be (B, 25) with B = {vertices.shape[0]}, got {tuple(cameras.shape)}"
        )
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[1]):
        raise RasterizerError("bad_faces", "face index out of range")
