"""The Triton model code and the platform Settings read the checkpoint and profile from the same variables."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from services.inference.triton_models import model_parameters
from shared.model.cpu_memory import is_truthy
from shared.platform.settings import Settings
from tests.memory_probe import DEFAULT_ALLOCATOR_FAULTS, faults_after

if TYPE_CHECKING:
    from tests.inference.conftest import TinyCheckpoint


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
        "GOHA_RETAIN_FREED_MEMORY",
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


@pytest.mark.parametrize(("env_value", "retained"), [("1", True), ("yes", True), ("false", False)])
def test_retain_freed_memory_env_overrides_the_parameter(
    monkeypatch: pytest.MonkeyPatch, env_value: str, retained: bool
) -> None:
    config = {"parameters": {**MODEL_CONFIG["parameters"], "retain_freed_memory": {"string_value": "false"}}}
    assert is_truthy(model_parameters(config)["retain_freed_memory"]) is False
    config["parameters"]["retain_freed_memory"] = {"string_value": "true"}
    assert is_truthy(model_parameters(config)["retain_freed_memory"]) is True
    monkeypatch.setenv("GOHA_RETAIN_FREED_MEMORY", env_value)
    assert is_truthy(model_parameters(config)["retain_freed_memory"]) is retained
    # The worker reads the same variable, through Settings, with the same meaning.
    assert Settings().retain_freed_memory is retained


# What one model instance's stub process does at load (then the probe allocates and frees 64 MB
# buffers). The policy is process-wide and irreversible, hence a fresh interpreter per case.
INITIALIZE = """
import json, sys
from google.protobuf import json_format
from services.inference.repository import RepositoryOptions, contract_for_profile, model_config_proto
from services.inference.triton_models import AnimateModel
checkpoint, retain, kind = sys.argv[1], sys.argv[2] == "on", sys.argv[3]
options = RepositoryOptions(
    instance_kind="KIND_CPU", checkpoint=checkpoint, profile="tiny", dtype="float32",
    retain_freed_memory=retain,
)
spec = contract_for_profile("tiny", "float32").animate
config = json_format.MessageToDict(model_config_proto(spec, options), preserving_proto_field_name=True)
AnimateModel().initialize({"model_config": json.dumps(config), "model_instance_kind": kind})
"""


def faults_after_initialize(checkpoint: Path, retain: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOHA_")}
    return faults_after(INITIALIZE, str(checkpoint), retain, "CPU", env=env)[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_cpu_instance_applies_the_parameter(tiny_checkpoint: TinyCheckpoint) -> None:
    default, retained = (faults_after_initialize(tiny_checkpoint.path, mode) for mode in ("off", "on"))
    assert (
        default > DEFAULT_ALLOCATOR_FAULTS
    )  # the parameter's default ("false"): each 64 MB buffer a fresh mmap
    assert retained < default // 4
