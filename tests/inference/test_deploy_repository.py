"""Integration: the container's model repository (deploy/triton) served by a real tritonserver.

The committed repository targets GPUs (KIND_GPU, fp16, paper shapes). Here the same model code
is served from a CPU / fp32 / tiny-profile variant written by the same generator, with the
tritonserver binary nvidia-pytriton bundles, and compared with in-process inference.
"""

from __future__ import annotations

import numpy as np
import pytest

from services.inference.client import InferenceClient
from services.inference.errors import InferenceInputError
from services.inference.repository import (
    DEPLOY_REPOSITORY,
    RepositoryOptions,
    contract_for_profile,
    launch_repository_server,
    write_repository,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_container_models_match_in_process(tmp_path, tiny_checkpoint, inputs, reference) -> None:
    repository = write_repository(
        tmp_path / "model_repository",
        contract_for_profile("tiny", "float32"),
        RepositoryOptions(
            instance_kind="KIND_CPU",
            checkpoint=str(tiny_checkpoint.path),
            profile="tiny",
            dtype="float32",
            retain_freed_memory=True,  # the CPU serving option; outputs must not change
        ),
        copy_model_code_from=DEPLOY_REPOSITORY,
    )
    token = "deploy-test-token"
    with launch_repository_server(repository, access_token=token, env={"OMP_NUM_THREADS": "1"}) as server:
        with InferenceClient(server.grpc_url, use_shared_memory=True, access_token=token) as client:
            assert client.model_version() == tiny_checkpoint.version
            # Two single-portrait requests at once would be merged by the dynamic batcher; one
            # batch-2 request exercises the same concatenate/split path deterministically.
            planes = client.reconstruct(inputs.portraits, inputs.masks, inputs.cameras)
            np.testing.assert_allclose(planes, reference.planes, atol=1e-4, rtol=0)
            output = client.animate(reference.planes[0], inputs.expr_renders[:2], inputs.frame_cameras[:2])
            np.testing.assert_allclose(output.frames, reference.frames[:2], atol=1e-4, rtol=0)
            np.testing.assert_allclose(output.low_res, reference.low_res[:2], atol=1e-4, rtol=0)
            np.testing.assert_allclose(output.alpha, reference.alpha[:2], atol=1e-4, rtol=0)
            # The container code returns typed errors the client understands.
            with pytest.raises(InferenceInputError) as info:
                client.reconstruct(inputs.portraits[:1] * 5, inputs.masks[:1], inputs.cameras[:1])
            assert info.value.code == "model.bad_range"
