"""The serving contract: shapes per profile, request validation, metadata round trip (no server)."""

from __future__ import annotations

import numpy as np
import pytest

from services.inference.contract import (
    ANIMATE_MODEL,
    PLANES,
    PORTRAIT,
    RECONSTRUCT_MODEL,
    ServingContract,
    ServingShapes,
    check_array,
    shapes_from_config,
    triton_datatype,
)
from services.inference.errors import InferenceInputError
from shared.model.config import get_profile


def _metadata(contract: ServingContract) -> dict:
    """What Triton reports for the contract's models (batched models get a leading -1)."""

    def tensors(spec_tensors, batched: bool) -> list[dict]:
        lead = ["-1"] if batched else []
        return [
            {"name": t.name, "datatype": t.datatype, "shape": lead + [str(d) for d in t.dims]}
            for t in spec_tensors
        ]

    return {
        spec.name: {
            "inputs": tensors(spec.inputs, spec.max_batch_size > 0),
            "outputs": tensors(spec.outputs, spec.max_batch_size > 0),
        }
        for spec in contract.models
    }


def test_paper_profile_shapes_follow_the_paper_sizes() -> None:
    shapes = shapes_from_config(get_profile("paper"), "FP16")
    assert shapes.planes_dims == (3, 32, 256, 256)
    assert (shapes.image_size, shapes.low_res_size, shapes.output_size) == (512, 224, 512)
    contract = ServingContract(shapes)
    assert contract.reconstruct.output(PLANES).datatype == "FP16"
    # Cameras stay fp32 even in an fp16 deployment.
    assert contract.animate.input("cameras").datatype == "FP32"
    assert contract.animate.max_batch_size == 0 and contract.reconstruct.max_batch_size > 0


def test_contract_round_trips_through_model_metadata() -> None:
    contract = ServingContract(shapes_from_config(get_profile("tiny"), "FP32"), reconstruct_max_batch_size=4)
    assert ServingContract.from_metadata(_metadata(contract), reconstruct_max_batch_size=4) == contract


def test_metadata_with_a_renamed_or_retyped_tensor_is_refused() -> None:
    contract = ServingContract(shapes_from_config(get_profile("tiny"), "FP32"))
    metadata = _metadata(contract)
    metadata[ANIMATE_MODEL]["inputs"][1]["name"] = "expression"
    with pytest.raises(ValueError, match="does not follow the GOHA serving contract"):
        ServingContract.from_metadata(metadata, reconstruct_max_batch_size=4)
    metadata = _metadata(contract)
    metadata[ANIMATE_MODEL]["inputs"][2]["datatype"] = "FP16"
    with pytest.raises(ValueError, match="goha_animate inputs"):
        ServingContract.from_metadata(metadata, reconstruct_max_batch_size=4)


def test_check_array_reports_expected_and_received_shapes() -> None:
    contract = ServingContract(ServingShapes(64, 64, 8, 16, 16, 64))
    spec = contract.reconstruct.input(PORTRAIT)
    with pytest.raises(InferenceInputError) as info:
        check_array(np.zeros((2, 3, 32, 64)), spec, leading=(None,))
    assert info.value.code == "invalid_shape"
    assert "(N, 3, 64, 64)" in info.value.message and "(2, 3, 32, 64)" in info.value.message


def test_check_array_refuses_nan_and_strings_and_casts_float64() -> None:
    spec = ServingContract(ServingShapes(64, 64, 8, 16, 16, 64, "FP16")).reconstruct.output(PLANES)
    good = check_array(np.zeros((3, 8, 16, 16), np.float64), spec)
    assert good.dtype == np.float16 and good.flags.c_contiguous
    bad = np.zeros((3, 8, 16, 16))
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(InferenceInputError) as info:
        check_array(bad, spec)
    assert info.value.code == "invalid_value"
    with pytest.raises(InferenceInputError) as info:
        check_array(np.array(["a"]), spec)
    assert info.value.code == "invalid_dtype"


@pytest.mark.parametrize(
    ("name", "expected"), [("float16", "FP16"), ("fp32", "FP32"), ("torch.float32", "FP32")]
)
def test_triton_datatype_names(name: str, expected: str) -> None:
    assert triton_datatype(name) == expected


def test_bfloat_or_int_serving_dtypes_are_refused() -> None:
    with pytest.raises(ValueError):
        triton_datatype("int8")
    with pytest.raises(ValueError):
        ServingShapes(64, 64, 8, 16, 16, 64, "BF16")


def test_model_names_are_the_ones_the_worker_calls() -> None:
    contract = ServingContract(ServingShapes(64, 64, 8, 16, 16, 64))
    assert [m.name for m in contract.models] == [RECONSTRUCT_MODEL, ANIMATE_MODEL, "goha_info"]
