"""The one typed-error base every package derives its errors from.

A ``CodedError`` carries a stable machine-readable ``code`` (clients, job records and metrics match on
it), a human ``message`` and optional ``details`` (the measured facts behind the decision). It pickles
with all its fields whatever the subclass's constructor looks like, because exceptions cross process
boundaries (multiprocessing, DDP spawn, Celery's pickle paths) and Python's default exception pickling
re-calls ``cls(*args)``, which breaks as soon as a subclass's signature differs from ``args``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CodedError(Exception):
    """``CodedError(code, message, details=None)``.

    Subclasses choose how they print and serialise with two class attributes instead of
    re-implementing ``__str__`` / ``to_dict``:

    * ``str_template``: ``str(error)``, formatted with ``code`` and ``message``.
    * ``omit_empty_details``: whether ``to_dict()`` leaves ``details`` out when it is empty.
    """

    code: str
    message: str
    details: dict[str, Any]

    str_template: ClassVar[str] = "{message}"
    omit_empty_details: ClassVar[bool] = False

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details or not self.omit_empty_details:
            body["details"] = self.details
        return body

    def __str__(self) -> str:
        return self.str_template.format(code=self.code, message=self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild without calling __init__ (subclasses take other arguments: NotFound(what),
        # IllegalTransition(job_id, current, requested)...), then restore every instance attribute,
        # so code, message, details and any subclass fields (status, job_id...) survive the trip.
        return (_restore, (type(self), self.args), self.__dict__.copy())


def _restore(cls: type[CodedError], args: tuple[Any, ...]) -> CodedError:
    # BaseException.__new__ stores args itself; the instance dict comes back through __setstate__.
    return cls.__new__(cls, *args)
