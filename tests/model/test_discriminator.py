"""StyleGAN2 discriminator and the GAN losses (logistic, R1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.model.discriminator import (
    DiscriminatorConfig,
    StyleGAN2Discriminator,
    load_discriminator_weights,
    paper_discriminator_config,
    tiny_discriminator_config,
)
from shared.model.errors import ConfigError, ModelInputError
from shared.model.gan_losses import R1Config, d_logistic_loss, g_nonsaturating_loss, lazy_r1_loss, r1_penalty
from shared.model.stylegan2_layers import BlurForDownsample, ModelWeightsError

# basicsr StyleGAN2Discriminator(512, channel_multiplier=1): the notes give ~24.0M.
PAPER_D_PARAMS = 24_030_753


def make_disc(in_channels: int = 3, seed: int = 0) -> StyleGAN2Discriminator:
    torch.manual_seed(seed)
    return StyleGAN2Discriminator(tiny_discriminator_config(in_channels))


def small_disc(seed: int = 0) -> StyleGAN2Discriminator:
    """32² D for the optimisation tests (double backward at 128² is slow on 2 cores)."""
    torch.manual_seed(seed)
    return StyleGAN2Discriminator(DiscriminatorConfig(size=32, narrow=0.0625))


def images(batch: int, channels: int = 3, size: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("in_channels", [3, 6])
@pytest.mark.parametrize("batch", [1, 3, 4, 6])
def test_logit_shape(in_channels: int, batch: int) -> None:
    disc = make_disc(in_channels)
    with torch.no_grad():
        logits = disc(images(batch, in_channels))
    assert logits.shape == (batch, 1)
    assert torch.isfinite(logits).all()


def test_paper_discriminator_size_and_layout() -> None:
    single = StyleGAN2Discriminator(paper_discriminator_config())
    dual = StyleGAN2Discriminator(paper_discriminator_config(in_channels=6))
    assert sum(p.numel() for p in single.parameters()) == PAPER_D_PARAMS
    shapes = {k: tuple(v.shape) for k, v in single.state_dict().items()}
    assert shapes["conv_body.0.0.weight"] == (32, 3, 1, 1)
    assert shapes["conv_body.0.1.bias"] == (32,)
    assert shapes["conv_body.1.conv2.1.weight"] == (64, 32, 3, 3)  # index 0 is the (stateless) blur
    assert shapes["conv_body.1.skip.1.weight"] == (64, 32, 1, 1)
    assert shapes["final_conv.0.weight"] == (512, 513, 3, 3)
    assert shapes["final_linear.0.weight"] == (512, 512 * 16)
    assert shapes["final_linear.1.weight"] == (1, 512)
    assert len(shapes) == 43
    assert dual.state_dict()["conv_body.0.0.weight"].shape == (32, 6, 1, 1)


def test_minibatch_stddev_sees_sample_variety() -> None:
    disc = make_disc()
    feats = torch.randn(4, 8, 4, 4)
    varied = disc.minibatch_stddev(feats)
    same = disc.minibatch_stddev(feats[:1].expand(4, -1, -1, -1).contiguous())
    assert varied.shape == (4, 9, 4, 4)
    assert float(varied[:, -1].mean()) > 0.5
    assert float(same[:, -1].abs().max()) < 1e-3


def test_blur_is_normalised_and_padded_for_the_conv() -> None:
    blur = BlurForDownsample((1, 3, 3, 1), kernel_size=3)
    out = blur(torch.ones(1, 2, 16, 16))
    assert out.shape == (1, 2, 17, 17)  # 16 + 4 - 3, then a 3x3 stride-2 conv gives 8
    torch.testing.assert_close(out[..., 3:-3, 3:-3], torch.ones(1, 2, 11, 11))


def test_bad_input_and_config_raise_typed_errors() -> None:
    disc = make_disc(6)
    with pytest.raises(ModelInputError) as err:
        disc(images(2, 3))
    assert err.value.code == "discriminator.bad_input"
    with pytest.raises(ConfigError) as err:
        StyleGAN2Discriminator(DiscriminatorConfig(size=96))
    assert err.value.code == "discriminator.bad_config"


def test_discriminator_can_learn_to_separate() -> None:
    """A few D steps on real vs. shifted-fake images lower the D loss: the whole path trains."""
    disc = small_disc()
    optimiser = torch.optim.Adam(disc.parameters(), lr=2e-3, betas=(0.0, 0.99))
    real, fake = images(4, size=32, seed=1) * 0.5, images(4, size=32, seed=2) * 0.5 + 0.4
    losses = []
    for _ in range(6):
        loss = d_logistic_loss(disc(real), disc(fake))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_logistic_loss_signs() -> None:
    real = torch.tensor([0.0, 1.0])
    fake = torch.tensor([0.0, -1.0])
    base = d_logistic_loss(real, fake)
    assert d_logistic_loss(real + 1.0, fake) < base  # D improves when real logits rise
    assert d_logistic_loss(real, fake + 1.0) > base  # and worsens when fakes look real
    assert g_nonsaturating_loss(fake + 1.0) < g_nonsaturating_loss(fake)  # G improves when fakes look real
    torch.testing.assert_close(d_logistic_loss(torch.zeros(3), torch.zeros(3)), torch.tensor(2 * 0.6931472))
    assert g_nonsaturating_loss(torch.tensor([-20.0])) > 19.0  # non-saturating: large gradient when D wins


def test_r1_penalty_positive_and_differentiable() -> None:
    disc = small_disc()
    real = images(2, size=32).requires_grad_(True)
    penalty = r1_penalty(disc(real), real)
    assert penalty.ndim == 0 and penalty.item() > 0
    penalty.backward()
    # Past the minibatch-stddev (the only smooth non-linearity) a bias moves the input gradient only
    # through leaky-ReLU kinks, whose second derivative is 0; every other parameter shapes R1.
    without_grad = [n for n, p in disc.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert without_grad == ["final_conv.1.bias", "final_linear.0.bias", "final_linear.1.bias"]


def test_r1_penalty_matches_finite_differences_on_a_linear_critic() -> None:
    weight = torch.randn(1, 3, 4, 4)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    logits = (x * weight).flatten(1).sum(1)
    # d logit_i / d x_i = weight, so every sample contributes ||weight||^2.
    torch.testing.assert_close(r1_penalty(logits, x), weight.pow(2).sum())


def test_lazy_r1_scaling_and_schedule() -> None:
    disc = small_disc()
    real = images(2, size=32).requires_grad_(True)
    logits = disc(real)
    config = R1Config(gamma=10.0, every=16)
    lazy = lazy_r1_loss(logits, real, config)
    torch.testing.assert_close(lazy, 10.0 / 2 * 16 * r1_penalty(logits, real))
    assert [step for step in range(40) if config.is_due(step)] == [0, 16, 32]
    with pytest.raises(ConfigError):
        R1Config(every=0)
    with pytest.raises(ModelInputError) as err:
        r1_penalty(logits, images(2, size=32))
    assert err.value.code == "gan.r1_no_grad"


def test_weight_round_trip_and_dual_input_first_conv(tmp_path: Path) -> None:
    source = make_disc(3, seed=1)
    file = tmp_path / "net_d.pth"
    torch.save({"params": source.state_dict()}, file)
    target = make_disc(3, seed=2)
    report = load_discriminator_weights(target, file)
    assert report.ok
    x = images(2)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))

    # The 6-channel dual D takes every tensor except the new first conv.
    dual = make_disc(6, seed=3)
    fresh_first = dual.conv_body[0][0].weight.detach().clone()
    report = load_discriminator_weights(dual, file)
    assert report.tolerated == ["conv_body.0.0.weight"]
    assert report.matching == report.network_tensors - 1
    assert torch.equal(dual.conv_body[0][0].weight, fresh_first)
    assert torch.equal(dual.final_linear[1].weight, source.final_linear[1].weight)

    # A D of another width does not load in strict mode.
    wide = StyleGAN2Discriminator(DiscriminatorConfig(size=128, narrow=0.25))
    with pytest.raises(ModelWeightsError) as err:
        load_discriminator_weights(wide, file)
    assert err.value.code == "weights.mismatch"
