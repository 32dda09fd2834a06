from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from shared.model.checkpoint import (
    compute_model_version,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from shared.model.errors import CheckpointError
from shared.model.network import SourceAvatar
from tests.model.conftest import make_batch, make_network, micro_config


def test_round_trip_restores_the_same_function_and_version(tmp_path: Path) -> None:
    network = make_network(seed=3)
    path = tmp_path / "model.ckpt"
    version = save_checkpoint(network, path, extra={"step": 12})
    assert re.fullmatch(r"goha-micro-[0-9a-f]{12}", version)
    assert network.model_version == version == compute_model_version(network)
    loaded = load_checkpoint(path, expected_config=micro_config()).eval()
    assert loaded.model_version == version and loaded.config == network.config
    assert read_checkpoint(path)["extra"] == {"step": 12}
    batch = make_batch(network.config, batch=1)
    with torch.no_grad():
        a = network(batch, deterministic=True)
        b = loaded(batch, deterministic=True)
    assert torch.equal(a.full, b.full) and torch.equal(a.superres, b.superres)


def test_version_changes_with_the_weights(tmp_path: Path) -> None:
    a, b = make_network(seed=0), make_network(seed=1)
    assert compute_model_version(a) != compute_model_version(b)
    assert compute_model_version(a) == compute_model_version(make_network(seed=0))


def test_config_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    network = make_network()
    path = tmp_path / "model.ckpt"
    save_checkpoint(network, path)
    other = micro_config(renderer=dataclasses.replace(micro_config().renderer, num_fine=4))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, expected_config=other)
    assert info.value.code == "model.config_mismatch"
    assert "renderer.num_fine: 8 != 4" in info.value.message


def test_corrupted_and_foreign_files_are_refused(tmp_path: Path) -> None:
    network = make_network()
    path = tmp_path / "model.ckpt"
    save_checkpoint(network, path)
    payload = torch.load(path, weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 1e-3  # silently changed weights
    tampered = tmp_path / "tampered.ckpt"
    torch.save(payload, tampered)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tampered)
    assert info.value.code == "model.hash_mismatch"

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"iter": 825000, "model_state_dict": {}}, foreign)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(foreign)
    assert info.value.code == "model.checkpoint_unreadable"

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(garbage)
    assert info.value.code == "model.checkpoint_unreadable"

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "missing.ckpt")
    assert info.value.code == "model.checkpoint_missing"


def test_avatars_are_tied_to_the_model_version(tmp_path: Path) -> None:
    network = make_network()
    save_checkpoint(network, tmp_path / "a.ckpt")
    batch = make_batch(network.config, batch=1)
    with torch.no_grad():
        avatar = network.reconstruct(batch.source_image, batch.source_mask, batch.source_camera)
    assert avatar.model_version == network.model_version
    avatar.save(tmp_path / "avatar.pt")
    retrained = make_network(seed=9)
    save_checkpoint(retrained, tmp_path / "b.ckpt")
    loaded = SourceAvatar.load(tmp_path / "avatar.pt")
    with pytest.raises(CheckpointError) as info, torch.no_grad():
        retrained.animate(loaded, batch.expression_render, batch.target_camera)
    assert info.value.code == "model.avatar_mismatch"
    with pytest.raises(CheckpointError):
        SourceAvatar.load(tmp_path / "avatar.pt", expected_model_version=retrained.model_version)
