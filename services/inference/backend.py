"""The one interface the worker uses for model inference, whether Triton or in-process:
`open_backend` picks the implementation. The types live in interface.py (re-exported here).
"""

from __future__ import annotations

import os
from typing import Literal

from services.inference.interface import AnimateOutput, InferenceBackend

__all__ = ["AnimateOutput", "InferenceBackend", "open_backend"]


def open_backend(
    *,
    triton_url: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    use_shared_memory: bool | Literal["auto"] = "auto",
    access_token: str | None = None,
    device: str = "cpu",
) -> InferenceBackend:
    """The worker's one entry point: Triton when a URL is configured, else the network in-process.

    The in-process fallback (embedded mode without a Triton server) needs the checkpoint path.
    """
    if triton_url:
        from services.inference.client import InferenceClient

        return InferenceClient(triton_url, use_shared_memory=use_shared_memory, access_token=access_token)
    if checkpoint is None:
        raise ValueError("open_backend needs a Triton URL or a checkpoint path for in-process inference")
    from services.inference.engine import InProcessInference

    return InProcessInference.from_checkpoint(checkpoint, device=device)
