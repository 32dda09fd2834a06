"""Python-backend models for NVIDIA's Triton container (``deploy/triton/model_repository``).

Each ``<model>/1/model.py`` of the repository only re-exports one class of this module, so the
serving logic is ordinary project code (linted, tested by running the repository under the
``tritonserver`` that nvidia-pytriton bundles). The classes run `InProcessInference`, the same
code as the PyTriton launcher and the embedded mode.

Configuration (``parameters`` of config.pbtxt; environment variables override):

=====================  ==========================  ==============================================
parameter              environment                 meaning
=====================  ==========================  ==============================================
checkpoint             GOHA_CHECKPOINT_PATH        checkpoint path inside the container
profile                GOHA_MODEL_PROFILE          expected profile ("" = whatever it holds)
dtype                  GOHA_SERVING_DTYPE          float16 (GPU) or float32
max_frames_per_forward GOHA_MAX_FRAMES_PER_FORWARD frames per network call (memory bound)
retain_freed_memory    GOHA_RETAIN_FREED_MEMORY    KIND_CPU only: "true"/"1"/"yes" keeps freed
                                                   memory in the process (faster calls, resident
                                                   size stays at the peak; shared/model/cpu_memory.py)
=====================  ==========================  ==============================================

The checkpoint and profile variables are the names of ``Settings.checkpoint_path`` and
``Settings.model_profile`` (shared/platform/settings.py), so one environment means the same checkpoint
and profile to the worker and to Triton.

The device follows the instance group: KIND_GPU instance ``i`` runs on ``cuda:i``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from services.inference.contract import (
    ALPHA,
    ANIMATE_MODEL,
    CAMERA,
    CAMERAS,
    EXPR_RENDERS,
    FRAMES,
    INFO_MODEL,
    LOW_RES,
    MASK,
    MODEL_VERSION,
    PLANES,
    PORTRAIT,
    PROFILE,
    RECONSTRUCT_MODEL,
    ModelSpec,
    numpy_dtype,
)
from services.inference.errors import InferenceError, InferenceInputError
from shared.model.cpu_memory import RETAIN_ENV, is_truthy, retain_for_serving

LOGGER = logging.getLogger(__name__)

_ENV_BY_PARAMETER = {
    "checkpoint": "GOHA_CHECKPOINT_PATH",
    "profile": "GOHA_MODEL_PROFILE",
    "dtype": "GOHA_SERVING_DTYPE",
    "max_frames_per_forward": "GOHA_MAX_FRAMES_PER_FORWARD",
    "retain_freed_memory": RETAIN_ENV,
}


def _pb_utils() -> Any:
    # Only importable inside the Python backend stub.
    import triton_python_backend_utils as pb_utils

    return pb_utils


def model_parameters(model_config: dict[str, Any]) -> dict[str, str]:
    values = {key: value.get("string_value", "") for key, value in model_config.get("parameters", {}).items()}
    for parameter, env in _ENV_BY_PARAMETER.items():
        if os.environ.get(env):
            values[parameter] = os.environ[env]
    return values


def _error_response(exc: BaseException) -> Any:
    """Error response in the form the client parses back into a typed error."""
    pb_utils = _pb_utils()
    text = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    code = None
    if isinstance(exc, InferenceInputError) and hasattr(pb_utils.TritonError, "INVALID_ARG"):
        code = pb_utils.TritonError.INVALID_ARG
    error = pb_utils.TritonError(text, code) if code is not None else pb_utils.TritonError(text)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _check_served_config(spec: ModelSpec, model_config: dict[str, Any]) -> None:
    """Refuse to load when config.pbtxt and the checkpoint disagree (e.g. a tiny checkpoint in a paper repo)."""
    batched = int(model_config.get("max_batch_size", 0)) > 0
    for kind, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        served = {t["name"]: t for t in model_config.get(kind, [])}
        for tensor in tensors:
            got = served.get(tensor.name)
            if got is None:
                raise ValueError(f"{spec.name}: config.pbtxt lacks {kind} {tensor.name!r}")
            dims = tuple(int(d) for d in got["dims"])
            datatype = got["data_type"].removeprefix("TYPE_")
            datatype = "BYTES" if datatype == "STRING" else datatype
            if dims != tensor.dims or datatype != tensor.datatype:
                raise ValueError(
                    f"{spec.name}: config.pbtxt declares {kind} {tensor.name} as {datatype}{list(dims)}, but the "
                    f"checkpoint serves {tensor.datatype}{list(tensor.dims)}; regenerate the repository with "
                    "`python -m services.inference.repository`"
                )
    if batched != (spec.max_batch_size > 0):
        raise ValueError(f"{spec.name}: max_batch_size must be {'> 0' if spec.max_batch_size else '0'}")


class _GOHAModel:
    """Shared initialisation: load the checkpoint on this instance's device."""

    spec_name = ""

    def initialize(self, args: dict[str, Any]) -> None:
        from services.inference.engine import InProcessInference, configure_determinism

        self.model_config = json.loads(args["model_config"])
        params = model_parameters(self.model_config)
        checkpoint = params.get("checkpoint")
        if not checkpoint:
            raise ValueError(f"{self.spec_name}: set the 'checkpoint' parameter or GOHA_CHECKPOINT_PATH")
        kind = args.get("model_instance_kind", "CPU")
        device = f"cuda:{args.get('model_instance_device_id', '0')}" if kind == "GPU" else "cpu"
        # Each model instance is its own stub process, so this touches only this instance.
        retain_for_serving(is_truthy(params.get("retain_freed_memory")), device)
        configure_determinism()
        self.engine = InProcessInference.from_checkpoint(
            checkpoint,
            profile=params.get("profile") or None,
            device=device,
            dtype=params.get("dtype") or None,
            max_frames_per_forward=int(params.get("max_frames_per_forward") or 8),
            reconstruct_max_batch_size=int(self.model_config.get("max_batch_size", 0)) or 1,
        )
        spec = self.engine.contract.model(self.spec_name)
        _check_served_config(spec, self.model_config)
        LOGGER.info(
            "%s: checkpoint %s (version %s) on %s",
            self.spec_name,
            checkpoint,
            self.engine.model_version(),
            device,
        )

    def finalize(self) -> None:
        self.engine = None


class ReconstructModel(_GOHAModel):
    """goha_reconstruct: dynamic batching merges requests; each request is still validated on its own."""

    spec_name = RECONSTRUCT_MODEL

    def execute(self, requests: list[Any]) -> list[Any]:
        pb_utils = _pb_utils()
        spec = self.engine.contract.reconstruct
        responses: list[Any] = [None] * len(requests)
        batch: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        for index, request in enumerate(requests):
            arrays = [
                pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in (PORTRAIT, MASK, CAMERA)
            ]
            bad = [
                name
                for name, array in zip((PORTRAIT, MASK, CAMERA), arrays)
                if not np.all(np.isfinite(array))
            ]
            if bad:
                responses[index] = _error_response(
                    InferenceInputError(f"{bad[0]} contains NaN or infinite values", code="invalid_value")
                )
            else:
                batch.append((index, *arrays))
        if batch:
            try:
                planes = self.engine.reconstruct(
                    np.concatenate([item[1] for item in batch]),
                    np.concatenate([item[2] for item in batch]),
                    np.concatenate([item[3] for item in batch]),
                )
                start = 0
                for index, portrait, _mask, _camera in batch:
                    stop = start + portrait.shape[0]
                    out = np.ascontiguousarray(planes[start:stop], dtype=spec.output(PLANES).dtype)
                    responses[index] = pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(PLANES, out)]
                    )
                    start = stop
            except InferenceError as exc:
                for index, *_ in batch:
                    responses[index] = _error_response(exc)
        return responses


class AnimateModel(_GOHAModel):
    """goha_animate: one avatar's tri-planes and N frames per request."""

    spec_name = ANIMATE_MODEL

    def execute(self, requests: list[Any]) -> list[Any]:
        pb_utils = _pb_utils()
        spec = self.engine.contract.animate
        responses = []
        for request in requests:
            try:
                planes, renders, cameras = (
                    pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    for name in (PLANES, EXPR_RENDERS, CAMERAS)
                )
                output = self.engine.animate(planes, renders, cameras)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor(
                                LOW_RES, output.low_res.astype(spec.output(LOW_RES).dtype, copy=False)
                            ),
                            pb_utils.Tensor(
                                FRAMES, output.frames.astype(spec.output(FRAMES).dtype, copy=False)
                            ),
                            pb_utils.Tensor(ALPHA, output.alpha.astype(spec.output(ALPHA).dtype, copy=False)),
                        ]
                    )
                )
            except InferenceError as exc:
                responses.append(_error_response(exc))
        return responses


class InfoModel:
    """goha_info: the served checkpoint's version and profile, read without building the network."""

    def initialize(self, args: dict[str, Any]) -> None:
        from services.inference.engine import read_checkpoint_info

        self.model_config = json.loads(args["model_config"])
        params = model_parameters(self.model_config)
        checkpoint = params.get("checkpoint")
        if not checkpoint:
            raise ValueError(f"{INFO_MODEL}: set the 'checkpoint' parameter or GOHA_CHECKPOINT_PATH")
        version, profile = read_checkpoint_info(checkpoint)
        if params.get("profile") and params["profile"] != profile:
            raise ValueError(
                f"{INFO_MODEL}: checkpoint {checkpoint} holds profile {profile!r}, not {params['profile']!r}"
            )
        self._outputs = {
            MODEL_VERSION: np.array([version.encode()], dtype=numpy_dtype("BYTES")),
            PROFILE: np.array([profile.encode()], dtype=numpy_dtype("BYTES")),
        }

    def execute(self, requests: list[Any]) -> list[Any]:
        pb_utils = _pb_utils()
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(k, v) for k, v in self._outputs.items()]
            )
            for _ in requests
        ]

    def finalize(self) -> None:
        """Nothing to release."""
