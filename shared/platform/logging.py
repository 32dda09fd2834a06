"""Structured logs: one JSON object per line, with the job, tenant and request they belong to.

    configure_logging("INFO")                      # gateway start-up, Celery's setup_logging signal
    with job_context(job_id, tenant_id=tenant):    # every line logged inside carries job_id/tenant_id
        log.info("chunk done", extra={"frames": 16})

A line looks like::

    {"ts": "2026-11-24T19:05:01.123Z", "level": "INFO", "logger": "goha.worker", "message": "chunk done",
     "job_id": "0f3c...", "tenant_id": "...", "frames": 16}

The context lives in a ``contextvars.ContextVar``: it follows the code into ``await`` and into the
threads Starlette runs sync endpoints on, and never leaks from one request or task to the next. In
the gateway a request's lines carry ``request_id`` (middleware), ``tenant_id`` once the API key is
authenticated, and ``job_id`` on the ``/v1/jobs/{job_id}`` routes (``services/gateway/deps.py``).
Fields passed with ``extra=`` win over the context. ``GOHA_LOG_FORMAT=text`` switches to a plain
one-line text format for people reading a terminal (the context fields are appended as ``key=value``).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json as jsonlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import IO, Any

# The fields every platform line may carry, in the order they are written.
CONTEXT_FIELDS = ("job_id", "tenant_id", "request_id", "error_code")

# Third-party loggers that install their own handlers: their lines go through ours instead.
TAKEN_OVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task")

# Attributes every LogRecord has; anything else on a record came from ``extra=`` (or the context filter).
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}

# Values are never mutated, only replaced: an immutable empty mapping is a safe default.
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "goha_log_context", default=MappingProxyType({})
)


# --- context -------------------------------------------------------------------------------------------
def current_context() -> dict[str, Any]:
    """The fields bound by the enclosing ``log_context`` blocks."""
    return dict(_context.get())


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` (``None`` values ignored) to every log line inside the block; blocks nest."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


@contextmanager
def job_context(job_id: str, *, tenant_id: str | None = None) -> Iterator[None]:
    """Every line logged inside carries ``job_id`` (and ``tenant_id`` when given)."""
    with log_context(job_id=job_id, tenant_id=tenant_id):
        yield


def bind_context(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Bind ``fields`` (``None`` values ignored) until ``unbind(token)`` or the end of the current context.

    For code that cannot wrap a ``with`` block around what follows: ASGI middleware, and FastAPI
    dependencies, which bind for the rest of the request (the request's task context ends with it).
    """
    return _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def bind_request_id(request_id: str) -> contextvars.Token[Mapping[str, Any]]:
    """For ASGI middleware that cannot wrap a ``with`` block around the app: pair with ``unbind``."""
    return bind_context(request_id=request_id)


def unbind(token: contextvars.Token[Mapping[str, Any]]) -> None:
    _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (without overriding ``extra=`` fields)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


# --- formatters ----------------------------------------------------------------------------------------
def _timestamp(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")}


def _jsonable(value: Any) -> Any:
    """Values json cannot write become their ``str`` (paths, UUIDs, enums, exceptions...)."""
    try:
        jsonlib.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the context fields, then extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extras = _extras(record)
        for key in CONTEXT_FIELDS:
            value = extras.pop(key, None)
            if value is not None:
                entry[key] = _jsonable(value)
        for key, value in extras.items():
            if key not in entry:  # extras never overwrite the fixed fields
                entry[key] = _jsonable(value)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        # ensure_ascii keeps a line one line whatever the message holds (no raw newlines or controls).
        return jsonlib.dumps(entry, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """``2026-11-24T19:05:01.123Z INFO goha.worker: message job_id=... frames=16``."""

    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        fields = " ".join(f"{key}={value}" for key, value in extras.items() if value is not None)
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if fields:
            line += f" {fields}"
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time (test runners and Celery swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass


_HANDLER_MARK = "_goha_structured"


def wants_json(default: bool = True) -> bool:
    """``GOHA_LOG_FORMAT``: ``json`` (default) or ``text``."""
    value = os.environ.get("GOHA_LOG_FORMAT", "").strip().lower()
    if value in ("text", "plain", "console"):
        return False
    if value == "json":
        return True
    return default


def configure_logging(
    level: str | int = "INFO",
    *,
    json: bool | None = None,
    stream: IO[str] | None = None,
    take_over: Sequence[str] = TAKEN_OVER_LOGGERS,
) -> logging.Handler:
    """Install the platform's handler on the root logger (idempotent: a second call replaces it).

    ``json=None`` reads ``GOHA_LOG_FORMAT``. ``stream`` defaults to the current ``sys.stderr``.
    Loggers in ``take_over`` (uvicorn, Celery) lose their own handlers and propagate to ours, so their
    lines are JSON too and carry the request/job context. Handlers others added to the root logger
    (pytest's capture, for instance) are left alone.
    """
    resolved_level = _level(level)  # a bad level fails before anything is changed
    use_json = wants_json() if json is None else json
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(ContextFilter())
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, _HANDLER_MARK, False):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(resolved_level)
    for name in take_over:
        taken = logging.getLogger(name)
        for existing in list(taken.handlers):
            taken.removeHandler(existing)
        taken.propagate = True
    logging.captureWarnings(True)
    return handler


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    resolved = logging.getLevelName(level.strip().upper())
    if not isinstance(resolved, int):
        raise ValueError(f"unknown log level {level!r}")
    return resolved
