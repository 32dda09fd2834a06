"""``embedded_worker``: a Celery worker in a thread of the test process that, unlike Celery's
``start_worker``, can run beside other embedded workers (own event loop, own task registry, own stop).
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any


class EmbeddedWorkerError(RuntimeError):
    """An embedded worker thread did not start, or did not stop, in time (the message says where it was)."""


def _celery_stop_flags() -> dict[str, object]:
    """Celery's process-wide stop flags that are set (0 counts: Celery tests ``is not None``)."""
    from celery.worker import state

    flags = {"should_stop": state.should_stop, "should_terminate": state.should_terminate}
    return {name: value for name, value in flags.items() if value is not None and value is not False}


def _thread_stack(thread: threading.Thread) -> str:
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "(the thread has no frame)"
    return "".join(traceback.format_stack(frame, limit=-30))  # the innermost frames say where it waits


def _raise_worker_shutdown() -> None:
    """Run inside a worker's loop: a SystemExit the loop does not swallow, so the worker stops warm."""
    from celery.exceptions import WorkerShutdown

    raise WorkerShutdown(0)


@contextlib.contextmanager
def embedded_worker(
    app: Any,
    *,
    start_timeout_s: float = 60.0,
    stop_timeout_s: float = 120.0,
    loglevel: str = "WARNING",
) -> Iterator[Any]:
    """One Celery worker (solo pool) in a daemon thread, consuming ``app``'s default queue.

    Use this instead of ``celery.contrib.testing.worker.start_worker`` whenever another embedded worker
    may be alive in the same process (a session-scoped worker of another test package stays up for the
    whole pytest session). ``start_worker`` assumes it is alone:

    - event loop: Celery's Hub bootstep adopts kombu's process-wide current loop when one is set, so a
      second Redis-backed worker ran on the first one's hub. Two threads then polled one epoll set and
      each ran the other's Redis callbacks (replies read by the wrong thread; seen as a stray
      ``ResponseError`` for another command): messages went to the wrong consumer or were lost, and a
      worker thread could stop running its loop, so it never saw a stop request. Here the worker gets a hub of its own, and no
      loop is left current for the next worker to adopt.
    - task lookup: without fast tracing the solo pool resolves the task on ``current_app``, which
      ``start_worker`` makes the process default, so every worker thread ran the *last* started
      worker's task bodies. Here ``app`` is this thread's current app and the default is left alone.
    - stopping: ``start_worker`` sets ``celery.worker.state.should_terminate``, which stops every
      worker in the process. Here the shutdown is scheduled in this worker's own loop.
    - logging: ``start_worker`` calls ``app.log.setup()``, which fires Celery's ``setup_logging``
      signal; its receivers (``services.worker.tasks`` has one) reconfigure the test process's root
      logger. Nothing here touches logging.
    - joining results: building a worker sets Celery's process-wide "a task join would block" flag (the
      solo pool's), after which ``AsyncResult.get()`` anywhere in the process raises "Never call
      result.get() within a task!" (e.g. a test's ``task.apply(...).get()``). Like ``start_worker``, the
      flag is put back as it was.

    Raises :class:`EmbeddedWorkerError`, with the worker thread's stack, when the worker is not
    consuming after ``start_timeout_s`` or has not stopped ``stop_timeout_s`` after the block (a
    shutdown is warm: a task in progress finishes first).
    """
    from celery._state import _set_task_join_will_block, task_join_will_block
    from celery.worker import WorkController
    from kombu.asynchronous import set_event_loop
    from kombu.utils.url import maybe_sanitize_url

    flags = _celery_stop_flags()
    if flags:
        raise EmbeddedWorkerError(
            f"celery.worker.state has stop flags set ({flags}): an earlier embedded worker's teardown did "
            "not finish, and any worker started in this process would exit at once"
        )

    class ThreadWorker(WorkController):
        def __init__(self, **kwargs: Any) -> None:
            self.consuming = threading.Event()
            super().__init__(**kwargs)

        def on_consumer_ready(self, consumer: Any) -> None:  # the consumer is registered and reading
            self.consuming.set()

    queue = str(app.conf.task_default_queue)
    where = f"queue {queue!r} on {maybe_sanitize_url(str(app.conf.broker_url))}"
    app.finalize()
    set_event_loop(None)  # the Hub bootstep (run in __init__) adopts a current loop: build a new one
    join_will_block = task_join_will_block()  # the Pool bootstep (also in __init__) sets it process-wide
    try:
        worker = ThreadWorker(
            app=app,
            hostname=f"embedded-{secrets.token_hex(4)}@{socket.gethostname()}",  # own pidbox queue
            pool="solo",
            concurrency=1,
            loglevel=loglevel,
            logfile=None,
            ready_callback=None,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
    finally:
        set_event_loop(None)  # ...and leave this worker's hub to this worker alone
        _set_task_join_will_block(join_will_block)

    def run() -> None:
        app.set_current()  # thread-local: the solo pool looks tasks up on current_app
        worker.start()

    thread = threading.Thread(target=run, name=f"embedded-worker-{queue}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not worker.consuming.wait(0.1):
        if not thread.is_alive():
            raise EmbeddedWorkerError(
                f"the embedded worker for {where} exited before it consumed (exit code {worker.exitcode}); "
                "its log lines above say why"
            )
        if time.monotonic() > deadline:
            stack = _thread_stack(thread)
            worker.consumer.call_soon(_raise_worker_shutdown)  # best effort; the thread is a daemon anyway
            thread.join(5)
            raise EmbeddedWorkerError(
                f"the embedded worker for {where} was not consuming after {start_timeout_s:.0f} s; "
                f"its thread was at:\n{stack}"
            )
    try:
        yield worker
    finally:
        if not thread.is_alive():
            raise EmbeddedWorkerError(
                f"the embedded worker for {where} exited while in use (exit code {worker.exitcode}); "
                "its log lines above say why"
            )
        worker.consumer.call_soon(_raise_worker_shutdown)  # with a hub: thread-safe and wakes its poll
        thread.join(stop_timeout_s)
        if thread.is_alive():
            raise EmbeddedWorkerError(
                f"the embedded worker for {where} did not stop within {stop_timeout_s:.0f} s (a task that "
                f"never returns, or a loop that no longer runs); its thread is at:\n{_thread_stack(thread)}"
            )
