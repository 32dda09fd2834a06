"""The types of the inference interface: `AnimateOutput` (what ``animate`` returns) and the
`InferenceBackend` protocol that the Triton client (client.py) and the in-process engine
(engine.py) implement. Depends on nothing else of the package, so every module can import it;
`backend.open_backend` picks an implementation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class AnimateOutput:
    """Frames of one ``animate`` call.

    ``alpha`` is the render's accumulated opacity, what the worker composites the head with when it
    pastes it back into the portrait. It is a third field read by name: the output still unpacks as
    the pair ``low_res, frames = backend.animate(...)`` so callers written before it keep working.
    """

    low_res: np.ndarray  # (N, 3, L, L) volume render in [-1, 1]
    frames: np.ndarray  # (N, 3, S, S) super-resolved output in [-1, 1]
    alpha: np.ndarray  # (N, 1, L, L) accumulated opacity of the render in [0, 1] (0 = background)

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.low_res
        yield self.frames


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
