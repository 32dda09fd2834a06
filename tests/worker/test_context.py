"""make_inference and the opt-in CPU memory policy (GOHA_RETAIN_FREED_MEMORY).

The policy is process-wide and cannot be undone, so each case builds the backend in a fresh
interpreter and then measures what the policy changes: the page faults of freeing and allocating
64 MB buffers again (glibc's default maps each afresh; with the policy the heap serves them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.memory_probe import DEFAULT_ALLOCATOR_FAULTS, faults_after

SCRIPT = """
import logging
logging.basicConfig(level=logging.INFO)
from services.worker.context import make_inference
from shared.platform.settings import Settings
backend = make_inference(Settings())
assert backend.model_version()
"""


def build_backend(checkpoint: Path, var_dir: Path, retain: str | None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOHA_")}
    env.update(
        GOHA_CHECKPOINT_PATH=str(checkpoint),
        GOHA_MODEL_PROFILE="tiny",
        GOHA_INFERENCE_BACKEND="in_process",
        GOHA_VAR_DIR=str(var_dir),
    )
    if retain is not None:
        env["GOHA_RETAIN_FREED_MEMORY"] = retain
    return faults_after(SCRIPT, env=env)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_in_process_backend_applies_the_setting(tiny_checkpoint: Path, tmp_path: Path) -> None:
    default_faults, default_log = build_backend(tiny_checkpoint, tmp_path / "a", None)
    retained_faults, retained_log = build_backend(tiny_checkpoint, tmp_path / "b", "true")
    # Off by default: every 64 MB buffer is a fresh mmap (~16k faults each).
    assert default_faults > DEFAULT_ALLOCATOR_FAULTS
    assert "retain freed memory" not in default_log
    # On: the worker process keeps freed memory (the odd refault remains if the kernel reclaims
    # idle heap pages), and says so in its log.
    assert retained_faults < default_faults // 4
    assert "retain freed memory: in effect" in retained_log
