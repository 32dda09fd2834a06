"""Typed errors of the face-analysis pipeline.

Every error carries a machine-readable ``code`` (stable, used by the API and the worker to tell the
user what to fix) and a human ``message``. ``details`` holds measured numbers (face size, scores...)
that explain the decision.
"""

from __future__ import annotations

from typing import Any


class FaceError(Exception):
    """Base of all face-analysis errors."""

    code: str = "face_error"

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def __reduce__(self) -> tuple[Any, ...]:
        # Celery and multiprocessing pickle exceptions; rebuild without re-running __init__ signatures.
        return (_rebuild_face_error, (type(self), self.code, self.message, self.details))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


def _rebuild_face_error(cls: type[FaceError], code: str, message: str, details: dict[str, Any]) -> FaceError:
    error = cls.__new__(cls)
    FaceError.__init__(error, code, message, details)
    return error


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
