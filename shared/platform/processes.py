"""Child processes started in their own process group (``start_new_session=True``), and the loopback
ports they are given.

The gateway, the Celery worker and the Triton launcher each fork helpers (uvicorn/prefork children,
tritonserver, backend stubs) that share the leader's process group. Stopping only the leader can leave
those behind holding ports, GPU memory or shared-memory segments, so every launcher stops the group:
SIGTERM, a grace period for an orderly exit, then SIGKILL of whatever is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
from typing import Any

LOGGER = logging.getLogger(__name__)

# After SIGKILL the leader is reaped within milliseconds unless it is stuck in the kernel (D state).
_REAP_TIMEOUT_S = 10.0


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    # ProcessLookupError: the whole group is gone. PermissionError: the pgid was reused by a process
    # we do not own after the group exited — there is nothing of ours left to signal either way.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def stop_process_group(
    proc: subprocess.Popen[Any],
    grace_s: float,
    *,
    name: str | None = None,
    leader_only: bool = False,
) -> int | None:
    """Stop ``proc`` and its process group; return the leader's exit code (None if it could not be reaped).

    ``proc`` must lead its own group (started with ``start_new_session=True``). If the leader is still
    running it gets SIGTERM (the whole group, or only the leader with ``leader_only`` — for a leader that
    shuts its children down in order itself, like PyTriton stopping tritonserver) and ``grace_s`` seconds
    to exit. Then the group gets SIGKILL in every case, also when the leader had already exited: a
    prefork child or backend stub may outlive it. ``name`` labels the warning logged when the grace
    period runs out.
    """
    if proc.poll() is None:
        if leader_only:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        else:
            _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            LOGGER.warning(
                "%s (pid %d) did not stop in %.1f s; killing its process group",
                name or "process",
                proc.pid,
                grace_s,
            )
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(timeout=_REAP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        LOGGER.error("%s (pid %d) survived SIGKILL for %.0f s", name or "process", proc.pid, _REAP_TIMEOUT_S)
        return None


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held together while choosing so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
