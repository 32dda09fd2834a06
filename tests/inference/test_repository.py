"""Static checks of the model repository that NVIDIA's Triton container serves (deploy/triton)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from services.inference.contract import (
    ANIMATE_MODEL,
    INFO_MODEL,
    MODEL_NAMES,
    RECONSTRUCT_MODEL,
    ServingContract,
)
from services.inference.repository import (
    DEPLOY_REPOSITORY,
    RepositoryOptions,
    contract_for_profile,
    metadata_from_config,
    read_config,
    render_config,
)


@pytest.fixture(scope="module")
def configs() -> dict:
    return {name: read_config(DEPLOY_REPOSITORY / name / "config.pbtxt") for name in MODEL_NAMES}


def test_committed_configs_are_what_the_generator_writes() -> None:
    contract = contract_for_profile("paper", "float16")
    options = RepositoryOptions(profile="paper")
    for spec in contract.models:
        committed = (DEPLOY_REPOSITORY / spec.name / "config.pbtxt").read_text()
        assert committed == render_config(spec, options), (
            f"{spec.name}/config.pbtxt drifted: run `python -m services.inference.repository`"
        )


def test_configs_parse_and_match_what_the_client_expects(configs: dict) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    metadata = {name: metadata_from_config(config) for name, config in configs.items()}
    # The client's own parser accepts the served tensors (names and dtypes) ...
    served = ServingContract.from_metadata(
        metadata, reconstruct_max_batch_size=configs[RECONSTRUCT_MODEL].max_batch_size
    )
    # ... and they are exactly the paper profile's contract in fp16.
    assert served == contract_for_profile("paper", "float16", configs[RECONSTRUCT_MODEL].max_batch_size)
    recon, animate = configs[RECONSTRUCT_MODEL], configs[ANIMATE_MODEL]
    assert [t.name for t in recon.input] == ["portrait", "mask", "camera"]
    assert [t.name for t in animate.input] == ["planes", "expr_renders", "cameras"]
    assert [t.name for t in animate.output] == ["low_res", "frames", "alpha"]
    assert recon.output[0].data_type == pb.TYPE_FP16 and list(recon.output[0].dims) == [3, 32, 256, 256]
    assert animate.input[0].data_type == pb.TYPE_FP16 and list(animate.input[0].dims) == [3, 32, 256, 256]
    assert animate.input[2].data_type == pb.TYPE_FP32
    assert [t.name for t in configs[INFO_MODEL].output] == ["model_version", "profile"]


def test_gpu_deployment_settings(configs: dict) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    for name in (RECONSTRUCT_MODEL, ANIMATE_MODEL):
        config = configs[name]
        assert config.backend == "python"
        assert [(g.kind, g.count) for g in config.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 1)]
        assert config.parameters["dtype"].string_value == "float16"
        assert config.parameters["checkpoint"].string_value.startswith("/")
        assert config.parameters["profile"].string_value == "paper"
        # Only KIND_CPU instances would apply it; the GPU repository states the default.
        assert config.parameters["retain_freed_memory"].string_value == "false"
    # Reconstruct batches portraits dynamically; animate carries one avatar and N frames per request.
    assert configs[RECONSTRUCT_MODEL].max_batch_size > 0
    assert configs[RECONSTRUCT_MODEL].HasField("dynamic_batching")
    assert configs[ANIMATE_MODEL].max_batch_size == 0
    assert configs[INFO_MODEL].instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_py_exposes_the_project_model_class(name: str) -> None:
    path: pathlib.Path = DEPLOY_REPOSITORY / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"goha_repo_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model_class = module.TritonPythonModel
    assert callable(model_class.initialize) and callable(model_class.execute)
    expected = {
        RECONSTRUCT_MODEL: "ReconstructModel",
        ANIMATE_MODEL: "AnimateModel",
        INFO_MODEL: "InfoModel",
    }[name]
    assert model_class.__name__ == expected
