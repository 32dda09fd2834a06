from __future__ import annotations

import torch

from shared.model.triplane import (
    PLANE_AXES,
    PlaneTable,
    cell_centres,
    project_to_planes,
    sample_planes,
    sample_planes_grid_sample,
    sum_planes,
)


def test_fast_sampler_equals_grid_sample_inside_and_outside_the_box() -> None:
    gen = torch.Generator().manual_seed(0)
    planes = torch.randn(2, 3, 5, 16, 16, generator=gen)
    # Up to 1.5x the box: exercises zero padding and clamping far outside.
    points = (torch.rand(2, 4000, 3, generator=gen) - 0.5) * 1.5
    for box in (1.0, 1.3):
        fast = sample_planes(planes, points, box_warp=box, chunk=1000)
        reference = sample_planes_grid_sample(planes, points, box_warp=box).mean(dim=1)
        torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)


def test_table_with_a_linear_layer_samples_that_layer_of_the_mean() -> None:
    gen = torch.Generator().manual_seed(2)
    planes = torch.randn(2, 3, 5, 16, 16, generator=gen)
    points = (torch.rand(3000, 3, generator=gen) - 0.5) * 1.5  # inside, on and beyond the border
    batch = torch.randint(0, 2, (3000,), generator=gen)
    weight, bias = torch.randn(7, 5, generator=gen), torch.randn(7, generator=gen)
    plain = PlaneTable(planes, 1.2).sample(points, batch)
    folded = PlaneTable(planes, 1.2, linear=(weight, bias)).sample(points, batch)
    torch.testing.assert_close(folded, plain @ weight.t() + bias, atol=1e-5, rtol=1e-5)


def test_sampler_gradients_match_grid_sample() -> None:
    gen = torch.Generator().manual_seed(1)
    planes = torch.randn(1, 3, 4, 8, 8, generator=gen)
    points = (torch.rand(1, 300, 3, generator=gen) - 0.5) * 1.2
    a = planes.clone().requires_grad_(True)
    b = planes.clone().requires_grad_(True)
    weights = torch.randn(1, 300, 4, generator=gen)
    (sample_planes(a, points) * weights).sum().backward()
    (sample_planes_grid_sample(b, points).mean(dim=1) * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)


def test_plane_axes_put_a_point_in_the_documented_texels() -> None:
    # Plane 0 = XY (u<-x, v<-y), plane 1 = XZ (u<-x, v<-z), plane 2 = ZY (u<-z, v<-y).
    assert PLANE_AXES == ((0, 1), (0, 2), (2, 1))
    res = 8
    point = torch.tensor([[[0.3125, -0.1875, 0.4375]]])  # texel centres: x col 6, y row 2, z 7
    coords = project_to_planes(point)[0, :, 0]
    centres = cell_centres(res)
    expected_texels = [(2, 6), (7, 6), (2, 7)]  # (row, col) per plane
    for plane, (row, col) in enumerate(expected_texels):
        torch.testing.assert_close(coords[plane], centres[row * res + col])
        planes = torch.zeros(1, 3, 1, res, res)
        planes[0, plane, 0, row, col] = 3.0  # hot texel on that plane only
        value = sample_planes(planes, point)[0, 0, 0]
        torch.testing.assert_close(value, torch.tensor(1.0))  # mean over the three planes: 3 / 3


def test_sum_planes_is_a_plain_sum() -> None:
    a, b, c = (torch.full((1, 3, 2, 4, 4), v) for v in (1.0, 2.0, 4.0))
    torch.testing.assert_close(sum_planes(a, None, b, c), torch.full((1, 3, 2, 4, 4), 7.0))


def test_sum_planes_upsamples_coarser_terms_to_the_finest() -> None:
    import torch.nn.functional as F

    from shared.model.triplane import sum_planes, upsample_planes

    torch.manual_seed(0)
    coarse, fine = torch.randn(2, 3, 5, 8, 8), torch.randn(2, 3, 5, 16, 16)
    total = sum_planes(coarse, None, fine)
    expected = F.interpolate(coarse.reshape(6, 5, 8, 8), size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(total, expected.view(2, 3, 5, 16, 16) + fine)
    assert upsample_planes(fine, 16) is fine
    # A plane that is linear in its coordinates samples the same at any point after upsampling
    # (away from the border, where the zero padding differs).
    ramp = torch.linspace(-1, 1, 8).view(1, 1, 1, 1, 8).expand(1, 3, 1, 8, 8).contiguous()
    points = torch.rand(1, 50, 3) * 0.5 - 0.25
    table_coarse, table_fine = PlaneTable(ramp), PlaneTable(upsample_planes(ramp, 32))
    torch.testing.assert_close(
        table_fine.sample(points[0], 0), table_coarse.sample(points[0], 0), atol=1e-5, rtol=0
    )
