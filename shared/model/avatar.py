"""`SourceAvatar`: what serving keeps of one portrait between `reconstruct` and `animate`, and
its file format (``goha-avatar/1``: a ``torch.save`` dict of format, model version, config hash
and CPU tensors, written atomically; loaded with ``weights_only=True``).

Made by ``shared.model.serving.reconstruct`` (``GOHANetwork.reconstruct``); cached per model
version and portrait by the worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from shared.model.errors import CheckpointError

AVATAR_FORMAT = "goha-avatar/1"


@dataclass
class SourceAvatar:
    """Everything `animate` needs from one or more source portraits (batch B, usually 1).

    Cacheable (default): ``planes`` = T_c + T_p. Otherwise (lifting depth from T_c + T_e):
    ``canonical`` = T_c plus the source inputs to recompute T_p per frame.
    """

    model_version: str
    config_hash: str
    planes: Tensor | None = None
    canonical: Tensor | None = None
    source_image: Tensor | None = None
    source_mask: Tensor | None = None
    source_camera: Tensor | None = None
    appearance_features: Tensor | None = None

    _TENSORS = (
        "planes",
        "canonical",
        "source_image",
        "source_mask",
        "source_camera",
        "appearance_features",
    )

    @property
    def cacheable(self) -> bool:
        return self.planes is not None

    @property
    def batch_size(self) -> int:
        tensor = self.planes if self.planes is not None else self.canonical
        assert tensor is not None
        return tensor.shape[0]

    def tensors(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self._TENSORS if getattr(self, k) is not None}

    def _map(self, fn: Any) -> SourceAvatar:
        return replace(self, **{k: fn(k, v) for k, v in self.tensors().items()})

    def to(self, *args: Any, **kwargs: Any) -> SourceAvatar:
        """Like ``Tensor.to`` (dtype and/or device), e.g. ``avatar.to(torch.float16)`` for transport.
        Cameras always stay float32 (fp16 would shift rays by millimetres)."""

        def move(name: str, t: Tensor) -> Tensor:
            out = t.to(*args, **kwargs)
            return out.to(torch.float32) if name == "source_camera" else out

        return self._map(move)

    def detach(self) -> SourceAvatar:
        return self._map(lambda _, t: t.detach())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def save(self, path: str | os.PathLike[str]) -> None:
        payload = {
            "format": AVATAR_FORMAT,
            "model_version": self.model_version,
            "config_hash": self.config_hash,
            "tensors": {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()},
        }
        tmp = f"{os.fspath(path)}.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        map_location: str | torch.device = "cpu",
        expected_config_hash: str | None = None,
        expected_model_version: str | None = None,
    ) -> SourceAvatar:
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises several types for foreign/corrupt files
            raise CheckpointError(
                "model.avatar_unreadable", f"{path}: not a readable avatar file ({exc})"
            ) from exc
        if not isinstance(payload, dict) or payload.get("format") != AVATAR_FORMAT:
            raise CheckpointError("model.avatar_unreadable", f"{path}: not a {AVATAR_FORMAT} file")
        avatar = cls(
            model_version=payload["model_version"], config_hash=payload["config_hash"], **payload["tensors"]
        )
        if expected_config_hash is not None and avatar.config_hash != expected_config_hash:
            raise CheckpointError(
                "model.avatar_mismatch",
                f"avatar was made by config {avatar.config_hash}, this network is {expected_config_hash}",
            )
        if expected_model_version is not None and avatar.model_version != expected_model_version:
            raise CheckpointError(
                "model.avatar_mismatch",
                f"avatar was made by model {avatar.model_version}, this network is {expected_model_version}",
            )
        return avatar
