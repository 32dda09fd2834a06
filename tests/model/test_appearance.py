from __future__ import annotations

import pytest
import torch

from shared.model import appearance as app
from shared.model import cameras as cams
from shared.model.appearance import AppearanceUpsampler, lift, nearest_indices, rasterize
from shared.model.config import AppearanceConfig, ModelConfig, RendererConfig
from shared.model.network import GOHANetwork
from shared.model.triplane import cell_centres, project_to_planes
from tests.model.conftest import make_batch, micro_config


def brute_force(points: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    dist = torch.cdist(queries.double(), points.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return dist.argmin(dim=1)


@pytest.mark.parametrize("method", ["kdtree", "chunked"])
def test_nearest_equals_brute_force_on_random_points(method: str) -> None:
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(700, 2, generator=gen, dtype=torch.float64) * 2.4 - 1.2
    queries = cell_centres(16, dtype=torch.float64)
    assert torch.equal(nearest_indices(points, queries, method), brute_force(points, queries))


@pytest.mark.parametrize("method", ["kdtree", "chunked"])
def test_ties_and_duplicates_go_to_the_lowest_index(method: str) -> None:
    # Points on a lattice of texel corners: texel centres are equidistant from 4 points, and
    # every point appears twice (the second copy has the higher index).
    res = 8
    corners = (torch.arange(res + 1, dtype=torch.float64) * 2 / res) - 1
    yy, xx = torch.meshgrid(corners, corners, indexing="ij")
    lattice = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)
    perm = torch.randperm(lattice.shape[0], generator=torch.Generator().manual_seed(1))
    points = torch.cat([lattice[perm], lattice[perm]])
    queries = cell_centres(res, dtype=torch.float64)
    got = nearest_indices(points, queries, method)
    assert torch.equal(got, brute_force(points, queries))
    # Explicitly: the lowest index among the four equidistant lattice points.
    dist = (queries[:, None] - points[None]).pow(2).sum(-1)
    tied = dist == dist.min(dim=1, keepdim=True).values
    assert (tied.sum(dim=1) == 8).all()  # 4 corners x 2 copies
    lowest = torch.where(tied, torch.arange(points.shape[0]), points.shape[0]).min(dim=1).values
    assert torch.equal(got, lowest)


def test_chunked_search_never_builds_the_full_distance_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real_cdist = torch.cdist

    def recording_cdist(a: torch.Tensor, b: torch.Tensor, **kwargs: object) -> torch.Tensor:
        out = real_cdist(a, b, **kwargs)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(torch, "cdist", recording_cdist)
    monkeypatch.setattr(app, "_CHUNK_ELEMENTS", 4096)
    points = torch.rand(1024, 2) * 2 - 1
    queries = cell_centres(32)  # 1024 queries: the full matrix would be 1024 x 1024
    idx = nearest_indices(points, queries, "chunked")
    assert max(seen) <= 4096 and len(seen) == 256
    monkeypatch.undo()
    assert torch.equal(idx, brute_force(points, queries))


def test_lifting_places_pixels_at_origin_plus_depth_times_direction() -> None:
    camera = cams.frontal_camera().unsqueeze(0)
    origins, directions = cams.generate_rays(camera, 4)
    # Depth along each ray to the z = 0 plane (the camera sits at z = 2.7 looking down -z).
    depth = 2.7 / -directions[..., 2]
    points = lift(origins, directions, depth)
    torch.testing.assert_close((points - origins).norm(dim=-1), depth)
    centres = (torch.arange(4.0) + 0.5) / 4 - 0.5  # pixel centres relative to the principal point
    vv, uu = torch.meshgrid(centres, centres, indexing="ij")
    scale = 2.7 / cams.DEFAULT_FOCAL
    expected = torch.stack([uu.reshape(-1) * scale, -vv.reshape(-1) * scale, torch.zeros(16)], dim=-1)
    torch.testing.assert_close(points[0], expected, atol=1e-5, rtol=0)


def test_rasterization_of_a_known_point_grid_lands_features_in_the_right_cells() -> None:
    # A 4 x 4 grid of points on the z = 0.1 plane at texel centres of an 8² XY grid
    # (texels (2i, 2j)); features = the point's id. Cells take the nearest point's id.
    res = 8
    centres = cell_centres(res).view(res, res, 2)  # (row, col, uv)
    rows = cols = torch.arange(0, res, 2)
    uv = centres[rows][:, cols].reshape(-1, 2)  # normalised (u, v) = (2x, 2y)
    points = torch.cat([uv / 2, torch.full((16, 1), 0.1)], dim=-1).unsqueeze(0)
    features = torch.arange(16.0).view(1, 1, 16)
    planes = rasterize(points, features, res)
    assert planes.shape == (1, 3, 1, res, res)
    xy = planes[0, 0, 0]
    # Exact hits carry their own id; texel (1, 1) is equidistant from points 0, 1, 4, 5 and takes
    # the lowest; texel (3, 5) from points 6, 7, 10, 11.
    for k in range(16):
        assert xy[2 * (k // 4), 2 * (k % 4)] == k
    assert xy[1, 1] == 0 and xy[7, 7] == 15 and xy[3, 5] == 6
    # XZ plane: all points share z, and the four points of a column coincide after projection,
    # so every texel takes the nearest column's lowest id (0..3).
    xz = planes[0, 1, 0]
    assert xz[0, 0] == 0 and xz[7, 6] == 3
    # Compare every cell with brute force over the projected points.
    projected = project_to_planes(points)[0]
    for p in range(3):
        expected = brute_force(projected[p], cell_centres(res)).view(res, res).float()
        assert torch.equal(planes[0, p, 0], expected)


def test_rasterize_batch_of_two_equals_two_singles_and_gradients_reach_features() -> None:
    gen = torch.Generator().manual_seed(3)
    points = torch.rand(2, 200, 3, generator=gen) - 0.5
    features = torch.randn(2, 5, 200, generator=gen, requires_grad=True)
    both = rasterize(points, features, 12)
    singles = torch.cat([rasterize(points[i : i + 1], features[i : i + 1], 12) for i in range(2)])
    assert torch.equal(both, singles)
    both.sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_upsampler_has_an_independent_branch_per_plane() -> None:
    torch.manual_seed(0)
    upsampler = AppearanceUpsampler(6, 8, 4, upsamples=1)
    x = torch.randn(1, 3, 6, 8, 8)
    out = upsampler(x)
    assert out.shape == (1, 3, 4, 16, 16)
    changed = x.clone()
    changed[:, 1] += 1.0
    out2 = upsampler(changed)
    assert torch.equal(out[:, 0], out2[:, 0]) and torch.equal(out[:, 2], out2[:, 2])
    assert not torch.equal(out[:, 1], out2[:, 1])
    out.sum().backward()
    for name in ("up_xy", "up_xz", "up_zy", "skip_xy", "skip_xz", "skip_zy"):
        grads = [p.grad for p in getattr(upsampler, name).parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name


def test_paper_size_upsampler_shape() -> None:
    upsampler = AppearanceUpsampler(256, 128, 32, upsamples=1)
    with torch.no_grad():
        out = upsampler(torch.zeros(1, 3, 256, 128, 128))
    assert out.shape == (1, 3, 32, 256, 256)


def red_square_over_a_flat_surface() -> tuple[ModelConfig, app.AppearanceBranch, tuple[torch.Tensor, ...]]:
    """A frontal source (a red square in the middle of a dark image) over a flat surface at the
    head's depth (z = 0): the colour_planes inputs (source, keep, depth, origins, directions)."""
    cfg = micro_config(
        appearance=AppearanceConfig(encoder=micro_config().appearance.encoder, colour_resolution=32)
    )
    res = 32
    camera = cams.spherical_camera(torch.tensor([0.0]), torch.tensor([0.0]))
    origins, directions = cams.generate_rays(camera, res)
    depth = (-origins[..., 2] / directions[..., 2]).reshape(1, 1, res, res)
    source = torch.full((1, 3, 64, 64), -1.0)
    source[:, 0, 20:44, 20:44] = 1.0
    keep = torch.ones(1, 1, 64, 64)
    return cfg, app.AppearanceBranch(cfg), (source, keep, depth, origins, directions)


def test_colour_lifting_writes_the_source_pixels_into_the_xy_plane_only() -> None:
    """Each XY texel holds the colour of the pixel that projects onto it, the keep-mask in channel
    3, and XZ / ZY get nothing."""
    cfg, branch, inputs = red_square_over_a_flat_surface()
    colour = branch.colour_planes(*inputs)
    assert colour.shape == (1, 4, cfg.plane.resolution, cfg.plane.resolution)
    red = colour[0, 0]
    # The square's centre lands on the plane's centre texels; the image border on the plane's border
    # region, which is dark (-1 × keep).
    assert red[14:18, 14:18].min() > 0.99
    assert red[0, 0] < -0.99 and (colour[0, 3] > 0.99).all()
    planes = torch.ones(1, 3, cfg.plane.channels, 32, 32)
    added = branch.add_colour(planes, colour)
    assert added.shape[2] == cfg.plane_channels == cfg.plane.channels + 4
    torch.testing.assert_close(added[:, 0, -4:], colour)
    assert added[:, 1:, -4:].abs().max() == 0 and torch.equal(added[:, :, :-4], planes)


def test_colour_lifting_skips_pixels_that_are_not_visible() -> None:
    """Pixels outside ``visible`` (background rays, which end at the far end of the ray range) are
    not lifted: from a turned camera they would land on the face's own texels."""
    _, branch, inputs = red_square_over_a_flat_surface()
    visible = torch.ones(1, 1, 32, 32, dtype=torch.bool)
    shown = branch.colour_planes(*inputs, visible=visible)
    torch.testing.assert_close(shown, branch.colour_planes(*inputs))
    visible[:, :, 10:22, 10:22] = False  # the red square's pixels
    hidden = branch.colour_planes(*inputs, visible=visible)
    assert shown[0, 0, 14:18, 14:18].min() > 0.99
    assert hidden[0, 0, 14:18, 14:18].max() < 0.0  # the texels take the visible (dark) neighbours


def test_network_source_colour_reaches_t_p() -> None:
    """Changing the portrait's colour changes T_p's lifted-colour channels (the cached avatar)."""
    base = micro_config()
    cfg = micro_config(
        appearance=AppearanceConfig(encoder=base.appearance.encoder, colour_resolution=32),
        renderer=RendererConfig(
            resolution=16,
            depth_resolution=16,
            num_coarse=8,
            num_fine=8,
            decoder_hidden=16,
            feature_channels=3,
        ),
    )
    torch.manual_seed(0)
    network = GOHANetwork(cfg).eval()
    batch = make_batch(cfg, batch=1)
    with torch.no_grad():
        planes_a = network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera).planes
        brighter = (batch.source_image + 0.5).clamp(-1, 1)
        planes_b = network.reconstruct(brighter, batch.source_mask, batch.source_camera).planes
    assert network.lifting_resolution == 32
    assert (planes_b - planes_a)[:, 0, -4:-1].abs().max() > 0.1
    # The colour's channels are T_p's alone: T_c is zero there.
    t_c = network.canonical_planes(batch.source_image, batch.source_mask)
    assert t_c.shape[2] == cfg.plane_channels and t_c[:, :, -4:].abs().max() == 0
