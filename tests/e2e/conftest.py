"""The e2e suite runs the platform's default model: the trained tiny checkpoint the project ships
(``models/goha-tiny.pt``). Before it exists, the worker suite's random-weight checkpoint stands in; a
random network renders smooth saturated colour fields that carry RivaGAN's mark poorly, so the
watermark-identification assertions need the trained model (see ``uses_trained_model``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.conftest import tiny_checkpoint as random_tiny_checkpoint  # noqa: F401

SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "goha-tiny.pt"


@pytest.fixture(scope="session")
def e2e_checkpoint(random_tiny_checkpoint: Path) -> Path:  # noqa: F811
    return SHIPPED_CHECKPOINT if SHIPPED_CHECKPOINT.exists() else random_tiny_checkpoint


@pytest.fixture(scope="session")
def uses_trained_model(e2e_checkpoint: Path) -> bool:
    return e2e_checkpoint == SHIPPED_CHECKPOINT
