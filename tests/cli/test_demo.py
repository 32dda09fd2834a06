"""`make demo` (python -m services.embedded.demo) on a short clip: inputs written, job run on the embedded
stack, result downloaded and verified, the stack gone afterwards, JSON summary as the last line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_job_end_to_end(
    stack_checkpoint: Path, uses_trained_model: bool, tmp_path: Path
) -> None:
    var_dir = tmp_path / "var"
    completed = subprocess.run(
        [sys.executable, "-m", "services.embedded.demo", "--var-dir", str(var_dir), "--checkpoint",
         str(stack_checkpoint), "--seconds", "0.4", "--size", "128", "--triton-threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    demo_dir = var_dir / "demo"
    assert summary["frames"] == 10 and summary["verified"] is True and summary["manifest_valid"] is True
    assert summary["result"] == str(demo_dir / "result.mp4")
    assert summary["job_timings"]["running_s"] > 0 and summary["job_s"] >= summary["job_timings"]["running_s"]
    if uses_trained_model:
        assert summary["watermark_found"] is True, summary
    for name in ("portrait.png", "driving.mp4", "result.mp4", "provenance.json", "verify.json"):
        assert (demo_dir / name).is_file(), name
    with av.open(str(demo_dir / "result.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10
    provenance = json.loads((demo_dir / "provenance.json").read_text())
    assert provenance["job_id"] == summary["job_id"] and provenance["signature_valid"] is True
    assert f"result      {demo_dir / 'result.mp4'}" in completed.stdout
    # Shut down: no embedded.env left, progress and steps were shown on stderr.
    assert not (var_dir / "embedded.env").exists()
    assert "[5/5] stopping the embedded stack" in completed.stderr
    assert "succeeded 10/10 frames" in completed.stderr
