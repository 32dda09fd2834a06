"""Shaded renders of morphable-model meshes: I_exp, I_neu and M_neu of the paper.

Shading is Lambertian with one light that travels with the camera (slightly above it) plus an
ambient term, on interpolated vertex normals. ``shading="shape"`` uses a uniform grey albedo
(geometry only); ``shading="albedo"`` multiplies the model's per-vertex albedo. The optional
``vertex_shading`` of a model darkens cavities (open mouth, nostrils) in both modes. Images are in
[-1, 1] with a black (-1) background; masks are {0, 1} floats.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from shared.errors import CodedError
from shared.face.morphable import MorphableModel
from shared.face.rasterizer import Fragments, Hits, MeshRasterizer, interpolate_hits
from shared.model import cameras as cam

Shading = Literal["shape", "albedo"]

# The fixed frontal camera of I_exp (the paper's C_front).
EXPRESSION_CAMERA = cam.frontal_camera()
# Direction toward the light in OpenCV camera axes (x right, y down, z forward): from the camera,
# a little above it.
LIGHT_DIRECTION_CAMERA = torch.nn.functional.normalize(torch.tensor([0.0, -0.35, -1.0]), dim=0)
AMBIENT = 0.3
DIFFUSE = 0.7
SHAPE_ALBEDO = 0.72

_DEFAULT_RASTERIZER = MeshRasterizer()


class RenderError(CodedError, ValueError):
    """Bad render request; ``code`` is machine readable."""


def shade(
    model: MorphableModel,
    vertices: Tensor,
    cameras: Tensor,
    fragments: Fragments,
    shading: Shading = "shape",
) -> Tensor:
    """Colour (B, 3, H, W) in [-1, 1] of rasterised fragments, black background."""
    image = _shade_image(model, vertices, cameras, fragments.hits(), fragments.face_index.shape, shading)
    return image if image.shape[1] == 3 else image.expand(-1, 3, -1, -1).contiguous()


def _shade_image(
    model: MorphableModel,
    vertices: Tensor,
    cameras: Tensor,
    hits: Hits,
    shape: tuple[int, int, int],
    shading: Shading,
) -> Tensor:
    """``shade`` with one channel for ``shape`` shading (its three channels are equal).

    Only the covered pixels are shaded: normals, cavity shading and albedo are interpolated in one
    gather, with the same per-pixel arithmetic as ``Fragments.interpolate`` (bit-identical results).
    """
    if shading not in ("shape", "albedo"):
        raise RenderError("bad_shading", f"shading must be 'shape' or 'albedo', got {shading!r}")
    if shading == "albedo" and model.albedo is None:
        raise RenderError("no_albedo", f"model {model.name} has no albedo; use shading='shape'")
    device = vertices.device
    batch, height, width = shape
    channels = 1 if shading == "shape" else 3
    image = torch.full((batch * channels * height * width,), -1.0, dtype=torch.float32, device=device)
    if hits.index.numel() > 0:
        faces = model.faces.to(device)
        # Per-vertex table in (V, B, C) layout: normals, cavity shading, albedo.
        table = [_vertex_normals_vb(vertices, faces)]
        if model.vertex_shading is not None:
            table.append(model.vertex_shading.to(device).reshape(-1, 1, 1).expand(-1, batch, -1))
        if shading == "albedo":
            assert model.albedo is not None
            table.append(model.albedo.to(device).unsqueeze(1).expand(-1, batch, -1))
        flat = torch.cat(table, dim=-1).reshape(-1, sum(t.shape[-1] for t in table))
        # Fragments.interpolate's arithmetic (bit-identical), with row = vertex * B + batch item.
        corner_ids = faces.index_select(0, hits.face) * batch + hits.batch.unsqueeze(1)
        corner_values = flat.index_select(0, corner_ids.reshape(-1)).reshape(-1, 3, flat.shape[-1])
        values = (corner_values * hits.barycentric.unsqueeze(-1)).sum(dim=1)  # (N, C)
        normals = torch.nn.functional.normalize(values[:, :3], dim=-1, eps=1e-12)
        rot, _ = cam.world_to_camera(cameras)
        light_world = LIGHT_DIRECTION_CAMERA.to(rot) @ rot  # R^T l, batched: (B, 3)
        lambert = (normals * light_world.index_select(0, hits.batch)).sum(-1).clamp_min(0.0)
        intensity = AMBIENT + DIFFUSE * lambert  # (N,)
        if model.vertex_shading is not None:
            intensity = intensity * values[:, 3]
        if shading == "albedo":
            start = 3 if model.vertex_shading is None else 4
            colour = values[:, start : start + 3] * intensity.unsqueeze(-1)
        else:
            colour = (SHAPE_ALBEDO * intensity).unsqueeze(-1)
        colour = colour.clamp(0.0, 1.0) * 2.0 - 1.0
        # Flat position of (b, c, pixel) in (B, C, H*W): the hit's B*H*W index + (C - 1) b H W + c H W.
        plane = height * width
        base = hits.index + hits.batch * ((channels - 1) * plane) if channels > 1 else hits.index
        for c in range(channels):
            image.index_copy_(0, base + c * plane if c else base, colour[:, c].contiguous())
    return image.reshape(batch, channels, height, width)


def _vertex_normals_vb(vertices: Tensor, faces: Tensor) -> Tensor:
    """``vertex_normals`` (bit-identical) in (V, B, 3) layout: one contiguous row per vertex makes
    the gathers and the scatter-add several times faster than on (B, V, 3)."""
    batch, num_vertices = vertices.shape[0], vertices.shape[1]
    rows = vertices.permute(1, 0, 2).reshape(num_vertices, batch * 3)
    v0, v1, v2 = (rows.index_select(0, faces[:, k]).view(-1, batch, 3) for k in range(3))
    face_normals = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)  # (F, B, 3)
    normals = torch.zeros(num_vertices, batch, 3, dtype=vertices.dtype, device=vertices.device)
    # Same accumulation order as vertex_normals' index_add_ (corner 0 of every face, then 1, 2).
    normals.index_add_(0, faces.T.reshape(-1), face_normals.repeat(3, 1, 1))
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)


def _check_cameras(cameras: Tensor, batch: int) -> Tensor:
    if cameras.ndim == 1:
        cameras = cameras.unsqueeze(0)
    if cameras.shape[-1] != 25:
        raise RenderError("bad_cameras", f"cameras must be (B, 25), got {tuple(cameras.shape)}")
    if cameras.shape[0] == 1 and batch > 1:
        cameras = cameras.expand(batch, 25)
    if cameras.shape[0] != batch:
        raise RenderError("bad_cameras", f"{cameras.shape[0]} cameras for a batch of {batch}")
    return cameras.float()


def _pool(x: Tensor, factor: int) -> Tensor:
    return x if factor == 1 else torch.nn.functional.avg_pool2d(x, factor)


def render_fragments(
    model: MorphableModel,
    vertices: Tensor,
    cameras: Tensor,
    resolution: int,
    *,
    shading: Shading = "shape",
    rasterizer: MeshRasterizer | None = None,
) -> tuple[Tensor, Fragments]:
    """Image (B, 3, H, W) and the fragments it came from (no supersampling)."""
    cameras = _check_cameras(cameras, vertices.shape[0]).to(vertices.device)
    vertices = vertices.detach().float()
    fragments = (rasterizer or _DEFAULT_RASTERIZER).rasterize(vertices, model.faces, cameras, resolution)
    return shade(model, vertices, cameras, fragments, shading), fragments


def render_mesh(
    model: MorphableModel,
    vertices: Tensor,
    cameras: Tensor,
    resolution: int,
    *,
    shading: Shading = "shape",
    supersample: int = 1,
    rasterizer: MeshRasterizer | None = None,
) -> tuple[Tensor, Tensor]:
    """Render vertices (B, V, 3) of ``model`` from cameras (B, 25) or (25,).

    Returns image (B, 3, H, W) in [-1, 1] (black background) and mask (B, 1, H, W) in {0, 1}.
    ``supersample`` > 1 renders at that factor and averages down (anti-aliased edges; the mask
    is then the majority coverage).
    """
    image, hits = _render_pooled(model, vertices, cameras, resolution, shading, supersample, rasterizer)
    size = resolution * supersample
    mask = torch.zeros(vertices.shape[0] * size * size, dtype=torch.float32, device=image.device)
    mask = mask.index_fill_(0, hits.index, 1.0).reshape(-1, 1, size, size)
    return image, (_pool(mask, supersample) >= 0.5).float()


def _render_pooled(
    model: MorphableModel,
    vertices: Tensor,
    cameras: Tensor,
    resolution: int,
    shading: Shading,
    supersample: int,
    rasterizer: MeshRasterizer | None = None,
) -> tuple[Tensor, Hits]:
    """The (B, 3, H, W) image averaged down from ``supersample`` x the resolution, and the
    covered pixels at full resolution. ``shape`` images are shaded and pooled as one channel."""
    if supersample < 1:
        raise RenderError("bad_supersample", f"supersample must be >= 1, got {supersample}")
    cameras = _check_cameras(cameras, vertices.shape[0]).to(vertices.device)
    vertices = vertices.detach().float()
    size = resolution * supersample
    hits = (rasterizer or _DEFAULT_RASTERIZER).rasterize_hits(vertices, model.faces, cameras, size)
    image = _shade_image(model, vertices, cameras, hits, (vertices.shape[0], size, size), shading)
    image = _pool(image, supersample)
    if image.shape[1] != 3:
        image = image.expand(-1, 3, -1, -1).contiguous()
    return image, hits


def render_expression(
    model: MorphableModel,
    alpha: Tensor,
    beta: Tensor,
    resolution: int,
    *,
    shading: Shading = "shape",
    supersample: int = 1,
) -> Tensor:
    """I_exp: the mesh of (alpha_source, beta_target) at the fixed frontal camera, (B, 3, H, W)."""
    # The model lives on the CPU; the render runs wherever the coefficients are.
    vertices = model.vertices(alpha.cpu(), beta.cpu()).to(alpha.device)
    image, _ = _render_pooled(model, vertices, EXPRESSION_CAMERA, resolution, shading, supersample)
    return image


# Expression-change map (`render_expression_change`): a surface point counts as moved from
# CHANGE_START world units (~¼ of a 128² colour-plane texel over the unit box) and fully from
# CHANGE_FULL; cavity vertices (vertex_shading below CAVITY_SHADING: the open mouth's inside) count
# as moved whenever they are visible, since they are hidden in the neutral face.
CHANGE_START = 0.002
CHANGE_FULL = 0.008
CAVITY_SHADING = 0.5


def render_expression_change(
    model: MorphableModel, alpha: Tensor, beta: Tensor, resolution: int, *, supersample: int = 1
) -> Tensor:
    """Where the face of (α, β) has moved from its neutral (β = 0), in I_exp's frontal view:
    (B, 1, H, W) in [0, 1], 0 on the background.

    It marks the source colour that an expression invalidates (the network's source-colour gate,
    shared/model/expression.py): a point's displacement |v(α, β) − v(α, 0)| ramped from
    ``CHANGE_START`` to ``CHANGE_FULL``, and 1 on the open mouth's cavity."""
    if supersample < 1:
        raise RenderError("bad_supersample", f"supersample must be >= 1, got {supersample}")
    alpha, beta = alpha.cpu().float(), beta.cpu().float()
    moved_to = model.vertices(alpha, beta)
    neutral = model.vertices(alpha, torch.zeros_like(beta))
    change = ((moved_to - neutral).norm(dim=-1) - CHANGE_START) / (CHANGE_FULL - CHANGE_START)
    change = change.clamp(0.0, 1.0)
    if model.vertex_shading is not None:
        cavity = (model.vertex_shading.reshape(-1) < CAVITY_SHADING).float()
        change = torch.maximum(change, cavity.unsqueeze(0).expand_as(change))
    cameras = _check_cameras(EXPRESSION_CAMERA, moved_to.shape[0])
    size = resolution * supersample
    hits = _DEFAULT_RASTERIZER.rasterize_hits(moved_to, model.faces, cameras, size)
    flat = torch.zeros(moved_to.shape[0] * size * size, dtype=torch.float32)
    if hits.index.numel() > 0:
        values = interpolate_hits(change.unsqueeze(-1), model.faces, hits)[:, 0]
        flat.index_copy_(0, hits.index, values)
    return _pool(flat.reshape(-1, 1, size, size), supersample)


def render_neutral(
    model: MorphableModel,
    alpha: Tensor,
    cameras: Tensor,
    resolution: int,
    *,
    shading: Shading = "shape",
    supersample: int = 1,
) -> tuple[Tensor, Tensor]:
    """I_neu (B, 3, H, W) with beta = 0 at ``cameras``, and M_neu (B, 1, H, W): pixels where the
    visible surface belongs to the model's face region (always inside the silhouette)."""
    beta = torch.zeros(alpha.shape[0], model.num_expression)
    vertices = model.vertices(alpha.cpu(), beta).to(alpha.device)
    image, fragments = render_fragments(model, vertices, cameras, resolution * supersample, shading=shading)
    device = vertices.device
    region = fragments.interpolate(model.face_region.float().unsqueeze(-1).to(device), model.faces.to(device))
    region = region[..., 0]
    face_mask = ((region >= 0.5) & fragments.mask).unsqueeze(1).float()
    return _pool(image, supersample), (_pool(face_mask, supersample) >= 0.5).float()


def benchmark(resolutions: tuple[int, ...] = (128, 224, 256, 512), repeats: int = 20) -> dict[str, object]:
    """Wall time (ms) of one I_exp render call (shape and albedo) per resolution, batch 1 and 8."""
    import statistics
    import time

    from shared.face.morphable import load_procedural_model

    model = load_procedural_model()
    generator = torch.Generator().manual_seed(0)
    results: dict[str, object] = {"threads": torch.get_num_threads(), "vertices": model.num_vertices}
    for batch in (1, 8):
        alpha = torch.randn(batch, model.num_identity, generator=generator)
        beta = torch.rand(batch, model.num_expression, generator=generator) * 0.5
        for resolution in resolutions:
            for shading in ("shape", "albedo"):
                runs = max(3, repeats // batch if resolution < 512 else repeats // (4 * batch))
                render_expression(model, alpha, beta, resolution, shading=shading)  # warm-up
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    render_expression(model, alpha, beta, resolution, shading=shading)
                    times.append((time.perf_counter() - start) * 1000.0)
                # Median and best: on a shared machine the best run is closer to the uncontended cost.
                results[f"ms_b{batch}_{resolution}_{shading}"] = {
                    "median": round(statistics.median(times), 2),
                    "min": round(min(times), 2),
                }
    return results


def main() -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Time the mesh renders (I_exp) on this machine.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(benchmark(repeats=args.repeats)))


if __name__ == "__main__":
    main()
