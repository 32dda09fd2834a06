"""The embedded worker behind the web rig (``tests.support.embedded_worker``).

In a full pytest session a session-scoped worker of another package (tests/gateway's) is still running
when the web rig starts its own Redis-backed worker. With Celery's ``start_worker`` the second worker
adopted the first one's event loop and ran the last started app's task bodies in every worker thread:
the web job stayed queued and the thread then would not stop. These tests run two Redis workers side by
side, and check that a worker that cannot stop or start says so instead of hanging."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

import pytest
from celery import Celery

from tests.support.embedded_worker import EmbeddedWorkerError, embedded_worker

pytestmark = pytest.mark.integration

TASK = "goha.test.record"


def redis_app(redis_url: str, queue: str, body: Callable[[int], None]) -> Celery:
    """A Celery app configured like ``make_celery`` on Redis, with ``TASK`` running ``body``."""
    app = Celery(f"embedded-{queue}", broker=redis_url)
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    app.task(name=TASK, shared=False)(body)
    return app


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_two_workers_in_one_process_each_run_their_own_jobs(
    goha_redis_url: str, goha_queue_name: str
) -> None:
    """Same task name on both apps, as the gateway's and the web rig's reference tasks have."""
    runs: dict[str, list[tuple[int, str]]] = {"first": [], "second": []}

    def recorder(label: str) -> Callable[[int], None]:
        def record(index: int) -> None:
            runs[label].append((index, threading.current_thread().name))

        return record

    queues = {label: f"{goha_queue_name}-embedded-{label}-{secrets.token_hex(3)}" for label in runs}
    first = redis_app(goha_redis_url, queues["first"], recorder("first"))
    second = redis_app(goha_redis_url, queues["second"], recorder("second"))
    jobs = 8
    with embedded_worker(first, stop_timeout_s=20) as first_worker:
        with embedded_worker(second, stop_timeout_s=20) as second_worker:
            assert first_worker.hub is not None and second_worker.hub is not None  # Redis: event loops
            assert first_worker.hub is not second_worker.hub
            for index in range(jobs):
                first.send_task(TASK, args=[index], queue=queues["first"])
                second.send_task(TASK, args=[index], queue=queues["second"])
            assert wait_until(lambda: all(len(done) >= jobs for done in runs.values()), timeout_s=30), runs
            started = time.monotonic()
        assert time.monotonic() - started < 10  # stopping one worker does not wait on the other
        # The first worker still consumes after the second one stopped (its loop was not closed).
        first.send_task(TASK, args=[jobs], queue=queues["first"])
        assert wait_until(lambda: len(runs["first"]) == jobs + 1, timeout_s=15), runs
    for label, done in runs.items():
        assert sorted(index for index, _ in done) == list(range(len(done)))  # each job once, none lost
        assert {thread for _, thread in done} == {f"embedded-worker-{queues[label]}"}  # in its own thread


def test_a_worker_that_cannot_stop_fails_with_its_stack(goha_redis_url: str, goha_queue_name: str) -> None:
    queue = f"{goha_queue_name}-embedded-stuck-{secrets.token_hex(3)}"
    entered, release = threading.Event(), threading.Event()

    def stuck_forever(_: int) -> None:
        entered.set()
        release.wait(60)

    app = redis_app(goha_redis_url, queue, stuck_forever)
    started = time.monotonic()
    try:
        with pytest.raises(EmbeddedWorkerError) as failure:
            with embedded_worker(app, stop_timeout_s=2):
                app.send_task(TASK, args=[0], queue=queue)
                assert entered.wait(15)
    finally:
        release.set()  # let the thread finish its task and stop (it is a daemon either way)
    assert time.monotonic() - started < 20
    message = str(failure.value)
    assert f"queue {queue!r}" in message and "did not stop within 2 s" in message
    assert "stuck_forever" in message and "release.wait(60)" in message  # where the thread is blocked


def test_a_worker_that_cannot_reach_its_broker_fails_at_start() -> None:
    app = Celery("embedded-unreachable", broker="redis://127.0.0.1:1/0")
    app.conf.update(
        task_default_queue="unreachable",
        broker_connection_retry_on_startup=False,
        broker_connection_timeout=1,
        worker_hijack_root_logger=False,
    )
    started = time.monotonic()
    with pytest.raises(EmbeddedWorkerError, match="exited before it consumed"):
        with embedded_worker(app, start_timeout_s=30):
            pytest.fail("the worker cannot be consuming")
    assert time.monotonic() - started < 25
