"""How the worker classifies what goes wrong in a job.

* ``JobFailure``: permanent, the job fails with this code and message (bad input, no face...).
* ``TransientFailure``: worth retrying with backoff (inference or storage briefly unreachable);
  after the retry budget the job fails with its code.
* ``JobCancelled``: the user cancelled; the worker stops between chunks and writes nothing more.
"""

from __future__ import annotations

from typing import ClassVar

from shared.errors import CodedError


class JobFailure(CodedError):
    """``JobFailure(code, message)``; ``str()`` is ``"code: message"``."""

    str_template: ClassVar[str] = "{code}: {message}"


class TransientFailure(JobFailure):
    pass


class JobCancelled(Exception):
    pass
