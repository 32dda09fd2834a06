"""Shared fixtures: one small generated dataset (tiny profile size) per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.training.synthetic import SyntheticConfig, generate_dataset


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    config = SyntheticConfig(image_size=128, supersample=1)
    generate_dataset(root, split="train", num_identities=2, pairs_per_identity=1, seed=3, config=config)
    generate_dataset(root, split="holdout", num_identities=2, pairs_per_identity=1, seed=3, config=config)
    return root
