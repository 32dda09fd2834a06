"""The PyTriton launcher's --retain-freed-memory: default from GOHA_RETAIN_FREED_MEMORY, CPU only.

Argument parsing has no side effect and runs here; applying the policy is process-wide and
irreversible, so that runs in a fresh interpreter that then measures the page faults of
re-allocating 64 MB buffers (fresh mmaps without the policy, the kept heap with it).
"""

from __future__ import annotations

import os
import sys

import pytest

from services.inference.server import build_parser
from shared.model.cpu_memory import RETAIN_ENV
from tests.memory_probe import DEFAULT_ALLOCATOR_FAULTS, faults_after


def parse(*argv: str) -> bool:
    return bool(build_parser().parse_args(["--checkpoint", "goha.ckpt", *argv]).retain_freed_memory)


@pytest.mark.parametrize(
    ("env_value", "expected"),
    [(None, False), ("", False), ("0", False), ("false", False), ("1", True), ("true", True), ("YES", True)],
)
def test_default_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, env_value: str | None, expected: bool
) -> None:
    if env_value is None:
        monkeypatch.delenv(RETAIN_ENV, raising=False)
    else:
        monkeypatch.setenv(RETAIN_ENV, env_value)
    assert parse() is expected


def test_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RETAIN_ENV, "1")
    assert parse("--no-retain-freed-memory") is False
    monkeypatch.setenv(RETAIN_ENV, "0")
    assert parse("--retain-freed-memory") is True


SCRIPT = """
import sys
from services.inference.server import build_parser
from shared.model.cpu_memory import retain_for_serving
args = build_parser().parse_args(["--checkpoint", "goha.ckpt", "--device", sys.argv[1]])
retain_for_serving(args.retain_freed_memory, args.device)
"""


def faults_after_startup(device: str) -> int:
    return faults_after(SCRIPT, device, env={**os.environ, RETAIN_ENV: "yes"}, timeout=120)[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_policy_applies_on_cpu_only() -> None:
    # cuda:0 is never touched: the policy is skipped before any device is used.
    gpu, cpu = faults_after_startup("cuda:0"), faults_after_startup("cpu")
    assert gpu > DEFAULT_ALLOCATOR_FAULTS  # default glibc: each 64 MB buffer is a fresh mmap
    assert cpu < gpu // 4
