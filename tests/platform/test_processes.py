"""stop_process_group against real child process groups (no mocks: real signals, real pids)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.platform.processes import stop_process_group

# Each child prints "ready" (and the pid of any grandchild) only after its signal handlers are in
# place, so the test never signals a process that still has the default SIGTERM disposition.
IGNORES_SIGTERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(1)
"""

EXITS_ON_SIGTERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
print("ready", flush=True)
while True:
    time.sleep(1)
"""

# The leader exits on SIGTERM at once; its child, in the same group, ignores SIGTERM (a stuck prefork
# worker) and records whether it ever received one.
LEADER_WITH_STUBBORN_CHILD = """
import signal, subprocess, sys, time
marker = sys.argv[1]
child = subprocess.Popen([sys.executable, "-c", '''
import signal, sys, time
def note(*_):
    open(sys.argv[1], "w").write("got SIGTERM")
signal.signal(signal.SIGTERM, note)
print("ready", flush=True)
while True:
    time.sleep(1)
''', marker], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", child.pid, flush=True)
while True:
    time.sleep(1)
"""


def _start(script: str, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    words = proc.stdout.readline().split()
    assert words[:1] == ["ready"], f"child did not start: {words}"
    return proc, words[1:]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie waiting for init to reap it counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_dead(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Children a test starts; whatever a failing test leaves running is killed here."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_ignoring_sigterm_gets_sigkill_after_grace(started: list[subprocess.Popen[str]]) -> None:
    proc, _ = _start(IGNORES_SIGTERM)
    started.append(proc)
    began = time.monotonic()
    code = stop_process_group(proc, grace_s=0.5, name="stubborn")
    elapsed = time.monotonic() - began
    assert code == -signal.SIGKILL
    assert elapsed >= 0.5  # it was given the grace period before the kill
    assert elapsed < 5.0
    assert not _alive(proc.pid)


def test_exiting_on_sigterm_returns_its_exit_code(started: list[subprocess.Popen[str]]) -> None:
    proc, _ = _start(EXITS_ON_SIGTERM)
    started.append(proc)
    began = time.monotonic()
    code = stop_process_group(proc, grace_s=10.0)
    assert code == 3  # its own orderly exit, not the SIGKILL
    assert time.monotonic() - began < 5.0  # did not sit out the grace period


def test_already_exited_returns_code_without_error(started: list[subprocess.Popen[str]]) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"], start_new_session=True)
    started.append(proc)
    proc.wait(timeout=30)
    assert stop_process_group(proc, grace_s=1.0) == 7  # group is gone: killpg's ESRCH is absorbed
    assert stop_process_group(proc, grace_s=1.0) == 7  # idempotent


def test_group_member_outliving_the_leader_is_killed(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    marker = tmp_path / "sigterm"
    proc, rest = _start(LEADER_WITH_STUBBORN_CHILD, str(marker))
    started.append(proc)
    child_pid = int(rest[0])
    assert stop_process_group(proc, grace_s=10.0) == 0  # the leader exited on SIGTERM
    assert marker.read_text() == "got SIGTERM"  # the whole group was sent SIGTERM
    assert _wait_dead(child_pid), "the group member that ignored SIGTERM survived"


def test_leader_only_terminates_just_the_leader(tmp_path: Path, started: list[subprocess.Popen[str]]) -> None:
    marker = tmp_path / "sigterm"
    proc, rest = _start(LEADER_WITH_STUBBORN_CHILD, str(marker))
    started.append(proc)
    child_pid = int(rest[0])
    assert stop_process_group(proc, grace_s=10.0, leader_only=True) == 0
    assert not marker.exists()  # the child got no SIGTERM from us...
    assert _wait_dead(child_pid)  # ...but the final SIGKILL of the group still reached it
