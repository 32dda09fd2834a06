"""Run set-up code in a fresh interpreter, then count the page faults of re-allocating 64 MB buffers.

The CPU memory policy (`shared.model.cpu_memory.retain_freed_memory`) is process-wide and cannot be
undone, so every test of who applies it builds its subject in a child process and measures what the
policy changes: with glibc's default each freed 64 MB buffer is unmapped and the next one faults in
afresh (~16k faults each); with the policy the kept heap serves it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Appended to the caller's set-up code; five rounds first so the heap settles at its working size.
_FAULTS_OF_REALLOCATING = """
import json as _json, resource as _resource
for _ in range(5):
    bytearray(64 << 20)
_before = _resource.getrusage(_resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    bytearray(64 << 20)
print(_json.dumps({"faults": _resource.getrusage(_resource.RUSAGE_SELF).ru_minflt - _before}))
"""

# Twenty 64 MB buffers, each a fresh mmap without the policy.
DEFAULT_ALLOCATOR_FAULTS = 20 * 10_000


def faults_after(
    setup: str, *argv: str, env: Mapping[str, str] | None = None, timeout: float = 180
) -> tuple[int, str]:
    """Run ``setup`` (with ``sys.argv[1:] == argv``) then the probe; returns (faults, stderr)."""
    out = subprocess.run(
        [sys.executable, "-c", setup + _FAULTS_OF_REALLOCATING, *argv],
        capture_output=True,
        text=True,
        env=dict(os.environ if env is None else env),
        cwd=PROJECT_ROOT,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return int(json.loads(out.stdout.strip().splitlines()[-1])["faults"]), out.stderr
