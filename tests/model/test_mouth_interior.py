"""The mouth-interior map (ExpressionConfig.mouth_interior): where I_exp shows the open mouth's cavity,
the render shows MOUTH_INTERIOR_RGB instead of the portrait's lifted (closed) lips."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from shared.face.head_model import load_procedural_model
from shared.face.render import render_expression, render_expression_change
from shared.model.config import config_json
from shared.model.errors import ConfigError
from shared.model.expression import mouth_interior_map
from shared.model.network import GOHANetwork
from shared.model.renderer import MOUTH_INTERIOR_RGB
from tests.model.conftest import make_batch, make_network, micro_config


def mouth_micro_config(*, gate: bool = False, mouth: bool = True):
    micro = micro_config()
    return dataclasses.replace(
        micro,
        appearance=dataclasses.replace(micro.appearance, colour_resolution=64),
        expression=dataclasses.replace(micro.expression, colour_gate=gate, mouth_interior=mouth),
        renderer=dataclasses.replace(micro.renderer, feature_channels=3, source_colour_blend=True),
    )


def face_with_mouth(size: int, batch: int, *, mouth: bool) -> torch.Tensor:
    """A lit-skin face (0.2) on black (-1) with an anti-aliased rim; with ``mouth`` a dark cavity
    (-0.8) covering the face's middle."""
    image = torch.full((batch, 3, size, size), -1.0)
    lo, hi = size // 8, size - size // 8
    image[:, :, lo:hi, lo:hi] = 0.2
    image[:, :, lo - 1, lo:hi] = image[:, :, hi, lo:hi] = -0.75  # the rim: as dark as a cavity
    image[:, :, lo:hi, lo - 1] = image[:, :, lo:hi, hi] = -0.75
    if mouth:
        image[:, :, lo + 2 : hi - 2, lo + 2 : hi - 2] = -0.8
    return image


def test_config_adds_the_last_channel_after_the_gate_and_needs_the_blend() -> None:
    both = mouth_micro_config(gate=True)
    gate_only = mouth_micro_config(gate=True, mouth=False)
    assert both.plane_channels == gate_only.plane_channels + 1
    assert both.mouth_channel == both.plane_channels - 1 and both.gate_channel == both.plane_channels - 2
    assert gate_only.mouth_channel is None and gate_only.gate_channel == gate_only.plane_channels - 1
    with pytest.raises(ConfigError, match="mouth_interior"):
        mouth_only = mouth_micro_config()
        dataclasses.replace(
            mouth_only, renderer=dataclasses.replace(mouth_only.renderer, source_colour_blend=False)
        )
    # Off, the field is left out of the canonical JSON: older checkpoints keep their hash.
    assert "mouth_interior" not in config_json(mouth_micro_config(mouth=False))
    assert "mouth_interior" in config_json(both)


def test_map_marks_a_dark_cavity_inside_lit_skin_but_not_the_silhouette_rim() -> None:
    closed = mouth_interior_map(face_with_mouth(64, 1, mouth=False))
    opened = mouth_interior_map(face_with_mouth(64, 1, mouth=True))
    assert closed.max() == 0  # the rim is as dark as a cavity but has background on one side
    assert opened.shape == (1, 1, 64, 64) and opened.min() >= 0 and opened.max() <= 1
    assert opened[0, 0, 14:50, 14:50].min() == 1 and opened[0, 0, :7].max() == 0


def test_map_of_the_3dmm_follows_the_jaw_and_stays_in_its_cavity() -> None:
    """On the face stack's own I_exp: nothing for a closed mouth (its seam included), an area growing
    with jaw_open, and every marked pixel on the mesh's moved / cavity region."""
    model = load_procedural_model()
    gen = torch.Generator().manual_seed(3)
    alpha = torch.randn(4, model.num_identity, generator=gen)
    beta = torch.zeros(4, model.num_expression)
    beta[:, 0] = torch.tensor([0.0, 0.3, 0.6, 0.9])  # jaw_open
    renders = render_expression(model, alpha, beta, 128, supersample=2)
    interior = mouth_interior_map(renders)
    areas = interior.sum(dim=(1, 2, 3))
    assert areas[0] < 1.0
    assert 20 < areas[1] < areas[2] < areas[3]
    change = render_expression_change(model, alpha, beta, 128, supersample=2)
    marked = interior > 0.5
    assert (change[marked] >= 0.5).all()  # cavity-border pixels: half moved, half not


@pytest.mark.parametrize("teeth", [False, True])
def test_open_mouth_renders_the_interior_colour_and_serving_agrees(teeth: bool) -> None:
    config = mouth_micro_config()
    config = dataclasses.replace(config, expression=dataclasses.replace(config.expression, mouth_teeth=teeth))
    network = make_network(config)
    batch = make_batch(network.config, batch=2)
    batch.expression_render = face_with_mouth(network.config.image_size, 2, mouth=True)
    with torch.no_grad():
        network.renderer.decoder.net[2].bias[0] = 30.0  # opaque at the first samples
        network.renderer.decoder.net[2].bias[-1] = -6.0  # m ≈ 0: only the map can show a colour
        out = network(batch, deterministic=True, intermediate_renders=False, return_features=False)
        avatar = network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
        frames = network.animate(avatar, batch.expression_render, batch.target_camera)
    centre = (slice(None), slice(None), slice(6, 10), slice(6, 10))
    assert out.final.blend is not None and out.final.blend[centre].min() > 0.99
    # With teeth only the mouth's top rows change: the centre still shows the interior.
    expected = torch.tensor(MOUTH_INTERIOR_RGB).view(1, 3, 1, 1) * 2 - 1
    torch.testing.assert_close(
        out.final.rgb[centre], expected.expand_as(out.final.rgb[centre]), atol=0.02, rtol=0
    )
    torch.testing.assert_close(frames.low_res, out.final.rgb, atol=1e-5, rtol=1e-5)
    assert frames.frames is not None and out.superres is not None
    torch.testing.assert_close(frames.frames, out.superres, atol=1e-4, rtol=1e-4)


def test_closed_mouth_renders_exactly_like_the_network_without_the_map() -> None:
    """A map of zeros changes nothing, so a checkpoint trained without it serves unchanged and its
    weights load as they are."""
    with_map = make_network(mouth_micro_config())
    without = GOHANetwork(mouth_micro_config(mouth=False)).eval()
    assert without.load_state_dict(with_map.state_dict(), strict=True)
    batch = make_batch(with_map.config, batch=2)
    batch.expression_render = face_with_mouth(with_map.config.image_size, 2, mouth=False)
    with torch.no_grad():
        a = with_map(batch, deterministic=True, intermediate_renders=False, return_features=False)
        b = without(batch, deterministic=True, intermediate_renders=False, return_features=False)
    torch.testing.assert_close(a.final.rgb, b.final.rgb, atol=1e-6, rtol=0)
    assert a.superres is not None and b.superres is not None
    torch.testing.assert_close(a.superres, b.superres, atol=1e-5, rtol=0)


def test_gate_and_mouth_map_together_keep_their_own_channels() -> None:
    network = make_network(mouth_micro_config(gate=True))
    renders = face_with_mouth(network.config.image_size, 1, mouth=True)
    with torch.no_grad():
        t_e = network.expression_planes(renders)
    cfg = network.config
    assert t_e.shape[2] == cfg.plane_channels
    gate, mouth = t_e[0, 0, cfg.gate_channel], t_e[0, 0, cfg.mouth_channel]
    assert gate.max() < 0.05  # the gate head starts closed
    assert mouth.max() > 0.99  # the map is there from the start: it has no weights
    assert t_e[0, 1:, cfg.gate_channel :].abs().max() == 0  # XY plane only


def test_with_mouth_interior_re_exports_the_same_weights_as_a_new_version(tmp_path) -> None:
    from shared.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, with_mouth_interior

    network = make_network(mouth_micro_config(mouth=False))
    source = tmp_path / "plain.pt"
    version = save_checkpoint(network, source)
    derived = with_mouth_interior(source, tmp_path / "mouth.pt")
    loaded = load_checkpoint(tmp_path / "mouth.pt")  # verifies its hash
    assert derived != version and loaded.model_version == derived and loaded.config.mouth_interior
    assert read_checkpoint(tmp_path / "mouth.pt")["extra"]["derived_from"] == version
    for name, tensor in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    assert with_mouth_interior(tmp_path / "mouth.pt", tmp_path / "back.pt", enabled=False) == version
    with_mouth_interior(source, tmp_path / "teeth.pt", teeth=True)
    assert load_checkpoint(tmp_path / "teeth.pt").config.mouth_teeth


def test_teeth_map_is_the_top_band_of_each_column_of_the_mouth() -> None:
    from shared.model.expression import TEETH_HEIGHT, mouth_teeth_map

    interior = torch.zeros(1, 1, 128, 128)
    interior[0, 0, 60:70, 50:60] = 1.0
    interior[0, 0, 64:70, 70:72] = 0.8  # a shallower column starts lower
    teeth = mouth_teeth_map(interior)
    rows = int(TEETH_HEIGHT * 128)  # 3 rows at 128²
    assert torch.equal(teeth[0, 0, 60 : 60 + rows, 50:60], torch.ones(rows, 10))
    assert teeth[0, 0, 60 + rows :, 50:60].max() == 0 and teeth[0, 0, :60].max() == 0
    assert teeth[0, 0, 64, 70].item() == pytest.approx(0.8) and teeth[0, 0, 64 + rows, 70] == 0
    assert (teeth <= interior).all()


def test_teeth_config_and_decoder_colours() -> None:
    from shared.model.renderer import MOUTH_TEETH_RGB

    cfg = mouth_micro_config()
    teeth_cfg = dataclasses.replace(cfg, expression=dataclasses.replace(cfg.expression, mouth_teeth=True))
    assert teeth_cfg.plane_channels == cfg.plane_channels + 1 and teeth_cfg.mouth_channels == 2
    assert teeth_cfg.mouth_channel == teeth_cfg.plane_channels - 2
    with pytest.raises(ConfigError, match="mouth_teeth"):
        dataclasses.replace(
            cfg, expression=dataclasses.replace(cfg.expression, mouth_interior=False, mouth_teeth=True)
        )
    decoder = make_network(teeth_cfg).renderer.decoder
    hidden = decoder.hidden
    first = torch.zeros(4, hidden + 5)
    first[:, hidden : hidden + 3] = 0.5  # the lifted colour
    first[:, -2:] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 0.9]])  # (k, τ)
    colour = decoder.surface_colour(first)
    interior, teeth = torch.tensor(MOUTH_INTERIOR_RGB), torch.tensor(MOUTH_TEETH_RGB)
    torch.testing.assert_close(colour[0], torch.full((3,), 0.5))
    torch.testing.assert_close(colour[1], interior)
    torch.testing.assert_close(colour[2], teeth)
    torch.testing.assert_close(colour[3], 0.5 * torch.full((3,), 0.5) + 0.5 * teeth)  # τ capped at k


def test_teeth_of_the_3dmm_sit_under_the_upper_lip() -> None:
    from shared.model.expression import mouth_teeth_map

    model = load_procedural_model()
    beta = torch.zeros(1, model.num_expression)
    beta[0, 0] = 0.9
    interior = mouth_interior_map(
        render_expression(model, torch.zeros(1, model.num_identity), beta, 128, supersample=2)
    )
    teeth = mouth_teeth_map(interior)
    assert 0 < teeth.sum() < 0.6 * interior.sum()
    rows = torch.nonzero(teeth[0, 0] > 0.5)[:, 0]
    mouth_rows = torch.nonzero(interior[0, 0] > 0.5)[:, 0]
    assert rows.float().mean() < mouth_rows.float().mean()  # the band is the mouth's upper part
