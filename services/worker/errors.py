"""How the worker classifies what goes wrong in a job.

* ``JobFailure``: permanent, the job fails with this code and message (bad input, no face...).
* ``TransientFailure``: worth retrying with backoff (inference or storage briefly unreachable);
  after the retry budget the job fails with its code.
* ``JobCancelled``: the user cancelled; the worker stops between chunks and writes nothing more.

``TRANSIENT_ERRORS`` is the one list of what is retried: the pipeline re-raises these instead of
failing the job, and the Celery task retries them. Anything else fails the job at once.
"""

from __future__ import annotations

from typing import ClassVar

import urllib3

from services.inference.errors import InferenceUnavailable
from shared.errors import CodedError


class JobFailure(CodedError):
    """``JobFailure(code, message)``; ``str()`` is ``"code: message"``."""

    str_template: ClassVar[str] = "{code}: {message}"


class TransientFailure(JobFailure):
    pass


class JobCancelled(Exception):
    pass


# OSError covers refused/reset connections and timeouts of every client; urllib3's HTTPError is what
# the S3 client (minio) raises once its own retries are spent (MaxRetryError: server down or
# unreachable), which derives from Exception, not OSError.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientFailure,
    InferenceUnavailable,
    OSError,
    urllib3.exceptions.HTTPError,
)


def transient_code(error: BaseException) -> str:
    """The code a job fails with once ``error`` (one of ``TRANSIENT_ERRORS``) outlasted the retries."""
    code = getattr(error, "code", None)
    if isinstance(code, str):
        return code
    if isinstance(error, urllib3.exceptions.HTTPError):
        return "storage_unavailable"  # only the S3 client raises urllib3's errors in a job
    return "transient_error"
