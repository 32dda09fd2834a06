"""Super-resolution network: shapes, noise modes, gradients, GFPGAN weight layout and loading."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shared.model.errors import CheckpointError, ConfigError, ModelInputError
from shared.model.stylegan2_layers import ModelWeightsError, ModulatedConv2d
from shared.model.superres import (
    SuperResConfig,
    SuperResolution,
    load_gfpgan_weights,
    paper_superres_config,
    tiny_superres_config,
)

# Published parameter count of GFPGANv1Clean(512, cm 2, different_w, sft_half), noise buffers excluded.
GFPGAN_V1_CLEAN_PARAMS = 86_444_252


# Behaviour tests run on a micro instance of the same architecture (16² -> 32²) to stay fast on 2
# shared cores; the tiny and paper profiles get their own shape/layout tests.
MICRO = SuperResConfig(in_size=16, out_size=32, num_style_feat=32, channel_multiplier=1, narrow=0.125)


def make_model(seed: int = 0, config: SuperResConfig = MICRO, noise_strength: float = 0.1) -> SuperResolution:
    torch.manual_seed(seed)
    model = SuperResolution(config)
    # Fresh StyleGAN2 noise strengths are 0 (noise has no effect); trained ones are not.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("style_conv1.weight") or (".style_convs." in name and name.endswith(".weight")):
                if param.numel() == 1:
                    param.fill_(noise_strength)
    return model


def low_res_batch(batch: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=gen) * 2 - 1


@pytest.fixture(scope="module")
def micro_model() -> SuperResolution:
    return make_model().eval()


def test_tiny_profile_forward_shape_and_pyramid() -> None:
    model = make_model(config=tiny_superres_config()).eval()
    with torch.no_grad():
        image, pyramid = model.forward_with_pyramid(low_res_batch(2, size=32), deterministic=True)
    assert image.shape == (2, 3, 128, 128)
    assert torch.isfinite(image).all()
    assert 0.01 < float(image.std()) < 10.0
    assert [p.shape[-1] for p in pyramid] == [8, 16, 32, 64, 128]


def test_deterministic_mode_repeats_exactly(micro_model: SuperResolution) -> None:
    x = low_res_batch(2)
    with torch.no_grad():
        a = micro_model(x, deterministic=True)
        b = micro_model(x, deterministic=True)
    assert torch.equal(a, b)


def test_random_noise_differs_and_generator_reproduces(micro_model: SuperResolution) -> None:
    x = low_res_batch(2)
    with torch.no_grad():
        free_a, free_b = micro_model(x), micro_model(x)
        seeded_a = micro_model(x, generator=torch.Generator().manual_seed(7))
        seeded_b = micro_model(x, generator=torch.Generator().manual_seed(7))
        seeded_c = micro_model(x, generator=torch.Generator().manual_seed(8))
        fixed = micro_model(x, deterministic=True)
    assert (free_a - free_b).abs().max() > 1e-4
    assert torch.equal(seeded_a, seeded_b)
    assert (seeded_a - seeded_c).abs().max() > 1e-4
    assert (seeded_a - fixed).abs().max() > 1e-4


def test_output_depends_on_input(micro_model: SuperResolution) -> None:
    with torch.no_grad():
        a = micro_model(low_res_batch(1, seed=1), deterministic=True)
        b = micro_model(low_res_batch(1, seed=2), deterministic=True)
    assert (a - b).abs().mean() > 1e-3


def test_batch_items_are_independent(micro_model: SuperResolution) -> None:
    x = low_res_batch(3)
    with torch.no_grad():
        together = micro_model(x, deterministic=True)
        alone = micro_model(x[1:2], deterministic=True)
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("noise", ["fixed", "random"])
def test_in_place_inference_path_equals_the_autograd_path(noise: str) -> None:
    """Without autograd the layers update their own intermediates in place (channels_last); the
    values must be those of the differentiable path."""
    model = make_model().eval()
    x = low_res_batch(2)
    deterministic = noise == "fixed"
    with torch.no_grad():
        fast, fast_pyramid = model.forward_with_pyramid(
            x, deterministic=deterministic, generator=torch.Generator().manual_seed(3)
        )
    plain, plain_pyramid = model.forward_with_pyramid(
        x, deterministic=deterministic, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(fast, plain.detach(), atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_pyramid, plain_pyramid):
        torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=1e-5)
    # Outputs come back in the ordinary layout whatever the SR computes in.
    assert fast.is_contiguous() and all(p.is_contiguous() for p in fast_pyramid)


def test_gradients_reach_every_used_parameter() -> None:
    model = make_model().train()
    image, pyramid = model.forward_with_pyramid(low_res_batch(2), generator=torch.Generator().manual_seed(0))
    loss = image.square().mean() + sum(p.square().mean() for p in pyramid)
    loss.backward()
    unused_prefix = "stylegan_decoder.style_mlp."  # latents come from the encoder, as in the paper
    without_grad = [
        name
        for name, p in model.named_parameters()
        if not name.startswith(unused_prefix) and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert without_grad == []
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(unused_prefix))


def test_modulated_conv_matches_per_sample_weight_definition() -> None:
    """The input-modulation implementation equals StyleGAN2's per-sample modulated weights."""
    torch.manual_seed(0)
    for demodulate, mode in [(True, None), (True, "upsample"), (False, None)]:
        conv = ModulatedConv2d(6, 5, 3, num_style_feat=8, demodulate=demodulate, sample_mode=mode)
        x, style = torch.randn(3, 6, 8, 8), torch.randn(3, 8)
        scale = conv.modulation(style)
        weight = conv.weight * scale[:, None, :, None, None]  # (B, out, in, k, k)
        if demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        xr = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False) if mode else x
        reference = F.conv2d(
            xr.reshape(1, -1, *xr.shape[2:]), weight.reshape(-1, 6, 3, 3), padding=1, groups=3
        )
        torch.testing.assert_close(conv(x, style), reference.view(3, 5, *xr.shape[2:]), atol=1e-5, rtol=1e-4)


def test_input_is_upsampled_bilinearly_with_aligned_corners(micro_model: SuperResolution) -> None:
    x = low_res_batch(1)
    up = micro_model.upsample_input(x)
    assert up.shape == (1, 3, 32, 32)
    # align_corners=True keeps the corner pixels exactly.
    torch.testing.assert_close(up[..., 0, 0], x[..., 0, 0])
    torch.testing.assert_close(up[..., -1, -1], x[..., -1, -1])


def test_bad_input_raises_typed_error(micro_model: SuperResolution) -> None:
    for bad in (torch.zeros(1, 4, 16, 16), torch.zeros(1, 3, 32, 32), torch.zeros(3, 16, 16)):
        with pytest.raises(ModelInputError) as err:
            micro_model(bad)
        assert err.value.code == "superres.bad_input"
    with pytest.raises(ModelInputError) as err:
        micro_model(torch.zeros(1, 3, 16, 16, dtype=torch.int64))
    assert err.value.code == "superres.bad_input"


@pytest.mark.parametrize(
    "config",
    [
        SuperResConfig(in_size=32, out_size=100),  # not a power of two
        SuperResConfig(in_size=256, out_size=128),  # in larger than out
        SuperResConfig(in_size=32, out_size=128, narrow=0.005),  # no channels left
        SuperResConfig(in_size=32, out_size=128, channel_multiplier=1, narrow=0.03),  # odd widths break SFT
    ],
)
def test_bad_config_raises_typed_error(config: SuperResConfig) -> None:
    with pytest.raises(ConfigError) as err:
        SuperResolution(config)
    assert err.value.code == "superres.bad_config"


def test_paper_layout_matches_gfpgan_v1_clean() -> None:
    model = SuperResolution(paper_superres_config())
    assert sum(p.numel() for p in model.parameters()) == GFPGAN_V1_CLEAN_PARAMS
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    expected = {
        "conv_body_first.weight": (32, 3, 1, 1),
        "conv_body_down.0.conv1.weight": (32, 32, 3, 3),
        "conv_body_down.6.skip.weight": (256, 256, 1, 1),
        "final_conv.weight": (256, 256, 3, 3),
        "final_linear.weight": (16 * 512, 256 * 16),
        "conv_body_up.6.conv2.weight": (32, 64, 3, 3),
        "toRGB.6.weight": (3, 32, 1, 1),
        "condition_scale.0.0.weight": (256, 256, 3, 3),
        "condition_shift.6.2.weight": (32, 32, 3, 3),
        "stylegan_decoder.style_mlp.1.weight": (512, 512),
        "stylegan_decoder.style_mlp.15.bias": (512,),
        "stylegan_decoder.constant_input.weight": (1, 512, 4, 4),
        "stylegan_decoder.style_conv1.modulated_conv.weight": (1, 512, 512, 3, 3),
        "stylegan_decoder.style_conv1.modulated_conv.modulation.weight": (512, 512),
        "stylegan_decoder.style_conv1.weight": (1,),
        "stylegan_decoder.style_conv1.bias": (1, 512, 1, 1),
        "stylegan_decoder.to_rgb1.modulated_conv.weight": (1, 3, 512, 1, 1),
        "stylegan_decoder.to_rgb1.bias": (1, 3, 1, 1),
        "stylegan_decoder.style_convs.13.modulated_conv.weight": (1, 64, 64, 3, 3),
        "stylegan_decoder.to_rgbs.6.modulated_conv.modulation.bias": (64,),
        "stylegan_decoder.noises.noise0": (1, 1, 4, 4),
        "stylegan_decoder.noises.noise14": (1, 1, 512, 512),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert len(shapes) == 285
    assert not any(k.startswith("stylegan_decoder.noises.noise15") for k in shapes)


@pytest.mark.slow
def test_paper_forward_batch_one() -> None:
    model = make_model(config=paper_superres_config()).eval()
    with torch.no_grad():
        out = model(low_res_batch(1, size=224), deterministic=True)
    assert out.shape == (1, 3, 512, 512)
    assert torch.isfinite(out).all()


def save_gfpgan_style(path: Path, state: dict[str, torch.Tensor], key: str = "params_ema") -> None:
    torch.save({key: state, "params": {}}, path)


def test_weight_file_round_trip(tmp_path: Path) -> None:
    source = make_model(seed=1, noise_strength=0.2).eval()
    file = tmp_path / "GFPGANv1.3-like.pth"
    save_gfpgan_style(file, source.state_dict())
    target = make_model(seed=2).eval()
    x = low_res_batch(2)
    with torch.no_grad():
        assert (source(x, deterministic=True) - target(x, deterministic=True)).abs().max() > 1e-3
    report = load_gfpgan_weights(target, file)
    assert report.ok and len(report.loaded) == len(source.state_dict())
    with torch.no_grad():
        assert torch.equal(source(x, deterministic=True), target(x, deterministic=True))


def test_weight_file_under_a_prefix(tmp_path: Path) -> None:
    source = make_model(seed=1)
    file = tmp_path / "full_checkpoint.pt"
    state = {f"neural_layers.gfpgan.{k}": v for k, v in source.state_dict().items()}
    state["decoder.net.0.weight"] = torch.zeros(2, 2)
    torch.save({"model_state_dict": state, "iter": 825000}, file)
    target = make_model(seed=2)
    report = load_gfpgan_weights(target, file, key="model_state_dict", prefix="neural_layers.gfpgan.")
    assert report.ok
    assert torch.equal(target.final_linear.weight, source.final_linear.weight)


def test_shape_mismatch_is_a_clear_error_and_leaves_model_untouched(tmp_path: Path) -> None:
    # Same widths, half the style size: every style-dependent tensor differs.
    wider = make_model(seed=1, config=dataclasses.replace(MICRO, num_style_feat=16))
    file = tmp_path / "wrong.pth"
    save_gfpgan_style(file, wider.state_dict())
    target = make_model(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ModelWeightsError) as err:
        load_gfpgan_weights(target, file)
    assert err.value.code == "weights.mismatch" and isinstance(err.value, CheckpointError)
    message = str(err.value)
    assert "shape mismatched (29)" in message and "0 loaded" in message
    assert "stylegan_decoder.style_mlp.1.weight model[32, 32] file[16, 16]" in message
    report = err.value.report
    assert report is not None and len(report.shape_mismatched) == 29 and not report.missing
    assert "stylegan_decoder.style_conv1.modulated_conv.modulation.weight" in {
        m.name for m in report.shape_mismatched
    }
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())

    # Non-strict: everything that fits is loaded, the rest is reported.
    report = load_gfpgan_weights(target, file, strict=False)
    assert not report.ok
    assert {m.name for m in report.shape_mismatched} >= {"final_linear.weight", "final_linear.bias"}
    assert torch.equal(target.conv_body_first.weight, wider.conv_body_first.weight)


def test_missing_and_unexpected_keys_are_reported(tmp_path: Path) -> None:
    state = make_model(seed=1).state_dict()
    del state["toRGB.0.bias"]
    state["stylegan_decoder.noises.noise99"] = torch.zeros(1)
    file = tmp_path / "partial.pth"
    save_gfpgan_style(file, state)
    with pytest.raises(ModelWeightsError) as err:
        load_gfpgan_weights(make_model(seed=2), file)
    report = err.value.report
    assert report is not None
    assert report.missing == ["toRGB.0.bias"] and report.unexpected == ["stylegan_decoder.noises.noise99"]
    assert "missing from file (1): toRGB.0.bias" in str(err.value)


def test_unusable_weight_files_raise_typed_errors(tmp_path: Path) -> None:
    model = make_model()
    cases: dict[str, object] = {"no_key.pth": {"params": {"x": torch.zeros(1)}}, "list.pth": [1, 2]}
    for name, blob in cases.items():
        torch.save(blob, tmp_path / name)
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    expected = {
        "missing.pth": "weights.file_not_found",
        "garbage.pth": "weights.unreadable",
        "list.pth": "weights.bad_format",
        "no_key.pth": "weights.key_not_found",
    }
    for name, code in expected.items():
        with pytest.raises(ModelWeightsError) as err:
            load_gfpgan_weights(model, tmp_path / name)
        assert err.value.code == code, name


def test_tiny_profile_is_small() -> None:
    config = tiny_superres_config()
    model = SuperResolution(config)
    assert (config.in_size, config.out_size) == (32, 128)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert config.num_latent == 2 * int(math.log2(config.out_size)) - 2


def test_residual_sr_starts_as_its_upsampled_input_and_learns_away_from_it() -> None:
    """``residual``: I_sr = up(I_lr) + g * G(.), g = 0 at init, so the untrained SR is the upsampled
    render (never worse than its input), and the gain's gradient lets training move it."""
    config = dataclasses.replace(MICRO, residual=True)
    model = make_model(config=config).train()
    low_res = low_res_batch(2)
    image = model(low_res, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(image, model.upsample_input(low_res), rtol=0, atol=0)

    target = torch.zeros_like(image)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    (image - target).square().mean().backward()
    assert model.residual_gain.grad is not None and model.residual_gain.grad.abs() > 0
    optimiser.step()
    after = model(low_res, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(after, model.upsample_input(low_res))


def test_residual_sr_starts_from_the_base_image_when_given_one() -> None:
    """``base`` (the render's detail image) replaces the upsampled input: the generator reads it
    and the residual adds to it; a base of the wrong size is a clear input error."""
    config = dataclasses.replace(MICRO, residual=True)
    model = make_model(config=config).eval()
    low_res = low_res_batch(2)
    out = config.out_size
    base = torch.rand(2, 3, out, out) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(low_res, deterministic=True, base=base), base, rtol=0, atol=0)
        model.residual_gain.fill_(0.5)
        with_base = model(low_res, deterministic=True, base=base)
        without = model(low_res, deterministic=True)
    assert not torch.allclose(with_base, without, atol=1e-3)
    with pytest.raises(ModelInputError, match="base"):
        model(low_res, base=torch.zeros(2, 3, out // 2, out // 2))


def test_sr_without_its_generator_serves_its_starting_image() -> None:
    """``generator=False``: the output is the base image (else the upsampled input) exactly, whatever
    the generator's weights and gain, and the generator is never called."""
    config = dataclasses.replace(MICRO, residual=True, generator=False)
    model = make_model(config=config).eval()
    with torch.no_grad():
        model.residual_gain.fill_(0.5)
    calls: list[int] = []
    model.stylegan_decoder.register_forward_hook(lambda *_: calls.append(1))
    low_res = low_res_batch(2)
    base = torch.rand(2, 3, config.out_size, config.out_size) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(low_res, deterministic=True, base=base), base, rtol=0, atol=0)
        torch.testing.assert_close(model(low_res, deterministic=True), model.upsample_input(low_res))
    assert calls == []
    on = make_model(config=dataclasses.replace(config, generator=True)).eval()
    on.load_state_dict(model.state_dict())  # same weights: only the switch differs
    with torch.no_grad():
        assert not torch.allclose(on(low_res, deterministic=True, base=base), base, atol=1e-3)


def test_the_tiny_profile_serves_the_detail_image_and_the_paper_one_runs_gfpgan() -> None:
    from shared.model.config import LATER_FIELDS, paper_config, tiny_config

    assert tiny_config().superres.generator is False
    assert paper_config().superres.generator is True
    assert LATER_FIELDS[("superres", "generator")] is True  # older checkpoints keep their versions


def test_with_superres_generator_re_exports_the_same_weights_as_a_new_version(tmp_path: Path) -> None:
    from shared.model.checkpoint import (
        load_checkpoint,
        read_checkpoint,
        save_checkpoint,
        with_superres_generator,
    )
    from shared.model.config import tiny_config
    from shared.model.network import GOHANetwork

    torch.manual_seed(0)
    config = tiny_config()
    network = GOHANetwork(
        dataclasses.replace(config, superres=dataclasses.replace(config.superres, generator=True))
    )
    source = tmp_path / "with.pt"
    version = save_checkpoint(network, source)
    derived = with_superres_generator(source, tmp_path / "without.pt", enabled=False)
    loaded = load_checkpoint(tmp_path / "without.pt")  # verifies its hash
    assert derived != version and loaded.model_version == derived
    assert loaded.config.superres.generator is False
    assert read_checkpoint(tmp_path / "without.pt")["extra"]["derived_from"] == version
    for name, tensor in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    assert with_superres_generator(tmp_path / "without.pt", tmp_path / "back.pt", enabled=True) == version


def test_only_the_tiny_profile_is_residual() -> None:
    from shared.model.config import paper_config, tiny_config

    assert tiny_config().superres.residual
    assert not paper_config().superres.residual  # GFPGAN's released weights keep their meaning
    assert "residual_gain" not in dict(SuperResolution(MICRO).named_parameters())
