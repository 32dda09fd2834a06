"""Structured JSON logs: one object per line, job/tenant/request ids from the context."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.platform.logging import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    current_context,
    job_context,
    log_context,
)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The platform handler on the root logger, writing into a buffer; removed afterwards."""
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    configure_logging("DEBUG", json=True, stream=stream, take_over=())
    try:
        yield stream
    finally:
        remove_platform_handlers()
        root.setLevel(level)


def remove_platform_handlers() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h.formatter, (JsonFormatter, TextFormatter))]:
        root.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_inside_a_job_context_carries_the_job_id(log_stream: io.StringIO) -> None:
    log = logging.getLogger("goha.worker")
    log.info("before")
    with job_context("job-1", tenant_id="tenant-9"):
        log.info("chunk %d of %d done", 2, 5, extra={"frames": 16})
        with log_context(request_id="req-3"):
            log.warning("nested")
        logging.getLogger("some.library").error("third-party line")
    log.info("after")

    before, chunk, nested, library, after = lines(log_stream)
    assert "job_id" not in before and "job_id" not in after and "tenant_id" not in after
    assert chunk["message"] == "chunk 2 of 5 done" and chunk["frames"] == 16
    assert chunk["job_id"] == "job-1" and chunk["tenant_id"] == "tenant-9" and "request_id" not in chunk
    assert chunk["level"] == "INFO" and chunk["logger"] == "goha.worker"
    assert chunk["ts"].endswith("Z") and len(chunk["ts"]) == len("2026-11-24T19:05:01.123Z")
    assert nested["request_id"] == "req-3" and nested["job_id"] == "job-1" and nested["level"] == "WARNING"
    assert library["job_id"] == "job-1" and library["logger"] == "some.library"
    assert current_context() == {}


def test_extra_fields_win_and_odd_values_still_make_one_json_line(log_stream: io.StringIO) -> None:
    log = logging.getLogger("goha.test")
    with job_context("job-ctx"):
        log.info(
            "line one\nline two",
            extra={"job_id": "job-explicit", "error_code": "driving_no_face", "path": Path("/x"), "n": None},
        )
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("crashed")
    text = log_stream.getvalue()
    assert text.count("\n") == 2  # a message with a newline is still one line
    first, crash = lines(log_stream)
    assert first["job_id"] == "job-explicit" and first["error_code"] == "driving_no_face"
    assert first["message"] == "line one\nline two" and first["path"] == "/x" and first["n"] is None
    assert crash["level"] == "ERROR" and crash["exc_type"] == "ValueError"
    assert "ValueError: boom" in crash["exception"] and crash["job_id"] == "job-ctx"


def test_context_follows_asyncio_tasks_and_copied_contexts_but_not_bare_threads(
    log_stream: io.StringIO,
) -> None:
    log = logging.getLogger("goha.test")

    async def handler() -> None:
        await asyncio.sleep(0)
        log.info("in task")

    async def main() -> None:
        with job_context("job-async"):
            await asyncio.gather(asyncio.create_task(handler()))

    asyncio.run(main())
    with job_context("job-thread"):
        copied = threading.Thread(target=contextvars.copy_context().run, args=(log.info, "copied"))
        bare = threading.Thread(target=log.info, args=("bare",))
        copied.start(), bare.start()
        copied.join(), bare.join()
    by_message = {line["message"]: line for line in lines(log_stream)}
    assert by_message["in task"]["job_id"] == "job-async"
    assert by_message["copied"]["job_id"] == "job-thread"
    assert "job_id" not in by_message["bare"]  # threads start empty: hand them copy_context().run


def test_text_format_and_level(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setenv("GOHA_LOG_FORMAT", "text")
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("warning", stream=stream, take_over=())
    try:
        with job_context("job-t"):
            logging.getLogger("goha.test").info("dropped: below the level")
            logging.getLogger("goha.test").warning("kept")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    (line,) = stream.getvalue().splitlines()
    assert line.endswith("WARNING goha.test: kept job_id=job-t")
    with pytest.raises(ValueError):
        configure_logging("loud")


def test_configure_logging_is_idempotent_and_takes_over_uvicorn() -> None:
    root = logging.getLogger()
    level = root.level
    uvicorn_access = logging.getLogger("uvicorn.access")
    saved = (list(uvicorn_access.handlers), uvicorn_access.propagate)
    foreign = logging.StreamHandler(io.StringIO())
    uvicorn_access.addHandler(foreign)
    uvicorn_access.propagate = False
    kept = [h for h in root.handlers if not isinstance(h.formatter, JsonFormatter)]  # pytest's capture
    handler = configure_logging("INFO", json=True)
    try:
        handler = configure_logging("INFO", json=True)
        ours = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
        assert ours == [handler]
        assert all(h in root.handlers for h in kept)
        assert foreign not in uvicorn_access.handlers and uvicorn_access.propagate
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        uvicorn_access.handlers, uvicorn_access.propagate = saved


def test_gateway_lines_carry_the_request_id(tmp_path: Path, log_stream: io.StringIO) -> None:
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app
    from shared.platform.settings import Settings

    settings = Settings(var_dir=tmp_path / "var", provenance_signing_key="obs-tests-signing-key-0123456789")
    app = create_app(settings)  # installs the JSON handler on stderr...
    configure_logging("DEBUG", json=True, stream=log_stream, take_over=())  # ...which this one replaces

    def probe() -> dict[str, str]:
        logging.getLogger("goha.gateway.probe").info("handling")
        return {"ok": "yes"}

    app.add_api_route("/_probe", probe)
    with TestClient(app) as client:
        response = client.get("/_probe", headers={"X-Request-Id": "req-from-caller"})
        assert response.headers["x-request-id"] == "req-from-caller"
        generated = client.get("/_probe").headers["x-request-id"]
    probes = [line for line in lines(log_stream) if line["logger"] == "goha.gateway.probe"]
    assert [line["request_id"] for line in probes] == ["req-from-caller", generated]
    assert current_context() == {}


def test_the_pipelines_overlapped_stage_threads_log_with_the_job_id(log_stream: io.StringIO) -> None:
    from services.worker.pipeline import run_overlapped

    log = logging.getLogger("goha.worker")

    def chunks() -> Iterator[int]:
        for index in range(3):
            log.info("prepared", extra={"chunk": index})
            yield index

    def animate(index: int) -> int:
        log.info("animated", extra={"chunk": index})
        return index

    with job_context("job-overlapped", tenant_id="tenant-o"):
        run_overlapped(chunks(), animate, lambda index: log.info("encoded", extra={"chunk": index}))
    records = [r for r in lines(log_stream) if "chunk" in r]  # importing the pipeline may log too
    assert sorted(r["message"] for r in records) == ["animated"] * 3 + ["encoded"] * 3 + ["prepared"] * 3
    assert {(r["job_id"], r["tenant_id"]) for r in records} == {("job-overlapped", "tenant-o")}
