"""Keep freed memory in the process instead of handing it back to the OS after every tensor.

Why: the network's CPU activations are tens to hundreds of MB each (paper SR at batch 8: 0.5-1 GB
per 512² layer). glibc serves allocations above its mmap threshold (at most 32 MB) with a fresh
``mmap`` and returns them with ``munmap`` on free, so every such tensor is paid for again in page
faults and kernel page zeroing. Measured on the paper profile (one core, batch 8): the SR spent
2.6 s of its 4.9 s CPU per frame in the kernel (1.26 M minor faults per frame); with freed memory
kept, 0.1 s. Results are bit-identical: only where the bytes come from changes.

`retain_freed_memory` tells glibc to take every allocation from its heap (no per-allocation
mmap) and never to trim the heap top, so a process settles at its peak footprint and reuses it.
It is process-wide, so it is an explicit call for processes that run the network on CPU (the
benchmark, serving workers), not a side effect of importing the model. Cost: the resident size
stays at the peak of the largest call instead of dropping between calls.

Serving opts in with ``GOHA_RETAIN_FREED_MEMORY`` (`RETAIN_ENV`): the worker's in-process backend
through ``Settings.retain_freed_memory``, the PyTriton server's ``--retain-freed-memory`` and the
Triton python-backend models' ``retain_freed_memory`` parameter, each only where the network runs
on CPU (on a GPU the activations live in the CUDA caching allocator, not in malloc).
"""

from __future__ import annotations

import ctypes
import logging
import sys

# mallopt(3) parameter numbers (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely." Any finite threshold
# fits in an int (< 2 GB), and a paper-profile batch of 8 frees more than that at once.
_NEVER = -1

_retained = False

LOGGER = logging.getLogger(__name__)

RETAIN_ENV = "GOHA_RETAIN_FREED_MEMORY"
# The strings pydantic reads as True for a bool setting, so the env variable means the same to the
# worker (Settings) and to the servers that parse it themselves (CLI default, Triton parameter).
_TRUTHY = frozenset({"1", "true", "t", "yes", "y", "on"})


def is_truthy(value: str | None) -> bool:
    """Whether an environment value or a config.pbtxt string parameter says yes ("1", "true", "yes"...)."""
    return value is not None and value.strip().lower() in _TRUTHY


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring). Idempotent.

    Returns True when the policy is in effect, False where it cannot be set (not Linux/glibc, e.g.
    musl or macOS); the network then works the same, only with the OS round trips.
    """
    global _retained
    if _retained:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library the interpreter is linked against
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Each call returns 1 on success (glibc); anything else means another allocator.
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _NEVER))
    if not all(mallopt(param, value) == 1 for param, value in settings):
        return False
    _retained = True
    return True


def retain_for_serving(requested: bool, device: str) -> bool:
    """The serving opt-in (``GOHA_RETAIN_FREED_MEMORY``): `retain_freed_memory` where the network runs
    on CPU, before the engine loads, with one log line saying whether it took effect.

    On a GPU the activations live in CUDA's caching allocator, so the policy would only pin host memory.
    """
    if not requested:
        return False
    if device.split(":")[0] != "cpu":
        LOGGER.info("retain freed memory: ignored, device %s is not the CPU", device)
        return False
    retained = retain_freed_memory()
    LOGGER.info(
        "retain freed memory: %s",
        "in effect (resident size stays at the peak of the largest call)"
        if retained
        else "not available (not glibc); default allocator",
    )
    return retained
