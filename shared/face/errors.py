"""Typed errors of the face-analysis pipeline.

Every error carries a machine-readable ``code`` (stable, used by the API and the worker to tell the
user what to fix) and a human ``message``. ``details`` holds measured numbers (face size, scores...)
that explain the decision.
"""

from __future__ import annotations

from typing import Any

from shared.errors import CodedError


class FaceError(CodedError):
    """Base of all face-analysis errors: ``FaceError(code, message, details=None)``."""

    code: str = "face_error"


class _CodedFaceError(FaceError):
    """A FaceError whose code is fixed by its class."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(type(self).code, message, details)


class NoFaceError(_CodedFaceError):
    code: str = "no_face"


class FaceTooSmallError(_CodedFaceError):
    code: str = "face_too_small"


class FaceAtBorderError(_CodedFaceError):
    code: str = "face_at_border"


class ImageInvalidError(_CodedFaceError):
    code: str = "image_invalid"


class FitFailedError(_CodedFaceError):
    """The landmark fit diverged or produced a non-finite result."""

    code: str = "fit_failed"
