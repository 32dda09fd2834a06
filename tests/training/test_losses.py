import pytest
import torch

from shared.training.errors import TrainingError
from shared.training.losses import (
    GradientSSIMLoss,
    PerceptualLoss,
    VGG19Features,
    blackout,
    gate_loss,
    neutral_expression_loss,
    opacity_loss,
    region_l1_loss,
    tv_density_loss,
)


def _images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    b = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    return a, b


def test_substitute_perceptual_is_zero_for_equal_and_positive_otherwise() -> None:
    a, b = _images()
    loss = GradientSSIMLoss()
    assert loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(a, b).item() > 0.5
    # Closer images score lower.
    assert loss(a, a + 0.05 * (b - a)).item() < loss(a, b).item()
    assert "substitute" in PerceptualLoss(None).description


def test_vgg_perceptual_loads_torchvision_layout_weights(tmp_path) -> None:
    torch.manual_seed(0)
    reference = VGG19Features()
    state = {f"features.{k}": v for k, v in reference.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)  # extra keys of a full torchvision file are ignored
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    loss = PerceptualLoss(path)
    assert loss.vgg is not None and "VGG-19" in loss.description
    a, b = _images(1)
    assert loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(a, b).item() > 0
    with pytest.raises(TrainingError) as err:
        PerceptualLoss(tmp_path / "missing.pth")
    assert err.value.code == "training.vgg_weights_missing"


@pytest.mark.parametrize(
    ("content", "code"),
    [
        ("not a torch file", "training.vgg_weights_unreadable"),
        ({"classifier.0.weight": torch.zeros(1)}, "training.vgg_weights_mismatch"),
        ("wrong shape", "training.vgg_weights_mismatch"),
    ],
)
def test_vgg_weights_errors_keep_their_codes(tmp_path, content, code) -> None:
    path = tmp_path / "vgg19.pth"
    if content == "not a torch file":
        path.write_bytes(b"<html>a download error page</html>")
    elif content == "wrong shape":
        state = {f"features.{k}": v for k, v in VGG19Features().features.state_dict().items()}
        state["features.0.weight"] = torch.zeros(32, 3, 3, 3)  # a narrower first layer
        torch.save(state, path)
    else:
        torch.save(content, path)
    with pytest.raises(TrainingError) as err:
        VGG19Features().load_imagenet(path)
    assert err.value.code == code
    assert str(path) in str(err.value)


def test_tv_loss_zero_for_constant_density_positive_for_varying() -> None:
    planes = torch.zeros(1, 3, 4, 8, 8)
    g = torch.Generator().manual_seed(0)

    def constant(_planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return torch.ones(*points.shape[:2], 2)

    def wavy(_planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return torch.sin(40 * points[..., :1]).expand(*points.shape[:2], 2)

    assert tv_density_loss(constant, planes, box_warp=1.0, generator=g).item() == 0.0
    assert tv_density_loss(wavy, planes, box_warp=1.0, generator=g).item() > 0.01


def test_neutral_loss_zero_when_render_matches_and_ignores_masked_regions() -> None:
    image, other = _images(2)
    mask = torch.ones(2, 1, 32, 32)
    keep = torch.ones(2, 1, 32, 32)
    keep[..., 10:20, 10:20] = 0  # "eyes": differences here must not count
    canonical = image.clone()
    canonical[..., 10:20, 10:20] = other[..., 10:20, 10:20]
    neutral = canonical.clone()  # I_neu == I_c inside M_neu
    total, parts = neutral_expression_loss(canonical, neutral, mask, image, keep, GradientSSIMLoss())
    assert total.item() == pytest.approx(0.0, abs=1e-5)
    worse, _ = neutral_expression_loss(other, neutral, mask, image, keep, GradientSSIMLoss())
    assert worse.item() > 0.5
    assert set(parts) == {"l1_neutral", "perc_neutral", "l1_target_masked", "perc_target_masked"}


def test_blackout_sets_removed_pixels_black() -> None:
    image = torch.ones(1, 3, 4, 4)
    keep = torch.ones(1, 1, 4, 4)
    keep[..., 0, 0] = 0
    out = blackout(image, keep)
    assert out[0, :, 0, 0].tolist() == [-1.0, -1.0, -1.0]
    assert out[0, :, 1, 1].tolist() == [1.0, 1.0, 1.0]


def test_tv_points_lie_inside_the_planes_box() -> None:
    planes = torch.zeros(2, 3, 4, 8, 8)
    seen: list[torch.Tensor] = []

    def recording(_planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        seen.append(points)
        return torch.zeros(*points.shape[:2], 2)

    for box_warp in (1.0, 0.6):
        seen.clear()
        tv_density_loss(recording, planes, box_warp=box_warp, num_points=4000, generator=torch.Generator())
        base = seen[0][:, :4000]
        # The un-jittered samples fill the box [-box_warp/2, box_warp/2]^3 (none outside) ...
        assert base.abs().max().item() <= box_warp / 2
        # ... and all of it: each axis reaches near both faces, and the octants are balanced.
        assert base.amax(dim=(0, 1)).min().item() > 0.45 * box_warp
        assert base.amin(dim=(0, 1)).max().item() < -0.45 * box_warp
        # Jittered copies stay within a few sigma of the box.
        assert seen[0][:, 4000:].abs().max().item() < box_warp / 2 + 0.03


def test_neutral_l1_is_a_mean_over_all_pixels_like_the_other_l1_terms() -> None:
    reference = torch.zeros(1, 3, 30, 30)
    region = torch.zeros(1, 1, 30, 30)
    region[..., :10, :] = 1  # a third of the image
    canonical = reference + 0.3 * region  # the same error everywhere inside the region
    no_parts = torch.ones(1, 1, 30, 30)
    _, parts = neutral_expression_loss(
        canonical, reference, region, reference * region + canonical * (1 - region), no_parts,
        GradientSSIMLoss(),
    )  # fmt: skip
    # I_neu term: error 0.3 over a third of the pixels (mean over all pixels, not over the mask).
    assert parts["l1_neutral"] == pytest.approx(0.1, abs=1e-6)
    # The masked-target term sees the same error on the same pixels and reports the same number.
    assert parts["l1_target_masked"] == pytest.approx(parts["l1_neutral"], abs=1e-6)


def test_opacity_loss_is_zero_for_the_coverage_and_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    coverage = (torch.rand(2, 1, 64, 64, generator=g) > 0.5).float()
    exact = torch.nn.functional.avg_pool2d(coverage, 4)  # the render at 16²: area-downsampled coverage
    assert opacity_loss(exact, coverage).item() == pytest.approx(0.0, abs=1e-7)
    assert opacity_loss(exact.clone().requires_grad_(True), coverage).item() == pytest.approx(0.0, abs=1e-7)
    fog = torch.full_like(exact, 0.47)
    assert opacity_loss(fog, coverage).item() == pytest.approx((fog - exact).abs().mean().item(), rel=1e-6)
    assert opacity_loss(fog, coverage).item() > 0.1
    # A nearest-neighbour subsample is not what a low-res camera sees: the loss says so.
    assert opacity_loss(coverage[..., ::4, ::4], coverage).item() > 0.05
    pred = fog.clone().requires_grad_(True)
    opacity_loss(pred, coverage).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    with pytest.raises(TrainingError):
        opacity_loss(torch.zeros(2, 3, 16, 16), coverage)


def test_region_l1_sees_only_the_region_whatever_its_area() -> None:
    pred, target = _images(3)
    region = torch.zeros(2, 1, 64, 64)
    region[:, :, 8:16, 8:24] = 1.0  # a small "mouth": 3 % of the image at 64², 4x8 pixels at 32²
    inside = (pred - target).abs()[:, :, 4:8, 4:12].mean().item()
    assert region_l1_loss(pred, target, region).item() == pytest.approx(inside, rel=1e-5)
    # Errors outside the region are not its business, and a perfect region scores 0.
    fixed = pred.clone()
    fixed[:, :, 4:8, 4:12] = target[:, :, 4:8, 4:12]
    assert region_l1_loss(fixed, target, region).item() == pytest.approx(0.0, abs=1e-7)
    # Normalised by the region's area: the same error per pixel scores the same in a bigger region.
    shifted = target + 0.25
    bigger = torch.zeros_like(region)
    bigger[:, :, :32, :] = 1.0
    assert region_l1_loss(shifted, target, region).item() == pytest.approx(0.25, rel=1e-5)
    assert region_l1_loss(shifted, target, bigger).item() == pytest.approx(0.25, rel=1e-5)
    # An empty region (a batch without eyes or mouth in view) contributes nothing, not a NaN.
    assert region_l1_loss(pred, target, torch.zeros_like(region)).item() == 0.0
    grad_pred = pred.clone().requires_grad_(True)
    region_l1_loss(grad_pred, target, region).backward()
    assert grad_pred.grad is not None
    assert grad_pred.grad[:, :, 4:8, 4:12].abs().min() > 0 and grad_pred.grad[:, :, 20:, 20:].abs().max() == 0
    with pytest.raises(TrainingError):
        region_l1_loss(pred, target, torch.zeros(2, 3, 64, 64))


def test_gate_loss_is_lowest_at_the_target_and_checks_shapes() -> None:
    target = torch.zeros(2, 16, 16)
    target[:, 4:8, 6:10] = 1.0
    near = target.clamp(0.02, 0.98)
    wrong = 1 - near
    assert (
        gate_loss(near, target)
        < 0.05
        < gate_loss(torch.full_like(target, 0.5), target)
        < gate_loss(wrong, target)
    )
    pred = torch.full_like(target, 0.5, requires_grad=True)
    gate_loss(pred, target).backward()
    assert pred.grad is not None and (pred.grad[:, 4:8, 6:10] < 0).all() and (pred.grad[:, 0, 0] > 0).all()
    with pytest.raises(TrainingError):
        gate_loss(torch.zeros(2, 8, 8), target)


def test_gate_dropout_opens_a_seeded_fraction_of_full_steps() -> None:
    from shared.model.config import tiny_config
    from shared.model.network import GOHANetwork
    from shared.training.steps import make_batch
    from shared.training.trainer import TrainConfig

    network = GOHANetwork(tiny_config())
    samples = {
        "source_image": torch.zeros(64, 3, 8, 8),
        "source_keep": torch.ones(64, 1, 8, 8),
        "source_camera": torch.zeros(64, 25),
        "target_camera": torch.zeros(64, 25),
        "target_image": torch.zeros(64, 3, 8, 8),
        "expression_image": torch.zeros(64, 3, 8, 8),
        "target_beta": torch.zeros(64, 16),
    }
    config = TrainConfig.for_profile("tiny", gate_open_prob=0.25)
    batch, _ = make_batch(samples, "full_tar", network, config, 5)
    again, _ = make_batch(samples, "full_tar", network, config, 5)
    assert batch.open_gate is not None and torch.equal(batch.open_gate, again.open_gate)
    assert 4 <= int(batch.open_gate.sum()) <= 28
    assert make_batch(samples, "coarse", network, config, 5)[0].open_gate is None
    off = TrainConfig.for_profile("tiny", gate_open_prob=0.0)
    assert make_batch(samples, "full_tar", network, off, 5)[0].open_gate is None
