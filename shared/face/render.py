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
from shared.face.morphable import MorphableModel, vertex_normals
from shared.face.rasterizer import Fragments, MeshRasterizer
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
    if shading not in ("shape", "albedo"):
        raise RenderError("bad_shading", f"shading must be 'shape' or 'albedo', got {shading!r}")
    if shading == "albedo" and model.albedo is None:
        raise RenderError("no_albedo", f"model {model.name} has no albedo; use shading='shape'")
    device = vertices.device
    faces = model.faces.to(device)
    normals = fragments.interpolate(vertex_normals(vertices, faces), faces)
    normals = torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)
    rot, _ = cam.world_to_camera(cameras)
    light_world = LIGHT_DIRECTION_CAMERA.to(rot) @ rot  # R^T l, batched: (B, 3)
    lambert = (normals * light_world[:, None, None, :]).sum(-1).clamp_min(0.0)
    intensity = AMBIENT + DIFFUSE * lambert  # (B, H, W)
    if model.vertex_shading is not None:
        occlusion = model.vertex_shading.to(device).unsqueeze(-1)
        intensity = intensity * fragments.interpolate(occlusion, faces)[..., 0]
    if shading == "albedo":
        assert model.albedo is not None
        colour = fragments.interpolate(model.albedo.to(device), faces) * intensity.unsqueeze(-1)
    else:
        colour = SHAPE_ALBEDO * intensity.unsqueeze(-1).expand(*intensity.shape, 3)
    mask = fragments.mask.unsqueeze(-1)
    image = torch.where(mask, colour.clamp(0.0, 1.0) * 2.0 - 1.0, torch.full_like(colour, -1.0))
    return image.permute(0, 3, 1, 2).contiguous()


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
    if supersample < 1:
        raise RenderError("bad_supersample", f"supersample must be >= 1, got {supersample}")
    image, fragments = render_fragments(
        model, vertices, cameras, resolution * supersample, shading=shading, rasterizer=rasterizer
    )
    mask = fragments.mask.unsqueeze(1).float()
    return _pool(image, supersample), (_pool(mask, supersample) >= 0.5).float()


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
    image, _ = render_mesh(
        model, vertices, EXPRESSION_CAMERA, resolution, shading=shading, supersample=supersample
    )
    return image


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
