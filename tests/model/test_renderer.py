from __future__ import annotations

import math

import pytest
import torch

from shared.model import cameras as cams
from shared.model.config import PlaneConfig, RendererConfig
from shared.model.renderer import (
    FullyConnectedLayer,
    VolumeRenderer,
    blur_weights,
    importance_depths,
    rays_to_image,
    stratified_depths,
    surface_depth,
)

RADIUS = 0.22
CENTRE = torch.tensor([0.05, -0.03, 0.02])
SPHERE_RGB = torch.tensor([0.9, 0.25, 0.5])


def sphere_field(points: torch.Tensor, batch_ids: torch.Tensor | int) -> torch.Tensor:
    """Opaque coloured ball: raw σ = +1000 inside (density ≈ 1000 per unit), −1000 outside."""
    inside = (points - CENTRE).norm(dim=-1, keepdim=True) < RADIUS
    sigma = torch.where(inside, 1000.0, -1000.0)
    return torch.cat([sigma, SPHERE_RGB.expand(points.shape[0], 3)], dim=-1)


def analytic_hits(origins: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray-sphere entry depth and the ray's miss distance minus radius (>0 misses)."""
    oc = origins - CENTRE
    along = (oc * directions).sum(-1)
    closest = (oc - along.unsqueeze(-1) * directions).norm(dim=-1)
    entry = -along - (RADIUS**2 - closest**2).clamp_min(0).sqrt()
    return entry, closest - RADIUS


def make_renderer(**overrides: object) -> VolumeRenderer:
    cfg = RendererConfig(resolution=48, depth_resolution=48, num_coarse=48, num_fine=48, **overrides)
    return VolumeRenderer(cfg, PlaneConfig(channels=4, resolution=16))


def test_known_density_sphere_gives_the_analytic_depth_map_and_silhouette() -> None:
    renderer = make_renderer()
    cameras = cams.spherical_camera(torch.tensor([0.0, 0.6]), torch.tensor([0.0, -0.3]))
    res = 48
    origins, directions = cams.generate_rays(cameras, res)
    with torch.no_grad():
        image = rays_to_image(
            renderer.render_rays(sphere_field, origins, directions, deterministic=True), res
        )
    entry, miss = analytic_hits(origins, directions)
    entry, miss = entry.view(2, 1, res, res), miss.view(2, 1, res, res)
    pixel = 2.7 * (1 / cams.DEFAULT_FOCAL) / res  # world size of a pixel at the head
    hit = miss < -pixel
    background = miss > pixel
    assert hit.sum() > 500 and background.sum() > 500
    # Silhouette: opaque on the ball, empty off it (boundary pixels excluded).
    assert (image.opacity[hit] > 0.999).all()
    assert (image.opacity[background] < 1e-6).all()
    # Depth map: within a fraction of the coarse spacing (1.05 / 48 ≈ 0.022) of the true entry depth.
    assert (image.depth[hit] - entry[hit]).abs().max() < 0.012
    # Background rays end at the far side of the ray range.
    assert torch.allclose(image.depth[background], torch.tensor(3.3), atol=0.02)
    # Colour composited onto black and mapped to [-1, 1].
    rgb = image.rgb.permute(0, 2, 3, 1)[hit.squeeze(1)]
    torch.testing.assert_close(rgb, (SPHERE_RGB * 2 - 1).expand_as(rgb), atol=2e-3, rtol=0)
    assert torch.allclose(image.rgb.permute(0, 2, 3, 1)[background.squeeze(1)], torch.tensor(-1.0))


def test_background_rays_through_a_faint_fog_end_at_the_far_end() -> None:
    """Softplus density is never exactly 0: a ball inside a faint fog (opacity ~5 % per ray) must
    still put the background rays at the far end, not at the fog's weighted mean depth (which
    normalising by the ray's total weight put in the middle of the ray range, under the head)."""
    renderer = make_renderer()

    def foggy_ball(points: torch.Tensor, batch_ids: torch.Tensor | int) -> torch.Tensor:
        out = sphere_field(points, batch_ids)
        fog = torch.full_like(out[:, :1], -3.0)  # softplus(-3 - 1) ≈ 0.018 per unit: ~2 % over 1.05
        return torch.cat([torch.maximum(out[:, :1], fog), out[:, 1:]], dim=-1)

    cameras = cams.spherical_camera(torch.tensor([0.0]), torch.tensor([0.0]))
    res = 32
    origins, directions = cams.generate_rays(cameras, res)
    with torch.no_grad():
        image = rays_to_image(renderer.render_rays(foggy_ball, origins, directions, deterministic=True), res)
    _, miss = analytic_hits(origins, directions)
    background = miss.view(1, 1, res, res) > 0.05
    assert background.sum() > 200
    assert (image.opacity[background] < 0.05).all() and (image.opacity[background] > 0.005).all()
    # Within the fog's pull: at most ~3 % of the ray range before the far end (was ~2.78, mid-range).
    assert (image.depth[background] > 3.3 - 0.04).all()


def test_stratified_samples_stay_in_their_bins() -> None:
    gen = torch.Generator().manual_seed(0)
    t = stratified_depths(100, 10, 2.0, 3.0, deterministic=False, generator=gen)
    bins = ((t - 2.0) / 0.1).floor()
    assert torch.equal(bins, torch.arange(10.0).expand(100, 10))
    centres = stratified_depths(3, 10, 2.0, 3.0, deterministic=True)
    torch.testing.assert_close(centres[0], 2.05 + 0.1 * torch.arange(10.0))


def test_importance_samples_follow_the_weights() -> None:
    coarse = torch.linspace(2.0, 3.0, 21).expand(4, 21).contiguous()
    weights = torch.zeros(4, 20)
    weights[:, 12] = 1.0  # all mass on [2.6, 2.65]
    fine = importance_depths(coarse, weights, 64, deterministic=True)
    inside = ((fine >= 2.55) & (fine <= 2.70)).float().mean()  # blur spreads to the neighbours
    assert inside > 0.8
    assert torch.all(fine[:, 1:] >= fine[:, :-1])  # sorted quantiles
    # The blur: max with neighbours then average; the floor keeps every bin reachable.
    torch.testing.assert_close(
        blur_weights(torch.tensor([[0.0, 1.0, 0.0, 0.0]])), torch.tensor([[0.5, 1.0, 0.5, 0.0]])
    )


def test_deterministic_mode_is_reproducible_and_training_mode_is_random() -> None:
    renderer = make_renderer()
    gen = torch.Generator().manual_seed(3)
    planes = torch.randn(1, 3, 4, 16, 16, generator=gen)
    cam = cams.frontal_camera().unsqueeze(0)
    with torch.no_grad():
        a = renderer(planes, cam, 12, deterministic=True)
        b = renderer(planes, cam, 12, deterministic=True)
        c = renderer(planes, cam, 12, generator=torch.Generator().manual_seed(1))
        d = renderer(planes, cam, 12, generator=torch.Generator().manual_seed(1))
        e = renderer(planes, cam, 12, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.features, b.features) and torch.equal(a.depth, b.depth)
    assert torch.equal(c.features, d.features)
    assert not torch.equal(c.features, e.features)


def test_rgb_only_and_empty_ray_skipping_match_the_full_render() -> None:
    renderer = make_renderer()
    cam = cams.spherical_camera(0.2, 0.1).unsqueeze(0)
    planes = torch.zeros(1, 3, 4, 16, 16)
    planes[:, :, :, 4:12, 4:12] = 2.0  # a dense block in the middle, empty (σ = bias) around it
    with torch.no_grad():
        # Shift density so that empty space is really empty: σ ≈ -20 outside.
        renderer.decoder.net[2].bias.data[0] = -20.0
        renderer.decoder.net[0].weight.data.fill_(1.0)
        renderer.decoder.net[2].weight.data[0] = 1.0
        full = renderer(planes, cam, 24, deterministic=True, skip_empty=False)
        skipped = renderer(planes, cam, 24, deterministic=True, skip_empty=True)
        rgb_only = renderer(planes, cam, 24, deterministic=True, rgb_only=True, skip_empty=False)
    assert (full.opacity < renderer.config.empty_ray_opacity).any()  # some rays really are skipped
    assert (full.opacity > 0.5).any()
    torch.testing.assert_close(skipped.rgb, full.rgb, atol=4 * renderer.config.empty_ray_opacity, rtol=0)
    torch.testing.assert_close(rgb_only.rgb, full.rgb, atol=1e-5, rtol=0)
    assert rgb_only.features.shape[1] == 3 and full.features.shape[1] == renderer.config.feature_channels


def test_inference_folds_the_first_decoder_layer_into_the_planes_without_changing_the_render() -> None:
    """No-grad renders gather the decoder's first-layer outputs from a projected table; the image
    must equal the plain (training) order: sample, then decode."""
    torch.manual_seed(0)
    renderer = make_renderer(feature_channels=6)
    with torch.no_grad():
        renderer.decoder.net[0].bias.normal_()  # a non-zero bias exercises the border texels
    planes = torch.randn(2, 3, 4, 16, 16)
    cameras = torch.stack([cams.spherical_camera(0.3, 0.1), cams.spherical_camera(-0.2, -0.1)])
    with torch.no_grad():
        folded = renderer(planes, cameras, 20, deterministic=True, skip_empty=False)
    with torch.enable_grad():
        plain = renderer(planes, cameras, 20, deterministic=True, skip_empty=False)
    torch.testing.assert_close(folded.features, plain.features.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded.depth, plain.depth.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded.opacity, plain.opacity.detach(), atol=1e-5, rtol=1e-5)


def test_the_caller_chooses_the_computation_whatever_the_grad_mode() -> None:
    """``inference=`` decides folded vs plain; only ``None`` follows the grad mode."""
    torch.manual_seed(1)
    renderer = make_renderer(feature_channels=6)
    planes = torch.randn(1, 3, 4, 16, 16)
    camera = cams.spherical_camera(0.2, -0.1).unsqueeze(0)
    calls: list[bool] = []
    original = renderer.planes_field

    def spy(*args: object, fold_first_layer: bool = False, **kwargs: object) -> object:
        calls.append(fold_first_layer)
        return original(*args, fold_first_layer=fold_first_layer, **kwargs)  # type: ignore[arg-type]

    renderer.planes_field = spy  # type: ignore[method-assign]
    with torch.no_grad():
        plain = renderer(planes, camera, 12, deterministic=True, skip_empty=False, inference=False)
        folded = renderer(planes, camera, 12, deterministic=True, skip_empty=False, inference=True)
        renderer(planes, camera, 12, deterministic=True, skip_empty=False)
    renderer(planes, camera, 12, deterministic=True, skip_empty=False)
    assert calls == [False, True, True, False]
    torch.testing.assert_close(folded.features, plain.features, atol=1e-5, rtol=1e-5)


def test_equalised_learning_rate_scales_weights_at_run_time() -> None:
    layer = FullyConnectedLayer(16, 4, lr_multiplier=0.5)
    x = torch.randn(3, 16)
    expected = x @ (layer.weight * 0.5 / math.sqrt(16)).T + layer.bias * 0.5
    torch.testing.assert_close(layer(x), expected)
    # Stored weights are N(0, 1) / lr_multiplier.
    assert 1.0 < float(layer.weight.detach().std()) < 3.0


@pytest.mark.parametrize("feature_channels", [3, 8])
def test_decoder_output_layout(feature_channels: int) -> None:
    renderer = VolumeRenderer(RendererConfig(feature_channels=feature_channels), PlaneConfig(channels=4))
    out = renderer.decoder(torch.randn(10, 4))
    assert out.shape == (10, 1 + feature_channels)
    assert (out[:, 1:] >= -0.001).all() and (out[:, 1:] <= 1.001).all()


# --- the source-colour blend (TriPlaneDecoder with RendererConfig.source_colour_blend) -----------------

COLOUR_OFFSET = 4  # feature channels before the lifted colour in these planes (RGB + keep after)


def blend_renderer(feature_channels: int = 3, *, gate: bool = False) -> VolumeRenderer:
    """With ``gate``, the planes carry one more channel: the source-colour gate."""
    return VolumeRenderer(
        RendererConfig(
            resolution=16,
            num_coarse=12,
            num_fine=12,
            decoder_hidden=16,
            feature_channels=feature_channels,
            source_colour_blend=True,
        ),
        PlaneConfig(channels=COLOUR_OFFSET, resolution=16),
        COLOUR_OFFSET + 4 + (1 if gate else 0),
        colour_scale=8.0,
        gate=gate,
    )


def coloured_planes(colour: torch.Tensor, batch: int = 1) -> torch.Tensor:
    """Random features + a constant lifted colour (in [-1, 1], × the scale) in the XY plane only."""
    planes = torch.randn(batch, 3, COLOUR_OFFSET + 4, 16, 16)
    planes[:, :, COLOUR_OFFSET:] = 0
    planes[:, 0, COLOUR_OFFSET : COLOUR_OFFSET + 3] = (colour * 8.0).view(1, 3, 1, 1)
    planes[:, 0, COLOUR_OFFSET + 3] = 8.0  # keep
    return planes


def test_blend_weight_one_renders_the_lifted_colour_and_zero_the_decoded_one() -> None:
    torch.manual_seed(3)
    renderer = blend_renderer()
    decoder = renderer.decoder
    colour = torch.tensor([0.6, -0.4, 0.1])  # [-1, 1]
    planes = coloured_planes(colour)
    with torch.no_grad():
        decoder.net[2].bias[0] = 30.0  # opaque everywhere: every ray ends on the first samples
        decoder.net[2].bias[-1] = 40.0  # m = 1
    camera = cams.spherical_camera(0.1, 0.05).unsqueeze(0)
    with torch.no_grad():
        lifted = renderer(planes, camera, 8, deterministic=True, skip_empty=False)
    # Rays that reach the XY plane's box read the constant colour there, mapped back to [-1, 1].
    centre = lifted.rgb[0, :, 2:6, 2:6].reshape(3, -1)
    torch.testing.assert_close(centre, colour.view(3, 1).expand_as(centre), atol=2e-3, rtol=0)
    with torch.no_grad():
        decoder.net[2].bias[-1] = -40.0  # m = 0: the decoded colour, which ignores the lifted one here
        decoded = renderer(planes, camera, 8, deterministic=True, skip_empty=False)
        decoded_other = renderer(coloured_planes(-colour), camera, 8, deterministic=True, skip_empty=False)
    assert (decoded.rgb - lifted.rgb).abs().max() > 0.05
    # With m = 0 the colour reaches the output only through the MLP's first layer, not the blend.
    decoder_only = (decoded.rgb - decoded_other.rgb).abs().max()
    assert decoder_only < (lifted.rgb - decoded.rgb).abs().max()


@pytest.mark.parametrize("feature_channels", [3, 6])
def test_blend_inference_fold_equals_the_training_computation(feature_channels: int) -> None:
    torch.manual_seed(4)
    renderer = blend_renderer(feature_channels)
    with torch.no_grad():
        renderer.decoder.net[2].weight[-1].normal_()  # a blend weight that varies over space
        renderer.decoder.colour_weight.mul_(1.3)
    planes = coloured_planes(torch.tensor([0.2, 0.5, -0.7]), batch=2)
    planes[:, 0, COLOUR_OFFSET:] += torch.randn(2, 4, 16, 16)
    cameras = torch.stack([cams.spherical_camera(0.3, 0.1), cams.spherical_camera(-0.2, -0.1)])
    with torch.no_grad():
        folded = renderer(planes, cameras, 12, deterministic=True, skip_empty=False, inference=True)
        folded_rgb = renderer(
            planes, cameras, 12, deterministic=True, skip_empty=False, inference=True, rgb_only=True
        )
    plain = renderer(planes, cameras, 12, deterministic=True, skip_empty=False, inference=False)
    torch.testing.assert_close(folded.features, plain.features.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded_rgb.rgb, plain.rgb.detach(), atol=1e-5, rtol=1e-5)


def test_blend_parameters_learn() -> None:
    torch.manual_seed(5)
    renderer = blend_renderer()
    planes = coloured_planes(torch.tensor([0.3, 0.3, 0.3]))
    camera = cams.spherical_camera(0.0, 0.0).unsqueeze(0)
    out = renderer(planes, camera, 8, deterministic=True, skip_empty=False, inference=False)
    out.rgb.sum().backward()
    decoder = renderer.decoder
    for parameter in (decoder.colour_weight, decoder.colour_bias, decoder.net[2].weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    # The blend row starts at zero weight and a constant m = sigmoid(BLEND_INIT_LOGIT).
    assert float(decoder.net[2].weight.detach()[-1].abs().sum()) == 0.0


def test_blend_needs_colour_channels() -> None:
    with pytest.raises(ValueError, match="offset"):
        VolumeRenderer(RendererConfig(source_colour_blend=True), PlaneConfig(channels=4))


def test_surface_depth_is_the_depth_of_the_visible_mass_alone() -> None:
    """A half-transparent ball: `composite` puts the leftover light at the far end, so the expected
    depth sits between the ball and the far end; `surface_depth` takes that share out again."""
    renderer = make_renderer()
    cfg = renderer.config

    def faint_ball(points: torch.Tensor, batch_ids: torch.Tensor | int) -> torch.Tensor:
        inside = (points - CENTRE).norm(dim=-1, keepdim=True) < RADIUS
        # density 3 per unit over a ~0.4 chord: opacity ~0.7, the rest of the light passes
        sigma = torch.where(inside, 3.0, -1000.0)
        return torch.cat([sigma, SPHERE_RGB.expand(points.shape[0], 3)], dim=-1)

    camera = cams.spherical_camera(0.0, 0.0).unsqueeze(0)
    origins, directions = cams.generate_rays(camera, 48)
    with torch.no_grad():
        out = renderer.render_rays(faint_ball, origins, directions, deterministic=True)
    centre = 24 * 48 + 24
    alpha, depth = float(out.opacity[0, centre]), float(out.depth[0, centre])
    assert 0.3 < alpha < 0.95
    entry, _ = analytic_hits(origins[0, centre : centre + 1], directions[0, centre : centre + 1])
    exit_depth = float(entry) + 2 * RADIUS  # the centre ray passes (almost) through the ball's centre
    surface = float(surface_depth(out.depth, out.opacity, cfg.ray_start, cfg.ray_end)[0, centre])
    assert depth > exit_depth  # the expected depth is pulled behind the ball by the far end
    assert float(entry) - 0.02 < surface < exit_depth  # the surface depth is inside the ball


def test_blend_reads_the_lifted_colour_once_at_the_surface_point() -> None:
    """With m = 1 a ray's colour is M · c(P) at its surface point P, however thick the fog: the XY
    colour is constant along z, so averaging it over samples spread in depth (a turned camera) would
    smear a sharp edge over the fog's depth."""
    torch.manual_seed(6)
    renderer = blend_renderer()
    decoder = renderer.decoder
    planes = coloured_planes(torch.zeros(3))
    planes[:, 0, COLOUR_OFFSET : COLOUR_OFFSET + 3, :, :8] = 8.0  # a sharp white | black edge
    planes[:, 0, COLOUR_OFFSET : COLOUR_OFFSET + 3, :, 8:] = -8.0
    with torch.no_grad():
        decoder.net[2].bias[0] = (
            2.0  # a fog: the ray's mass spreads through the box: the ray's mass spreads through the box
        )
        decoder.net[2].bias[-1] = 40.0  # m = 1
    camera = cams.spherical_camera(0.5, 0.0).unsqueeze(0)
    origins, directions = cams.generate_rays(camera, 24)
    field = renderer.planes_field(planes)
    with torch.no_grad():
        out = renderer.render_rays(field, origins, directions, deterministic=True)
        cfg = renderer.config
        surface = surface_depth(out.depth, out.opacity, cfg.ray_start, cfg.ray_end)
        points = (origins + directions * surface.unsqueeze(-1)).reshape(-1, 3)
        colour = field.surface_colour(points, torch.zeros(points.shape[0], dtype=torch.long))
    assert 0.3 < float(out.opacity.max()) < 0.99  # partly transparent: the surface is not the expected depth
    # The m channel is consumed: RGB (+ no other features) come back.
    assert out.values.shape[-1] == 3
    expected = 2.0 * out.opacity[0].unsqueeze(-1) * colour - 1.0  # black background, decoded share 0
    torch.testing.assert_close(out.values[0], expected, atol=1e-4, rtol=0)


def opaque_striped_planes(renderer: VolumeRenderer) -> torch.Tensor:
    """Planes whose lifted colour is vertical stripes 2 texels wide, rendered opaque with m = 1."""
    planes = coloured_planes(torch.zeros(3))
    stripes = torch.where((torch.arange(16) // 2) % 2 == 0, 8.0, -8.0)
    planes[:, 0, COLOUR_OFFSET : COLOUR_OFFSET + 3] = stripes.view(1, 1, 16)
    with torch.no_grad():
        renderer.decoder.net[2].bias[0] = 30.0
        renderer.decoder.net[2].bias[-1] = 40.0
    return planes


def test_surface_detail_at_the_render_size_is_the_render_itself() -> None:
    torch.manual_seed(7)
    renderer = blend_renderer()
    planes = coloured_planes(torch.tensor([0.2, -0.1, 0.5]))
    planes[:, 0, COLOUR_OFFSET:] += torch.randn(1, 4, 16, 16)
    camera = cams.spherical_camera(0.2, -0.1).unsqueeze(0)
    with torch.no_grad():
        out = renderer(planes, camera, 12, deterministic=True, skip_empty=False, detail=False)
        field = renderer.planes_field(planes)
        same = renderer.surface_detail(field, camera, out, 12)
    assert out.detail is None and out.blend is not None and out.lifted is not None
    torch.testing.assert_close(same, out.rgb, atol=1e-5, rtol=0)


def test_surface_detail_keeps_the_colour_planes_detail_a_coarse_render_averages_away() -> None:
    """A 12² render of 2-texel stripes re-read at 32² is closer to a 32² render than the 12²
    render bilinearly upsampled is."""
    torch.manual_seed(8)
    renderer = blend_renderer()
    planes = opaque_striped_planes(renderer)
    camera = cams.spherical_camera(0.0, 0.0).unsqueeze(0)
    with torch.no_grad():
        coarse = renderer(planes, camera, 12, deterministic=True, skip_empty=False)
        fine = renderer(planes, camera, 32, deterministic=True, skip_empty=False, detail=False)
        field = renderer.planes_field(planes)
        detail = renderer.surface_detail(field, camera, coarse, 32)
    upsampled = torch.nn.functional.interpolate(coarse.rgb, size=32, mode="bilinear", align_corners=False)
    detail_error = (detail - fine.rgb).abs().mean()
    upsampled_error = (upsampled - fine.rgb).abs().mean()
    assert detail_error < 0.5 * upsampled_error


# --- the source-colour gate (TriPlaneDecoder with gate=True: the planes' last channel) ---------------


def gated_renderer() -> VolumeRenderer:
    return blend_renderer(gate=True)


def gated_planes(colour: torch.Tensor, gate: float, batch: int = 1) -> torch.Tensor:
    """`coloured_planes` + the gate channel: ``gate`` in the XY plane, zero in XZ / ZY."""
    planes = torch.cat([coloured_planes(colour, batch), torch.zeros(batch, 3, 1, 16, 16)], dim=2)
    planes[:, 0, -1] = gate
    return planes


def test_gate_one_removes_the_lifted_colour_and_zero_leaves_the_blend_as_it_was() -> None:
    torch.manual_seed(6)
    gated, plain = gated_renderer(), blend_renderer()
    assert gated.decoder.net[0].weight.shape == plain.decoder.net[0].weight.shape  # loads gate-less weights
    plain.load_state_dict(gated.state_dict())
    colour = torch.tensor([0.6, -0.4, 0.1])
    with torch.no_grad():
        for decoder in (gated.decoder, plain.decoder):
            decoder.net[2].bias[0] = 30.0  # opaque
            decoder.net[2].bias[-1] = 40.0  # m = 1 before the gate
    camera = cams.spherical_camera(0.1, 0.05).unsqueeze(0)
    with torch.no_grad():
        reference = plain(coloured_planes(colour), camera, 8, deterministic=True, skip_empty=False)
        open_gate = gated(gated_planes(colour, 0.0), camera, 8, deterministic=True, skip_empty=False)
        closed = gated(gated_planes(colour, 1.0), camera, 8, deterministic=True, skip_empty=False)
        closed_other = gated(gated_planes(-colour, 1.0), camera, 8, deterministic=True, skip_empty=False)
    torch.testing.assert_close(open_gate.rgb, reference.rgb, atol=1e-5, rtol=0)
    assert open_gate.blend is not None and closed.blend is not None
    assert open_gate.blend[0, :, 2:6, 2:6].min() > 0.99
    assert closed.blend.abs().max() < 1e-6  # M = 0: nothing of the lifted colour
    # The gate reaches the decoder's output only through m: with it closed, the colour's effect is
    # what the MLP's first layer makes of it, far less than the blend's.
    assert (closed.rgb - closed_other.rgb).abs().max() < (open_gate.rgb - closed.rgb).abs().max()


def test_gated_inference_fold_equals_the_training_computation() -> None:
    torch.manual_seed(7)
    renderer = gated_renderer()
    with torch.no_grad():
        renderer.decoder.net[2].weight[-1].normal_()
    planes = gated_planes(torch.tensor([0.2, 0.5, -0.7]), 0.0, batch=2)
    planes[:, 0, -1] = torch.rand(2, 16, 16)  # a gate that varies over the plane
    cameras = torch.stack([cams.spherical_camera(0.3, 0.1), cams.spherical_camera(-0.2, -0.1)])
    with torch.no_grad():
        folded = renderer(planes, cameras, 12, deterministic=True, skip_empty=False, inference=True)
    plain = renderer(planes, cameras, 12, deterministic=True, skip_empty=False, inference=False)
    torch.testing.assert_close(folded.features, plain.features.detach(), atol=1e-5, rtol=1e-5)
    assert folded.blend is not None and plain.blend is not None
    torch.testing.assert_close(folded.blend, plain.blend.detach(), atol=1e-5, rtol=1e-5)


def test_gate_needs_the_blend() -> None:
    with pytest.raises(ValueError, match="gate"):
        VolumeRenderer(RendererConfig(), PlaneConfig(channels=4), 9, gate=True)
