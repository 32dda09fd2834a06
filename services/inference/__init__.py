"""Triton hosting of the GOHA branch models and the client the worker uses.

Import what you need from the submodules; this package stays torch-free on import so that a
worker that only talks to Triton never loads torch:

* `services.inference.client.InferenceClient` - gRPC client (shared memory when colocated)
* `services.inference.engine.InProcessInference` - same interface, runs the network in-process
* `services.inference.interface.InferenceBackend` - the protocol both implement, and
  `AnimateOutput`; `services.inference.backend.open_backend` picks one from configuration
* `services.inference.server.launch_server` - PyTriton-launched Triton in a subprocess
* `services.inference.repository` - the model repository for NVIDIA's Triton container
"""

from services.inference.backend import open_backend
from services.inference.client import InferenceClient
from services.inference.errors import (
    InferenceAuthError,
    InferenceError,
    InferenceInputError,
    InferenceServerError,
    InferenceServerStartError,
    InferenceUnavailable,
)
from services.inference.interface import AnimateOutput, InferenceBackend

__all__ = [
    "AnimateOutput",
    "InferenceAuthError",
    "InferenceBackend",
    "InferenceClient",
    "InferenceError",
    "InferenceInputError",
    "InferenceServerError",
    "InferenceServerStartError",
    "InferenceUnavailable",
    "open_backend",
]
