"""Face analysis and the morphable head model.

Analysis (``docs/face-analysis.md``): ``detect`` (dlib HOG + 68 landmarks, typed errors),
``align`` (crop framed like the model's frontal render, and its inverse), ``fit`` (landmarks ->
alpha, beta, pose -> EG3D camera), ``smoothing`` (One-Euro), ``masks`` (keep masks),
``pipeline`` (``FaceAnalyzer``, ``MotionRetargeter``), ``errors``.
Model (``docs/face-model.md``): ``morphable``, ``render``, ``rasterizer``.

Licence: the 68-landmark model used by ``detect`` was trained on iBUG 300-W, which is licensed for
non-commercial use only.

The names below are imported lazily so that ``import shared.face.morphable`` does not load dlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FaceAnalyzer": "shared.face.pipeline",
    "AnalyzerConfig": "shared.face.pipeline",
    "PortraitAnalysis": "shared.face.pipeline",
    "FrameAnalysis": "shared.face.pipeline",
    "VideoState": "shared.face.pipeline",
    "MotionRetargeter": "shared.face.pipeline",
    "RetargetedFrame": "shared.face.pipeline",
    "AlignedCrop": "shared.face.align",
    "paste_back": "shared.face.align",
    "FaceError": "shared.face.errors",
    "NoFaceError": "shared.face.errors",
    "FaceTooSmallError": "shared.face.errors",
    "FaceAtBorderError": "shared.face.errors",
    "ImageInvalidError": "shared.face.errors",
    "FitFailedError": "shared.face.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shared.face' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
