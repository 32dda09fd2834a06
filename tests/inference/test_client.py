"""Client behaviour that needs no model server: retries, error mapping, launcher failures."""

from __future__ import annotations

import os
import pathlib
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from services.inference.client import InferenceClient
from services.inference.errors import (
    InferenceAuthError,
    InferenceInputError,
    InferenceServerError,
    InferenceServerStartError,
    InferenceUnavailable,
)
from services.inference.server import env_with_libpython, free_port, launch_server, python_libdir


def test_unreachable_server_raises_typed_unavailable_after_the_budget() -> None:
    client = InferenceClient(f"127.0.0.1:{free_port()}", retry_budget_s=0.6, retry_initial_backoff_s=0.05)
    started = time.monotonic()
    with pytest.raises(InferenceUnavailable) as info:
        client.model_version()
    elapsed = time.monotonic() - started
    assert info.value.retryable and info.value.code == "inference_unavailable"
    assert "attempts" in info.value.message
    assert 0.5 <= elapsed < 10  # it did retry, and it gave up


@pytest.mark.parametrize(
    ("status", "message", "expected", "code"),
    [
        ("StatusCode.UNAVAILABLE", "failed to connect", InferenceUnavailable, "inference_unavailable"),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", InferenceUnavailable, "inference_unavailable"),
        (
            "StatusCode.UNAVAILABLE",
            "This protocol is restricted, expecting header 'triton-grpc-protocol-triton-access-token'",
            InferenceAuthError,
            "inference_access_denied",
        ),
        ("StatusCode.INVALID_ARGUMENT", "unexpected shape for input 'portrait'", InferenceInputError, None),
        (
            "StatusCode.INTERNAL",
            "Traceback ...\nservices.inference.errors.InferenceInputError: [model.bad_range] source image must be "
            "in [-1, 1]\n\nAt: model.py",
            InferenceInputError,
            "model.bad_range",
        ),
        ("StatusCode.INTERNAL", "CUDA out of memory", InferenceServerError, "inference_server_error"),
        (
            "StatusCode.NOT_FOUND",
            "Unable to find shared memory region: 'goha_1_in'",
            InferenceServerError,
            "inference_shm_region_lost",
        ),
    ],
)
def test_grpc_errors_map_to_typed_errors(status: str, message: str, expected: type, code: str | None) -> None:
    error = InferenceClient._map_error(InferenceServerException(msg=message, status=status), "goha_animate")
    assert type(error) is expected
    if code is not None:
        assert error.code == code
    assert error.retryable is (expected is InferenceUnavailable)


def test_client_options_are_validated() -> None:
    with pytest.raises(ValueError):
        InferenceClient("127.0.0.1:1", use_shared_memory="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        InferenceClient("127.0.0.1:1", max_frames_per_request=0)
    assert InferenceClient("grpc://10.0.0.5:8001").url == "10.0.0.5:8001"
    # Shared memory is only tried automatically against a local server.
    assert InferenceClient("10.0.0.5:8001")._decide_shm() is False


def test_libpython_dir_goes_first_on_ld_library_path() -> None:
    env = env_with_libpython({"LD_LIBRARY_PATH": f"/opt/x{os.pathsep}{python_libdir()}"})
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [python_libdir(), "/opt/x"]
    assert (pathlib.Path(python_libdir()) / "libpython3.11.so.1.0").exists()


@pytest.mark.slow
def test_launch_failure_reports_the_server_log_and_cleans_up(tmp_path: pathlib.Path) -> None:
    before = set(pathlib.Path("/tmp").glob("goha-triton-*"))
    with pytest.raises(InferenceServerStartError) as info:
        with launch_server(tmp_path / "missing.ckpt", startup_timeout_s=120):
            pass
    assert "checkpoint_missing" in info.value.message  # the child's own error, from its log
    assert set(pathlib.Path("/tmp").glob("goha-triton-*")) <= before


@pytest.mark.slow
def test_in_process_float16_serving_matches_float32(inprocess, inputs, reference) -> None:  # noqa: ANN001
    """fp16 serving = fp16 tensors on the wire (portrait, mask, renders, planes, frames; cameras stay
    fp32) around the same fp32 computation on CPU. Compared with the fp32 engine fed the same
    fp16-rounded inputs, only the output rounding may differ. (Against unrounded inputs the exact
    nearest-neighbour rasterisation may move a near-tied cell of T_p, a discontinuity, not an error.)"""
    from services.inference.engine import InProcessInference

    def fp16(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float16).astype(np.float32)

    half = InProcessInference(inprocess.network, model_version=inprocess.model_version(), dtype="float16")
    planes = half.reconstruct(inputs.portraits[:1], inputs.masks[:1], inputs.cameras[:1])
    assert planes.dtype == np.float16 and half.planes_dtype == np.float16
    expected = inprocess.reconstruct(fp16(inputs.portraits[:1]), fp16(inputs.masks[:1]), inputs.cameras[:1])
    np.testing.assert_allclose(planes.astype(np.float32), expected, atol=1e-4, rtol=1e-3)
    # Most of the planes match the unrounded reference too (the lifted colour's channels, rasterised
    # by exact nearest neighbour at 64², hold more near-tied cells than E_p's 32² features: ~99 %).
    close = np.isclose(planes.astype(np.float32), reference.planes[:1], atol=2e-3, rtol=1e-2)
    assert close.mean() > 0.98, close.mean()
    output = half.animate(planes[0], inputs.expr_renders[:1], inputs.frame_cameras[:1])
    frames, alpha = output.frames, output.alpha
    assert frames.dtype == np.float16
    expected = inprocess.animate(
        planes[0].astype(np.float32), fp16(inputs.expr_renders[:1]), inputs.frame_cameras[:1]
    )
    np.testing.assert_allclose(frames.astype(np.float32), expected.frames, atol=2e-3, rtol=0)
    assert alpha.dtype == np.float16 and alpha.min() >= 0.0 and alpha.max() <= 1.0
    np.testing.assert_allclose(alpha.astype(np.float32), expected.alpha, atol=2e-3, rtol=0)


def test_open_backend_picks_triton_or_in_process(tiny_checkpoint) -> None:  # noqa: ANN001
    from services.inference import open_backend

    remote = open_backend(triton_url="grpc://127.0.0.1:8001")
    assert isinstance(remote, InferenceClient) and remote.url == "127.0.0.1:8001"
    local = open_backend(checkpoint=tiny_checkpoint.path)
    assert local.model_version() == tiny_checkpoint.version
    with pytest.raises(ValueError):
        open_backend()
