"""How the worker classifies what goes wrong in a job.

* ``JobFailure``: permanent, the job fails with this code and message (bad input, no face...).
* ``TransientFailure``: worth retrying with backoff (inference or storage briefly unreachable);
  after the retry budget the job fails with its code.
* ``JobCancelled``: the user cancelled; the worker stops between chunks and writes nothing more.
"""

from __future__ import annotations


class JobFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TransientFailure(JobFailure):
    pass


class JobCancelled(Exception):
    pass
