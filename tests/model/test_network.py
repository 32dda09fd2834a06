from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from shared.model import cameras as cams
from shared.model.canonical import PlaneHead
from shared.model.config import AppearanceConfig, ExpressionConfig, paper_config, tiny_config
from shared.model.errors import CheckpointError, ModelInputError
from shared.model.network import GOHABatch, GOHANetwork, SourceAvatar
from tests.model.conftest import MICRO_ENCODER, make_batch, make_network, micro_config


def test_micro_forward_shapes(micro_network: GOHANetwork) -> None:
    cfg = micro_network.config
    batch = make_batch(cfg)
    with torch.no_grad():
        out = micro_network(batch, deterministic=True)
    r, c, pr = cfg.renderer.resolution, cfg.plane.channels, cfg.plane.resolution
    for image in (out.canonical, out.canonical_expression, out.full):
        assert image is not None and image.shape == (2, 3, r, r)
    assert out.final.features.shape == (2, cfg.renderer.feature_channels, r, r)
    assert out.depth.shape == (2, 1, r, r) and out.final.opacity.shape == (2, 1, r, r)
    assert out.superres is not None and out.superres.shape == (2, 3, 32, 32)
    assert out.source_depth is not None and out.source_depth.shape == (2, 1, 16, 16)
    for planes in (out.canonical_planes, out.expression_planes, out.appearance_planes, out.planes):
        assert planes is not None and planes.shape == (2, 3, c, pr, pr)
    torch.testing.assert_close(
        out.planes, out.canonical_planes + out.appearance_planes + out.expression_planes
    )
    # Three different renders: the branches all contribute.
    assert out.canonical is not None and not torch.allclose(out.canonical, out.canonical_expression)
    assert not torch.allclose(out.canonical_expression, out.full)
    assert ((out.depth >= 2.25) & (out.depth <= 3.3)).all()


def test_tiny_profile_forward_shapes_and_checkpoint_budget() -> None:
    cfg = tiny_config()
    network = make_network(cfg)
    n_bytes = sum(p.numel() * p.element_size() for p in network.state_dict().values())
    assert n_bytes <= 25 * 1024 * 1024
    with torch.no_grad():
        out = network(make_batch(cfg, batch=1), deterministic=True, intermediate_renders=False)
    assert out.full is not None and out.full.shape == (1, 3, 64, 64)
    assert out.superres is not None and out.superres.shape == (1, 3, 128, 128)
    # T_c and T_e are 64²; T_p's 128² colour plane makes the sum the decoder reads 128². 16 feature
    # channels, 4 of lifted colour (T_p only), 2 of the mouth-interior map and its teeth (T_e only).
    assert out.canonical_planes.shape == (1, 3, 22, 64, 64)  # zero in the colour and mouth channels
    assert out.canonical_planes[:, :, 16:].abs().max() == 0
    assert out.appearance_planes is not None and out.appearance_planes.shape == (1, 3, 22, 128, 128)
    assert out.appearance_planes[:, :, 20].abs().max() == 0
    assert out.expression_planes is not None and out.expression_planes.shape == (1, 3, 22, 64, 64)
    assert out.planes.shape == (1, 3, 22, 128, 128)


def test_paper_profile_plane_heads_have_the_papers_shapes() -> None:
    cfg = paper_config()
    head = PlaneHead(256, cfg.plane.head_channels, cfg.plane.channels, cfg.head_upsamples)
    # Embed2Plane: 1,405,664 parameters (official-code-notes §10).
    assert sum(p.numel() for p in head.parameters()) == 1_405_664
    assert [n for n, _ in head.named_parameters()][::2] == [f"up_layers.{i}.weight" for i in (0, 2, 4, 6, 8)]
    with torch.no_grad():
        planes = head(torch.zeros(1, 256, 128, 128))
    assert planes.shape == (1, 3, 32, 256, 256)


def test_gradients_reach_every_branch() -> None:
    network = make_network()
    network.train()
    out = network(make_batch(network.config), generator=torch.Generator().manual_seed(0))
    assert out.canonical is not None and out.canonical_expression is not None
    assert out.full is not None and out.superres is not None
    loss = (
        out.canonical.abs().mean()
        + out.canonical_expression.abs().mean()
        + out.full.abs().mean()
        + out.superres.abs().mean()
    )
    loss.backward()
    # The SR's pyramid heads (toRGB, used by its training loss only) and GFPGAN's unused mapping
    # network (kept for weight compatibility) are the only parameters off the forward path.
    off_path = ("superres.toRGB.", "superres.stylegan_decoder.style_mlp.")
    missing = [
        name
        for name, p in network.named_parameters()
        if p.requires_grad
        and (p.grad is None or not torch.any(p.grad != 0))
        and not name.startswith(off_path)
    ]
    assert missing == []
    for branch in ("canonical.", "appearance.", "expression.", "renderer.decoder.", "superres.conv_body"):
        assert any(name.startswith(branch) for name, _ in network.named_parameters())


def test_tiny_profile_sr_starts_from_the_render_detail_and_serving_agrees() -> None:
    """The tiny profile re-reads the lifted colour at the SR's 128² (`RenderOutput.detail`): with
    the SR's residual gain at 0 the served frame is that image, and reconstruct + animate still
    equal the monolithic forward."""
    cfg = tiny_config()
    network = make_network(cfg)
    batch = make_batch(cfg, batch=1)
    with torch.no_grad():
        mono = network(batch, deterministic=True, intermediate_renders=False, return_features=False)
        avatar = network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
        frames = network.animate(avatar, batch.expression_render, batch.target_camera)
    assert mono.final.detail is not None and mono.final.detail.shape == (1, 3, 128, 128)
    assert mono.superres is not None and frames.frames is not None
    torch.testing.assert_close(mono.superres, mono.final.detail, rtol=0, atol=0)  # gain 0 at init
    torch.testing.assert_close(frames.frames, mono.superres, atol=1e-4, rtol=1e-4)


def test_reconstruct_then_animate_equals_the_monolithic_forward(micro_network: GOHANetwork) -> None:
    batch = make_batch(micro_network.config)
    with torch.no_grad():
        mono = micro_network(batch, deterministic=True, return_features=False)
        avatar = micro_network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
        frames = micro_network.animate(avatar, batch.expression_render, batch.target_camera)
    assert avatar.cacheable and avatar.planes is not None
    torch.testing.assert_close(avatar.planes, mono.canonical_planes + mono.appearance_planes)
    assert mono.full is not None and mono.superres is not None and frames.frames is not None
    torch.testing.assert_close(frames.low_res, mono.full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(frames.depth, mono.depth, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(frames.frames, mono.superres, atol=1e-4, rtol=1e-4)


def test_one_avatar_drives_many_frames_in_chunks(micro_network: GOHANetwork) -> None:
    cfg = micro_network.config
    batch = make_batch(cfg, batch=1)
    n = 5
    gen = torch.Generator().manual_seed(5)
    renders = torch.rand(n, 3, 48, 48, generator=gen) * 2 - 1  # another size: resized to 64²
    cameras = cams.orbit_path(n, period=10)
    with torch.no_grad():
        avatar = micro_network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
        whole = micro_network.animate(avatar, renders, cameras)
        micro_network.max_frames_per_chunk = 2
        try:
            chunked = micro_network.animate(avatar, renders, cameras)
        finally:
            micro_network.max_frames_per_chunk = 8
        single = micro_network.animate(avatar, renders[3:4], cameras[3:4])
    assert whole.low_res.shape == (n, 3, 16, 16) and whole.frames is not None
    torch.testing.assert_close(chunked.low_res, whole.low_res, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single.low_res[0], whole.low_res[3], atol=1e-5, rtol=1e-5)


def test_batch_of_two_equals_two_singles(micro_network: GOHANetwork) -> None:
    batch = make_batch(micro_network.config)
    with torch.no_grad():
        both = micro_network(batch, deterministic=True)
        singles = []
        for i in range(2):
            one = GOHABatch(
                source_image=batch.source_image[i : i + 1],
                source_mask=batch.source_mask[i : i + 1],
                source_camera=batch.source_camera[i : i + 1],
                target_camera=batch.target_camera[i : i + 1],
                expression_render=batch.expression_render[i : i + 1],  # type: ignore[index]
            )
            singles.append(micro_network(one, deterministic=True))
    for field in ("canonical", "canonical_expression", "full", "superres", "source_depth", "planes"):
        stacked = torch.cat([getattr(s, field) for s in singles])
        torch.testing.assert_close(getattr(both, field), stacked, atol=1e-5, rtol=1e-4, msg=field)


def test_deterministic_inference_is_repeatable_and_training_mode_is_not(micro_network: GOHANetwork) -> None:
    batch = make_batch(micro_network.config)
    with torch.no_grad():
        a = micro_network(batch, deterministic=True)
        b = micro_network(batch, deterministic=True)
        c = micro_network(batch, generator=torch.Generator().manual_seed(1))
        d = micro_network(batch, generator=torch.Generator().manual_seed(2))
    assert a.superres is not None and b.superres is not None
    assert torch.equal(a.full, b.full) and torch.equal(a.superres, b.superres)
    assert c.full is not None and d.full is not None
    assert not torch.equal(c.full, d.full)
    assert not torch.equal(c.superres, d.superres)


def test_avatar_fp16_detach_save_and_load(micro_network: GOHANetwork, tmp_path: Path) -> None:
    batch = make_batch(micro_network.config, batch=1)
    avatar = micro_network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
    assert avatar.planes is not None and avatar.planes.requires_grad  # grad mode is the caller's
    half = avatar.detach().to(torch.float16)
    assert half.planes is not None and half.planes.dtype == torch.float16 and not half.planes.requires_grad
    assert half.nbytes() * 2 == avatar.nbytes()
    path = tmp_path / "avatar.pt"
    half.save(path)
    loaded = SourceAvatar.load(path, expected_config_hash=micro_network.config_hash)
    assert loaded.model_version == avatar.model_version and loaded.planes is not None
    assert torch.equal(loaded.planes, half.planes)
    with torch.no_grad():
        full = micro_network.animate(avatar.detach(), batch.expression_render, batch.target_camera)
        from_half = micro_network.animate(loaded, batch.expression_render, batch.target_camera)
    torch.testing.assert_close(from_half.low_res, full.low_res, atol=2e-2, rtol=0)
    with pytest.raises(CheckpointError) as info:
        SourceAvatar.load(path, expected_config_hash="000000000000")
    assert info.value.code == "model.avatar_mismatch"


def test_avatar_from_another_config_is_refused(micro_network: GOHANetwork) -> None:
    batch = make_batch(micro_network.config, batch=1)
    with torch.no_grad():
        avatar = micro_network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
    foreign = dataclasses.replace(avatar, config_hash="abcdefabcdef")
    with pytest.raises(CheckpointError) as info:
        micro_network.animate(foreign, batch.expression_render, batch.target_camera)
    assert info.value.code == "model.avatar_mismatch"


def test_bad_inputs_raise_typed_errors(micro_network: GOHANetwork) -> None:
    batch = make_batch(micro_network.config, batch=1)
    cases = [
        dataclasses.replace(batch, source_image=torch.zeros(1, 3, 32, 32)),
        dataclasses.replace(batch, source_image=batch.source_image * 3),
        dataclasses.replace(batch, source_mask=torch.ones(1, 1, 64, 64) * 2),
        dataclasses.replace(batch, target_camera=torch.zeros(1, 16)),
        dataclasses.replace(batch, source_camera=torch.full((1, 25), float("nan"))),
        dataclasses.replace(batch, expression_render=None),
        dataclasses.replace(batch, expression_render=torch.zeros(2, 3, 64, 64)),
    ]
    codes = set()
    for case in cases:
        with pytest.raises(ModelInputError) as info, torch.no_grad():
            micro_network(case, deterministic=True)
        codes.add(info.value.code)
    assert codes == {
        "model.bad_image",
        "model.bad_range",
        "model.bad_camera",
        "model.missing_expression",
        "model.batch_mismatch",
    }


def test_ablation_without_appearance_branch() -> None:
    cfg = micro_config(appearance=AppearanceConfig(enabled=False, encoder=MICRO_ENCODER))
    network = make_network(cfg)
    assert network.appearance is None
    batch = make_batch(cfg)
    with torch.no_grad():
        out = network(batch, deterministic=True)
        avatar = network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
        frames = network.animate(avatar, batch.expression_render, batch.target_camera)
    assert out.full is None and out.appearance_planes is None and out.canonical_expression is not None
    torch.testing.assert_close(frames.low_res, out.canonical_expression, atol=1e-5, rtol=1e-5)


def test_linear_expression_ablation_mixes_learned_bases() -> None:
    cfg = micro_config(expression=ExpressionConfig(mode="linear", num_bases=6))
    network = make_network(cfg)
    with torch.no_grad():
        network.expression.bases.normal_(0, 0.1)  # type: ignore[union-attr]
    batch = make_batch(cfg, num_coefficients=6)
    network.train()
    out = network(batch, generator=torch.Generator().manual_seed(0))
    assert out.expression_planes is not None
    expected = torch.einsum("bk,kpcij->bpcij", batch.expression_coefficients, network.expression.bases)
    torch.testing.assert_close(out.expression_planes, expected)
    assert out.full is not None
    out.full.abs().mean().backward()
    assert network.expression.bases.grad is not None and network.expression.bases.grad.abs().sum() > 0
    network.eval()
    with torch.no_grad():
        avatar = network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
        frames = network.animate(
            avatar, None, batch.target_camera, expression_coefficients=batch.expression_coefficients
        )
        mono = network(batch, deterministic=True)
    torch.testing.assert_close(frames.low_res, mono.full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ModelInputError):
        network.animate(avatar, batch.expression_render, batch.target_camera)


def test_lifting_from_canonical_plus_expression_recomputes_appearance_per_frame() -> None:
    cfg = micro_config(
        appearance=AppearanceConfig(
            encoder=MICRO_ENCODER, upsampler_hidden=16, depth_source="canonical_expression"
        )
    )
    network = make_network(cfg)
    batch = make_batch(cfg)
    with torch.no_grad():
        mono = network(batch, deterministic=True)
        avatar = network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
        frames = network.animate(avatar, batch.expression_render, batch.target_camera)
        # The same portrait driven by another expression gets another T_p.
        other = network.animate(avatar, batch.expression_render.flip(0), batch.target_camera)  # type: ignore[union-attr]
    assert not avatar.cacheable and avatar.canonical is not None
    torch.testing.assert_close(frames.low_res, mono.full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(frames.low_res, other.low_res)


def test_composite_appearance_input_of_the_released_code() -> None:
    six = dataclasses.replace(MICRO_ENCODER, in_channels=6)
    cfg = micro_config(appearance=AppearanceConfig(encoder=six, upsampler_hidden=16, input_mode="composite"))
    network = make_network(cfg)
    batch = make_batch(cfg)
    with torch.no_grad():
        mono = network(batch, deterministic=True)
        avatar = network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
        frames = network.animate(avatar, batch.expression_render, batch.target_camera)
    torch.testing.assert_close(frames.low_res, mono.full, atol=1e-5, rtol=1e-5)


def test_half_precision_network_matches_float32() -> None:
    # bfloat16 on CPU stands in for fp16 serving on GPUs: rays, depth and compositing stay float32.
    network = make_network()
    batch = make_batch(network.config, batch=1)
    with torch.no_grad():
        avatar = network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
        reference = network.animate(avatar, batch.expression_render, batch.target_camera)
        network.to(torch.bfloat16)
        half = network.animate(avatar.to(torch.bfloat16), batch.expression_render, batch.target_camera)  # type: ignore[arg-type]
    assert half.low_res.dtype == torch.bfloat16 and half.depth.dtype == torch.float32
    torch.testing.assert_close(half.low_res.float(), reference.low_res, atol=3e-2, rtol=0)


def test_opt_in_superres_autocast_is_close_to_float32_and_off_by_default() -> None:
    network = make_network()
    assert network.superres_autocast is None  # exact by default
    batch = make_batch(network.config, batch=2)
    with torch.no_grad():
        avatar = network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
        exact = network.animate(avatar, batch.expression_render, batch.target_camera)
        network.superres_autocast = torch.bfloat16
        approx = network.animate(avatar, batch.expression_render, batch.target_camera)
    assert exact.frames is not None and approx.frames is not None
    assert approx.frames.dtype == torch.float32  # the network's dtype, whatever the SR ran in
    torch.testing.assert_close(approx.low_res, exact.low_res)  # only the SR is approximated
    assert not torch.equal(approx.frames, exact.frames)
    torch.testing.assert_close(approx.frames, exact.frames, atol=5e-2, rtol=0)


def test_freeze_in_eval_survives_train_calls() -> None:
    network = make_network()
    frozen = network.freeze_in_eval({"superres"})
    assert "canonical" in frozen and "superres" not in frozen
    network.train()
    assert network.training and network.superres.training
    assert not network.canonical.training and not network.canonical.encoder.training
    assert not any(m.training for m in network.expression.modules())
    network.eval()
    assert not network.superres.training


def test_canonical_only_forward_reuses_the_final_render_and_serving_is_re_exported(
    micro_network: GOHANetwork,
) -> None:
    """Without T_e and T_p the final render IS I_c (one render, chosen explicitly); the serving
    functions behind reconstruct/animate and the avatar type are the same objects as before."""
    from shared.model import avatar as avatar_module
    from shared.model import network as network_module
    from shared.model import serving

    batch = dataclasses.replace(
        make_batch(micro_network.config), use_expression=False, use_appearance=False, use_superres=False
    )
    with torch.no_grad():
        out = micro_network(batch, deterministic=True)
    assert out.canonical is out.final.rgb
    assert out.canonical_expression is None and out.full is None
    assert network_module.SourceAvatar is avatar_module.SourceAvatar
    assert network_module.AnimationOutput is serving.AnimationOutput
    full = make_batch(micro_network.config)
    with torch.no_grad():
        by_method = micro_network.reconstruct(full.source_image, full.source_mask, full.source_camera)
        by_function = serving.reconstruct(
            micro_network, full.source_image, full.source_mask, full.source_camera
        )
    assert by_method.planes is not None and by_function.planes is not None
    assert torch.equal(by_method.planes, by_function.planes)
