"""The one interface the worker uses for model inference, whether Triton or in-process."""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np


class AnimateOutput(NamedTuple):
    """Frames of one ``animate`` call; unpacks as ``low_res, frames = backend.animate(...)``."""

    low_res: np.ndarray  # (N, 3, L, L) volume render in [-1, 1]
    frames: np.ndarray  # (N, 3, S, S) super-resolved output in [-1, 1]


@runtime_checkable
class InferenceBackend(Protocol):
    """Reconstruct once per portrait, then animate the cached tri-planes chunk by chunk.

    Arrays are numpy, channels-first, images in [-1, 1], cameras EG3D 25-vectors
    (``shared.model.cameras``). Float outputs come back in the backend's serving dtype
    (``planes_dtype``): float32 on CPU, float16 on GPU deployments.
    """

    def model_version(self) -> str:
        """Version string of the served checkpoint (config + content hash), for caches and provenance."""
        ...

    @property
    def planes_dtype(self) -> np.dtype: ...

    def reconstruct(self, portrait: np.ndarray, mask: np.ndarray, camera: np.ndarray) -> np.ndarray:
        """(B,3,H,W) portraits, (B,1,H,W) keep-masks, (B,25) cameras -> (B,3,C,R,R) source tri-planes."""
        ...

    def animate(self, planes: np.ndarray, expr_renders: np.ndarray, cameras: np.ndarray) -> AnimateOutput:
        """(3,C,R,R) tri-planes of one avatar, (N,3,E,E) expression renders, (N,25) cameras -> N frames."""
        ...

    def close(self) -> None: ...
