"""The Triton model code and the platform Settings read the checkpoint and profile from the same variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.inference.triton_models import model_parameters
from shared.platform.settings import Settings

# What Triton hands the Python backend for the committed config.pbtxt (parameters as string_value).
MODEL_CONFIG = {
    "name": "goha_animate",
    "parameters": {
        "checkpoint": {"string_value": "/checkpoints/goha.ckpt"},
        "profile": {"string_value": "paper"},
        "max_frames_per_forward": {"string_value": "8"},
    },
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "GOHA_CHECKPOINT_PATH",
        "GOHA_MODEL_PROFILE",
        "GOHA_CHECKPOINT",
        "GOHA_PROFILE",
        "GOHA_SERVING_DTYPE",
        "GOHA_MAX_FRAMES_PER_FORWARD",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOHA_VAR_DIR", str(tmp_path / "var"))


def test_config_parameters_apply_without_environment() -> None:
    assert model_parameters(MODEL_CONFIG) == {
        "checkpoint": "/checkpoints/goha.ckpt",
        "profile": "paper",
        "max_frames_per_forward": "8",
    }


def test_settings_names_override_and_mean_the_same_to_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOHA_CHECKPOINT_PATH", "/models/other.ckpt")
    monkeypatch.setenv("GOHA_MODEL_PROFILE", "tiny")
    params = model_parameters(MODEL_CONFIG)
    settings = Settings()
    assert params["checkpoint"] == "/models/other.ckpt"
    assert params["profile"] == "tiny"
    # The worker, through Settings, resolves the very same checkpoint and profile.
    assert settings.checkpoint_path == Path(params["checkpoint"])
    assert settings.model_profile == params["profile"]


def test_former_names_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOHA_CHECKPOINT", "/models/stale.ckpt")
    monkeypatch.setenv("GOHA_PROFILE", "tiny")
    params = model_parameters(MODEL_CONFIG)
    assert params["checkpoint"] == "/checkpoints/goha.ckpt"
    assert params["profile"] == "paper"


def test_triton_only_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOHA_SERVING_DTYPE", "float16")
    monkeypatch.setenv("GOHA_MAX_FRAMES_PER_FORWARD", "2")
    params = model_parameters(MODEL_CONFIG)
    assert params["dtype"] == "float16"
    assert params["max_frames_per_forward"] == "2"
