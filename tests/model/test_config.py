from __future__ import annotations

import dataclasses

import pytest

from shared.model.config import (
    AppearanceConfig,
    EncoderConfig,
    ModelConfig,
    RendererConfig,
    config_from_dict,
    config_hash,
    config_to_dict,
    get_profile,
    paper_config,
    tiny_config,
)
from shared.model.errors import ConfigError
from tests.model.conftest import micro_config


def test_paper_profile_has_the_papers_sizes() -> None:
    cfg = paper_config()
    assert cfg.image_size == 512 and cfg.feature_resolution == 128
    assert (cfg.plane.channels, cfg.plane.resolution) == (32, 256)
    assert cfg.canonical_encoder.hidden_sizes == (32, 64, 160, 256)
    assert cfg.canonical_encoder.num_attention_heads == (1, 2, 5, 8)
    r = cfg.renderer
    assert (r.resolution, r.depth_resolution, r.num_coarse, r.num_fine) == (224, 128, 48, 48)
    assert (r.ray_start, r.ray_end) == (2.25, 3.3)
    assert (cfg.superres.in_size, cfg.superres.out_size) == (224, 512)
    assert cfg.head_upsamples == 1
    assert cfg.appearance.depth_source == "canonical" and cfg.appearance.input_mode == "masked_source"


def test_tiny_profile_is_the_same_structure_smaller() -> None:
    cfg = tiny_config()
    assert cfg.profile == "tiny" and cfg.image_size == 128
    assert cfg.renderer.depth_resolution == cfg.feature_resolution == 32
    assert cfg.superres.in_size == cfg.renderer.resolution
    assert get_profile("tiny") == cfg and get_profile("paper") == paper_config()


def test_unknown_profile_is_a_typed_error() -> None:
    with pytest.raises(ConfigError) as info:
        get_profile("huge")
    assert info.value.code == "config.unknown_profile"


@pytest.mark.parametrize("factory", [paper_config, tiny_config, micro_config])
def test_dict_round_trip_is_lossless(factory) -> None:
    cfg = factory()
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_hash(config_from_dict(config_to_dict(cfg))) == config_hash(cfg)


def test_hash_changes_with_any_field() -> None:
    cfg = tiny_config()
    other = dataclasses.replace(cfg, renderer=dataclasses.replace(cfg.renderer, num_fine=23))
    assert config_hash(other) != config_hash(cfg)


def test_unknown_fields_are_rejected() -> None:
    data = config_to_dict(tiny_config())
    data["renderer"]["warp_speed"] = 9
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert info.value.code == "config.unknown_field"


def test_inconsistent_sizes_are_rejected() -> None:
    with pytest.raises(ConfigError, match="depth_resolution"):
        ModelConfig(profile="x", renderer=RendererConfig(depth_resolution=64))
    with pytest.raises(ConfigError, match="input channels"):
        ModelConfig(profile="x", appearance=AppearanceConfig(input_mode="composite"))
    with pytest.raises(ConfigError, match="superres.in_size"):
        ModelConfig(profile="x", renderer=RendererConfig(resolution=128))
    with pytest.raises(ConfigError, match="heads"):
        ModelConfig(profile="x", canonical_encoder=EncoderConfig(num_attention_heads=(1, 2, 7, 8)))
    # The composite input works once E_p has six channels.
    ModelConfig(
        profile="x", appearance=AppearanceConfig(input_mode="composite", encoder=EncoderConfig(in_channels=6))
    )


def test_colour_lifting_resolution_is_validated() -> None:
    base = tiny_config()
    assert base.appearance.colour_resolution == base.image_size == 128
    assert base.colour_plane_resolution == base.source_plane_resolution == 2 * base.plane.resolution == 128
    assert base.colour_depth_resolution == 64

    def appearance(**changes: object) -> None:
        dataclasses.replace(base, appearance=dataclasses.replace(base.appearance, **changes))

    with pytest.raises(ConfigError, match="colour_resolution"):
        appearance(colour_resolution=48, colour_depth_resolution=0)
    with pytest.raises(ConfigError, match="colour_resolution"):
        appearance(colour_resolution=256)
    with pytest.raises(ConfigError, match="colour_plane_resolution"):
        appearance(colour_plane_resolution=96)
    with pytest.raises(ConfigError, match="colour_depth_resolution"):
        appearance(colour_depth_resolution=48)
    plain = dataclasses.replace(
        base.appearance, colour_resolution=64, colour_plane_resolution=0, colour_depth_resolution=0
    )
    assert dataclasses.replace(base, appearance=plain).source_plane_resolution == 64


def test_tiny_colour_scale_matches_the_planes_magnitude() -> None:
    # The lifted colour in [-1, 1] must reach the decoder next to plane values of O(10).
    assert tiny_config().appearance.colour_scale == 16.0
    assert paper_config().appearance.colour_scale == 1.0 and paper_config().appearance.colour_resolution == 0


def test_fields_added_later_leave_older_configs_hash_unchanged() -> None:
    """A later field at the value that reproduces the older network is not in the canonical JSON
    (the shipped checkpoints keep verifying); any other value is, and changes the hash."""
    import dataclasses
    import json

    from shared.model.config import LATER_FIELDS, config_json

    cfg = tiny_config()
    off = dataclasses.replace(
        cfg,
        renderer=dataclasses.replace(cfg.renderer, source_colour_blend=False, surface_colour_resolution=0),
        expression=dataclasses.replace(
            cfg.expression, colour_gate=False, mouth_interior=False, mouth_teeth=False
        ),
    )
    on = dataclasses.replace(cfg, renderer=dataclasses.replace(cfg.renderer, source_colour_blend=True))
    assert ("renderer", "source_colour_blend") in LATER_FIELDS
    assert "source_colour_blend" not in json.loads(config_json(off))["renderer"]
    assert json.loads(config_json(on))["renderer"]["source_colour_blend"] is True
    assert config_hash(off) != config_hash(on)
    assert config_from_dict(config_to_dict(off)) == off
