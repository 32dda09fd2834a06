"""Integration: a real tritonserver (PyTriton) serving the tiny checkpoint vs in-process inference."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from services.inference.backend import InferenceBackend
from services.inference.client import InferenceClient
from services.inference.errors import InferenceAuthError, InferenceInputError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FP32_TOLERANCE = 1e-4


def test_server_is_ready_and_reports_the_checkpoint_version(triton_server, tiny_checkpoint) -> None:
    with urllib.request.urlopen(f"{triton_server.http_url}/v2/health/ready", timeout=5) as response:
        assert response.status == 200
    with triton_server.client(use_shared_memory=False) as client:
        assert isinstance(client, InferenceBackend)
        assert client.model_version() == tiny_checkpoint.version
        assert client.server_info()["profile"] == "tiny"
        assert client.planes_dtype == np.float32


def test_reconstruct_equals_in_process(triton_server, inputs, reference) -> None:
    with triton_server.client(use_shared_memory=False) as client:
        planes = client.reconstruct(inputs.portraits, inputs.masks, inputs.cameras)
        # A batch above max_batch_size is split by the client; one portrait alone must match too.
        single = client.reconstruct(inputs.portraits[1:], inputs.masks[1:], inputs.cameras[1:])
    assert planes.shape == reference.planes.shape and planes.dtype == np.float32
    np.testing.assert_allclose(planes, reference.planes, atol=FP32_TOLERANCE, rtol=0)
    np.testing.assert_allclose(single[0], reference.planes[1], atol=FP32_TOLERANCE, rtol=0)
    assert np.abs(reference.planes[0] - reference.planes[1]).max() > 1e-3  # different faces, different planes


@pytest.mark.parametrize("use_shared_memory", [False, True], ids=["grpc", "shm"])
def test_animate_equals_in_process(triton_server, inputs, reference, use_shared_memory: bool) -> None:
    # Two frames per request: the three frames take two requests that reuse the same regions.
    with triton_server.client(use_shared_memory=use_shared_memory, max_frames_per_request=2) as client:
        assert client.uses_shared_memory is use_shared_memory
        output = client.animate(reference.planes[0], inputs.expr_renders, inputs.frame_cameras)
        shapes = client.contract.shapes  # the tiny profile's sizes, whatever they are now
    low_res, frames = output  # still unpacks as the pair for callers that predate alpha
    assert frames.shape == reference.frames.shape == (3, 3, shapes.output_size, shapes.output_size)
    assert low_res.shape == reference.low_res.shape == (3, 3, shapes.low_res_size, shapes.low_res_size)
    assert output.alpha.shape == reference.alpha.shape == (3, 1, shapes.low_res_size, shapes.low_res_size)
    np.testing.assert_allclose(frames, reference.frames, atol=FP32_TOLERANCE, rtol=0)
    np.testing.assert_allclose(low_res, reference.low_res, atol=FP32_TOLERANCE, rtol=0)
    np.testing.assert_allclose(output.alpha, reference.alpha, atol=FP32_TOLERANCE, rtol=0)
    assert output.alpha.min() >= 0.0 and output.alpha.max() <= 1.0
    # The served opacity is the frame's own: frames 0 and 1 differ in camera only, so theirs differ.
    assert np.abs(reference.alpha[0] - reference.alpha[1]).max() > 10 * FP32_TOLERANCE
    # A randomly initialised network reacts weakly to its inputs, so also check that the served
    # frames are much closer to their in-process twins than the frames are to each other: a swapped
    # or dropped camera / expression would break this.
    error = np.abs(low_res - reference.low_res).max()
    camera_effect = np.abs(reference.low_res[0] - reference.low_res[1]).max()
    expression_effect = np.abs(reference.low_res[0] - reference.low_res[2]).max()
    assert error < min(camera_effect, expression_effect) / 10, (error, camera_effect, expression_effect)


def test_wrong_shapes_give_clear_errors(triton_server, inputs, reference) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with triton_server.client(use_shared_memory=False) as client:
        with pytest.raises(InferenceInputError) as info:
            client.animate(reference.planes[0], inputs.expr_renders[:, :, :64], inputs.frame_cameras)
        assert info.value.code == "invalid_shape" and "(N, 3, 128, 128)" in info.value.message
        with pytest.raises(InferenceInputError, match="3 expression renders but 2 cameras"):
            client.animate(reference.planes[0], inputs.expr_renders, inputs.frame_cameras[:2])
        # Values only the network checks (range) come back typed from the server.
        with pytest.raises(InferenceInputError) as info:
            client.reconstruct(inputs.portraits[:1] * 5, inputs.masks[:1], inputs.cameras[:1])
        assert info.value.code == "model.bad_range"
    # Triton itself refuses a mis-shaped tensor from any client.
    raw = grpcclient.InferenceServerClient(triton_server.grpc_url)
    portrait = np.zeros((1, 3, 64, 64), np.float32)
    tensor = grpcclient.InferInput("portrait", portrait.shape, "FP32")
    tensor.set_data_from_numpy(portrait)
    with pytest.raises(InferenceServerException) as raw_info:
        raw.infer("goha_reconstruct", [tensor])
    assert "StatusCode.INVALID_ARGUMENT" in str(raw_info.value.status())
    raw.close()


def test_shared_memory_needs_the_access_token(triton_server, inputs, reference) -> None:
    with InferenceClient(triton_server.grpc_url, use_shared_memory=True, access_token="wrong") as client:
        with pytest.raises(InferenceAuthError):
            client.animate(reference.planes[0], inputs.expr_renders[:1], inputs.frame_cameras[:1])
    with InferenceClient(triton_server.grpc_url, use_shared_memory="auto", access_token="wrong") as client:
        assert client.uses_shared_memory is False  # auto falls back to plain gRPC
    # Statistics are restricted too (HTTP).
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{triton_server.http_url}/v2/models/stats", timeout=5)
    request = urllib.request.Request(
        f"{triton_server.http_url}/v2/models/stats",
        headers={"triton-access-token": triton_server.access_token},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_lost_shared_memory_registration_is_recovered(triton_server, inputs, reference) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with triton_server.client(use_shared_memory=True) as client:
        first = client.animate(reference.planes[0], inputs.expr_renders[:1], inputs.frame_cameras[:1])
        # What a server restart does to our registration:
        admin = grpcclient.InferenceServerClient(triton_server.grpc_url)
        headers = {"triton-grpc-protocol-triton-access-token": triton_server.access_token}
        # Triton refuses (INTERNAL) to unregister a region a finished request still holds until it
        # releases it; on loaded cores that release can trail the response, so try for a while.
        deadline = time.monotonic() + 15.0
        while True:
            try:
                admin.unregister_system_shared_memory(headers=headers)
                break
            except InferenceServerException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        admin.close()
        again = client.animate(reference.planes[0], inputs.expr_renders[:1], inputs.frame_cameras[:1])
    np.testing.assert_array_equal(first.frames, again.frames)


def test_metrics_endpoint_counts_inferences(triton_server) -> None:
    with urllib.request.urlopen(triton_server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    assert 'nv_inference_request_success{model="goha_reconstruct"' in text
