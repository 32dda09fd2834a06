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

from dataclasses import dataclass

import torch
from torch import Tensor

from shared.errors import CodedError
from shared.model import cameras as cam

_FACE_BITS = 31
_FACE_MASK = (1 << _FACE_BITS) - 1
_EMPTY = torch.iinfo(torch.int64).max


class RasterizerError(CodedError, ValueError):
    """Bad rasteriser input; ``code`` is machine readable."""


@dataclass(frozen=True)
class Fragments:
    """The nearest triangle per pixel."""

    face_index: Tensor  # (B, H, W) int64, -1 = background
    barycentric: Tensor  # (B, H, W, 3) perspective-correct, zeros on background
    depth: Tensor  # (B, H, W) camera-space z of the visible surface, 0 on background

    @property
    def mask(self) -> Tensor:
        """(B, H, W) bool coverage."""
        return self.face_index >= 0

    def interpolate(self, attributes: Tensor, faces: Tensor) -> Tensor:
        """Interpolate per-vertex attributes (B, V, C) or (V, C) to pixels -> (B, H, W, C).

        Background pixels get zeros.
        """
        batch, height, width = self.face_index.shape
        if attributes.ndim == 2:
            attributes = attributes.unsqueeze(0).expand(batch, -1, -1)
        num_vertices, channels = attributes.shape[1], attributes.shape[2]
        # Only covered pixels are interpolated (the background is often most of the image).
        hit = torch.nonzero(self.face_index.reshape(-1) >= 0).squeeze(1)
        batch_of_hit = torch.div(hit, height * width, rounding_mode="floor")
        corner_ids = faces[self.face_index.reshape(-1)[hit]] + (batch_of_hit * num_vertices).unsqueeze(1)
        flat = attributes.reshape(batch * num_vertices, channels)
        corner_values = flat[corner_ids.reshape(-1)].reshape(-1, 3, channels)
        bary = self.barycentric.reshape(-1, 3)[hit].unsqueeze(-1).to(corner_values.dtype)
        values = torch.zeros(
            batch * height * width, channels, dtype=attributes.dtype, device=attributes.device
        )
        values[hit] = (corner_values * bary).sum(dim=1)
        return values.reshape(batch, height, width, channels)


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
        _validate(vertices, faces, cameras)
        vertices = vertices.detach().float()
        cameras = cameras.detach().float().to(vertices.device)
        faces = faces.to(vertices.device, torch.int64)
        batch, num_faces = vertices.shape[0], faces.shape[0]
        if num_faces >= (1 << _FACE_BITS):
            raise RasterizerError("too_many_faces", f"at most {1 << _FACE_BITS} faces, got {num_faces}")

        screen = self.project(vertices, cameras, (height, width))  # (B, V, 3)
        tri = screen[:, faces]  # (B, F, 3, 3)
        x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]
        area = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (x[..., 2] - x[..., 0]) * (
            y[..., 1] - y[..., 0]
        )
        # Counter-clockwise-from-outside triangles that face the camera have negative area in
        # pixel coordinates (y grows downward).
        keep = (z > self.near).all(dim=-1) & (area.abs() > 1e-12)
        if self.cull_backfaces:
            keep &= area < 0
        col_lo = torch.ceil(x.min(dim=-1).values - 0.5).clamp(0, width)
        col_hi = torch.floor(x.max(dim=-1).values - 0.5).clamp(-1, width - 1)
        row_lo = torch.ceil(y.min(dim=-1).values - 0.5).clamp(0, height)
        row_hi = torch.floor(y.max(dim=-1).values - 0.5).clamp(-1, height - 1)
        box_w = (col_hi - col_lo + 1).clamp_min(0).long()
        box_h = (row_hi - row_lo + 1).clamp_min(0).long()
        counts = torch.where(keep, box_w * box_h, torch.zeros_like(box_w))

        flat_ids = torch.nonzero(counts.reshape(-1) > 0).squeeze(1)  # ids in B*F
        zbuf = torch.full((batch * height * width,), _EMPTY, dtype=torch.int64, device=vertices.device)
        if flat_ids.numel() > 0:
            flat_counts = counts.reshape(-1)[flat_ids]
            ends = torch.cumsum(flat_counts, 0)
            start = 0
            while start < flat_ids.numel():
                # Largest chunk of triangles whose candidates fit in max_candidates (at least one).
                base = (
                    ends[start - 1] if start > 0 else torch.zeros((), dtype=torch.int64, device=ends.device)
                )
                stop = int(torch.searchsorted(ends, base + self.max_candidates, right=True))
                stop = max(stop, start + 1)
                self._scatter_chunk(
                    zbuf,
                    flat_ids[start:stop],
                    flat_counts[start:stop],
                    (x, y, z, col_lo, row_lo, box_w),
                    num_faces,
                    height,
                    width,
                )
                start = stop

        return self._resolve(zbuf, tri, batch, height, width)

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
        x, y, z, col_lo, row_lo, box_w = (g.reshape(-1, *g.shape[2:]) for g in geometry)
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

    def _resolve(self, zbuf: Tensor, tri: Tensor, batch: int, height: int, width: int) -> Fragments:
        hit = zbuf != _EMPTY
        face_index = torch.where(hit, zbuf & _FACE_MASK, torch.full_like(zbuf, -1))
        depth = torch.zeros(zbuf.shape, dtype=torch.float32, device=zbuf.device)
        barycentric = torch.zeros(zbuf.shape[0], 3, dtype=torch.float32, device=zbuf.device)
        hit_idx = torch.nonzero(hit).squeeze(1)
        if hit_idx.numel() > 0:
            depth_bits = (zbuf[hit_idx] >> _FACE_BITS).to(torch.int32)
            depth[hit_idx] = depth_bits.view(torch.float32)
            b = torch.div(hit_idx, height * width, rounding_mode="floor")
            pix = hit_idx - b * height * width
            row = torch.div(pix, width, rounding_mode="floor")
            col = pix - row * width
            face = face_index[hit_idx]
            corners = tri[b, face]  # (N, 3, 3)
            screen_bary = _barycentric(
                corners[..., 0], corners[..., 1], col.float() + 0.5, row.float() + 0.5
            ).clamp_min(0)
            weighted = screen_bary / corners[..., 2]
            barycentric[hit_idx] = weighted / weighted.sum(dim=-1, keepdim=True)
        return Fragments(
            face_index=face_index.reshape(batch, height, width),
            barycentric=barycentric.reshape(batch, height, width, 3),
            depth=depth.reshape(batch, height, width),
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
