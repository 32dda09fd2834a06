"""Typed errors of the media layer.

Every error carries a machine-readable ``code`` (stable: the worker stores it on the failed job and the
gateway returns it to the user) and a human ``message``. ``details`` holds the measured facts behind the
decision (path, sizes, codec names).
"""

from __future__ import annotations

from typing import ClassVar

from shared.errors import CodedError

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


class MediaError(CodedError):
    """Base of all media-layer errors: ``MediaError(code, message, details=None)``."""

    str_template: ClassVar[str] = "[{code}] {message}"
