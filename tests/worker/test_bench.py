"""``python -m services.worker.bench`` on a 1-second clip: the whole stack starts (Triton via PyTriton,
gateway, Celery worker), the job succeeds, and the LAST stdout line is the JSON the issue specifies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"frames", "e2e_s", "model_s", "overhead_ratio", "fps", "peak_rss_mb"}


def test_bench_prints_the_report_as_its_last_line(tiny_checkpoint: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.worker.bench",
            "--seconds",
            "1",
            "--driver-size",
            "256",
            "--checkpoint",
            str(tiny_checkpoint),
            "--no-warmup",
            "--no-verify",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert REQUIRED <= report.keys()
    assert report["frames"] == 25
    assert 0 < report["model_s"] < report["e2e_s"]
    assert report["overhead_ratio"] == pytest.approx(
        (report["e2e_s"] - report["model_s"]) / report["e2e_s"], abs=1e-3
    )
    assert report["fps"] == pytest.approx(25 / report["e2e_s"], rel=1e-2)
    assert report["peak_rss_mb"] > 100  # the worker imports torch: a real process was measured
    assert report["triton_peak_rss_mb"]["model_process"] > 100
    stages = report["stages_s"]
    for stage in ("face_fit_s", "expression_render_s", "animate_s", "guardrails_s", "encode_s"):
        assert stages[stage] > 0, stage
