"""Typed errors of the inference layer.

Every error carries a machine-readable ``code`` (stable, for API responses, job records and metrics) and
a human ``message``. Callers decide on ``retryable``: the worker re-queues a job on a retryable error and
fails it on the others.
"""

from __future__ import annotations

from typing import ClassVar

from shared.errors import CodedError


class InferenceError(CodedError):
    """Base of every error raised by an inference backend: ``InferenceError(message, *, code=None)``.

    ``code`` defaults to the class's own, so each subclass names its failure without repeating it.
    """

    code: str = "inference_error"
    retryable: bool = False
    str_template: ClassVar[str] = "[{code}] {message}"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(code if code is not None else type(self).code, message)


class InferenceInputError(InferenceError, ValueError):
    """The request itself is wrong (shape, dtype, value range): retrying cannot help."""

    code = "invalid_inference_input"


class InferenceUnavailable(InferenceError):
    """The server could not be reached (or kept timing out) within the retry budget."""

    code = "inference_unavailable"
    retryable = True


class InferenceAuthError(InferenceError):
    """A restricted Triton API (shared memory, statistics) refused the access token."""

    code = "inference_access_denied"


class InferenceServerError(InferenceError):
    """The server answered with an internal error while running a model."""

    code = "inference_server_error"


class InferenceServerStartError(InferenceError):
    """A locally launched Triton server died or did not become ready in time."""

    code = "inference_server_start_failed"
