"""The source-colour gate (ExpressionConfig.colour_gate): T_e's last XY channel scales the blend."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from shared.model import cameras as cams
from shared.model.config import tiny_config
from shared.model.errors import ConfigError
from tests.model.conftest import make_batch, make_network, micro_config


def gated_micro_config():
    micro = micro_config()
    return dataclasses.replace(
        micro,
        appearance=dataclasses.replace(micro.appearance, colour_resolution=64),
        expression=dataclasses.replace(micro.expression, colour_gate=True),
        renderer=dataclasses.replace(micro.renderer, feature_channels=3, source_colour_blend=True),
    )


def set_gate(network, logit: float) -> None:
    """A gate head whose output is ``logit`` everywhere (weights zero)."""
    with torch.no_grad():
        for layer in network.expression.gate:
            if hasattr(layer, "weight"):
                layer.weight.zero_()
        network.expression.gate[-1].bias.fill_(logit)


def test_config_adds_one_channel_and_needs_the_blend() -> None:
    cfg = gated_micro_config()
    plain = dataclasses.replace(cfg, expression=dataclasses.replace(cfg.expression, colour_gate=False))
    assert cfg.plane_channels == plain.plane_channels + 1 and cfg.gate_channel == cfg.plane_channels - 1
    assert plain.gate_channel is None
    with pytest.raises(ConfigError, match="colour_gate"):
        dataclasses.replace(cfg, renderer=dataclasses.replace(cfg.renderer, source_colour_blend=False))
    # The linear ablation has no gate head: the flag is inert there.
    linear = dataclasses.replace(cfg, expression=dataclasses.replace(cfg.expression, mode="linear"))
    assert linear.gate_channel is None
    # The tiny profile (the shipped config) has it off; training's variant turns it on.
    from shared.training.trainer import variant_config

    assert not tiny_config().colour_gate and variant_config("tiny", "colour_gate").colour_gate


def test_gate_is_only_in_the_xy_plane_and_in_unit_range() -> None:
    network = make_network(gated_micro_config())
    renders = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        t_e = network.expression_planes(renders)
    channel = network.config.gate_channel
    gate = t_e[:, :, channel]
    assert t_e.shape[2] == network.config.plane_channels
    assert gate[:, 1:].abs().max() == 0  # XZ / ZY carry nothing
    assert gate[:, 0].min() >= 0 and gate[:, 0].max() <= 1
    assert gate[:, 0].max() < 0.05  # starts (nearly) closed: a warm start keeps its blend
    # T_e's colour channels stay zero: only T_p writes them.
    assert t_e[:, :, network.config.plane.channels : channel].abs().max() == 0


def test_to_plane_puts_a_frontal_pixel_on_the_texel_of_its_3d_point() -> None:
    """A bright spot at the frontal-camera projection of (x, y, gate_depth) lands on the XY texel
    of (x, y): the warp is the camera's geometry, not a learned alignment."""
    cfg = gated_micro_config()
    network = make_network(cfg)
    r = cfg.plane.resolution
    x, y = 0.11, -0.17  # world units, a lower-right point of the face
    pixel, _ = cams.project_points(
        torch.tensor([[[x, y, cfg.expression.gate_depth]]]), cams.frontal_camera()[None]
    )
    size = 128
    image = torch.zeros(1, 1, size, size)
    col, row = (pixel[0, 0] * size).long().tolist()
    image[0, 0, row - 1 : row + 2, col - 1 : col + 2] = 1.0
    plane = network.expression.to_plane(image)[0, 0]
    hit = torch.nonzero(plane == plane.max())[0].float()  # (row, col) = (v ← y, u ← x)
    texel = ((torch.tensor([y, x]) * 2 / cfg.plane.box_warp + 1) * r - 1) / 2
    assert (hit - texel).abs().max() <= 1.0


def test_closed_gate_removes_the_lifted_colour_and_serving_agrees() -> None:
    network = make_network(gated_micro_config())
    batch = make_batch(network.config, batch=2)
    with torch.no_grad():
        network.renderer.decoder.net[2].bias[0] = 30.0  # opaque: M = m at the first samples
        network.renderer.decoder.net[2].bias[-1] = 6.0  # m ≈ 1 before the gate
        opened = network(batch, deterministic=True, intermediate_renders=False, return_features=False)
        set_gate(network, 12.0)  # gate ≈ 1 wherever the frontal view reaches the XY plane
        closed = network(batch, deterministic=True, intermediate_renders=False, return_features=False)
        avatar = network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
        frames = network.animate(avatar, batch.expression_render, batch.target_camera)
    assert opened.final.blend is not None and closed.final.blend is not None
    centre = slice(5, 11)
    assert opened.final.blend[:, :, centre, centre].mean() > 0.5
    assert closed.final.blend[:, :, centre, centre].max() < 1e-3
    assert frames.frames is not None and closed.superres is not None
    torch.testing.assert_close(frames.frames, closed.superres, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(frames.low_res, closed.final.rgb, atol=1e-5, rtol=1e-5)


def test_only_the_gate_loss_trains_the_gate_head() -> None:
    """T_e holds the gate detached (and the head reads E_e's features detached): a loss on the
    render does not reach the head, a loss on the returned gate does, and it does not reach E_e."""
    network = make_network(gated_micro_config()).train()
    batch = make_batch(network.config, batch=1)
    network(batch, intermediate_renders=False).final.rgb.mean().backward()
    head = list(network.expression.gate.parameters())
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in head)
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in network.expression.encoder.parameters())
    network.zero_grad(set_to_none=True)
    _, gate = network.expression_planes_and_gate(batch.expression_render)
    assert gate is not None and gate.shape == (1, 32, 32)
    gate.mean().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in head)
    assert all(p.grad is None for p in network.expression.encoder.parameters())


def test_open_gate_items_render_without_the_lifted_colour() -> None:
    """Training's gate dropout (GOHABatch.open_gate): the chosen items get M = 0, the others not."""
    network = make_network(gated_micro_config())
    batch = make_batch(network.config, batch=2)
    with torch.no_grad():
        network.renderer.decoder.net[2].bias[0] = 30.0
        network.renderer.decoder.net[2].bias[-1] = 6.0
        batch.open_gate = torch.tensor([True, False])
        out = network(batch, deterministic=True, intermediate_renders=False)
    assert out.final.blend is not None
    assert out.final.blend[0].max() < 1e-3 and out.final.blend[1, :, 5:11, 5:11].mean() > 0.5
