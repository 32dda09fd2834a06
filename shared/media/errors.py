"""Typed errors of the media layer.

Every error carries a machine-readable ``code`` (stable: the worker stores it on the failed job and the
gateway returns it to the user) and a human ``message``. ``details`` holds the measured facts behind the
decision (path, sizes, codec names).
"""

from __future__ import annotations

from typing import Any

# The codes this package raises. Callers may match on them; keep them stable.
VIDEO_UNREADABLE = "video_unreadable"  # not a container/stream FFmpeg can open or decode
VIDEO_NO_VIDEO_STREAM = "video_no_video_stream"  # container opens but holds no video track
VIDEO_NO_FRAMES = "video_no_frames"  # a video track that decodes to zero frames
VIDEO_INVALID_FRAME = "video_invalid_frame"  # a frame given to the writer has the wrong shape/dtype
VIDEO_INVALID_ARGUMENT = "video_invalid_argument"  # bad chunk size, fps, crf, scale...
AUDIO_UNREADABLE = "audio_unreadable"  # the audio source to copy cannot be opened
FILE_NOT_FOUND = "file_not_found"
WATERMARK_INVALID_ARGUMENT = "watermark_invalid_argument"
MODEL_UNAVAILABLE = "model_unavailable"  # the RivaGAN ONNX files are missing from the environment
LABEL_INVALID_ARGUMENT = "label_invalid_argument"
C2PA_SIGNING_FAILED = "c2pa_signing_failed"
C2PA_CERTIFICATE_INVALID = "c2pa_certificate_invalid"


class MediaError(Exception):
    """Base of all media-layer errors: ``MediaError(code, message)``."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def __reduce__(self) -> tuple[Any, ...]:
        # Celery pickles exceptions raised in tasks; rebuild with all three fields intact.
        return (_rebuild_media_error, (type(self), self.code, self.message, self.details))

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


def _rebuild_media_error(
    cls: type[MediaError], code: str, message: str, details: dict[str, Any]
) -> MediaError:
    error = cls.__new__(cls)
    MediaError.__init__(error, code, message, details)
    return error
