from __future__ import annotations

import json

import pytest
import torch

from shared.model import bench


def test_bench_prints_one_json_object_as_its_last_line(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        assert (
            bench.main(
                [
                    "--profile",
                    "tiny",
                    "--frames",
                    "2",
                    "--repeats",
                    "1",
                    "--warmup",
                    "0",
                    "--threads",
                    "1",
                    "--no-keep-freed-memory",  # keep this pytest process on the default allocator
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["profile"] == "tiny" and result["frames"] == 2
    for key in ("reconstruct_ms", "animate_ms_per_frame", "full_forward_ms_per_frame", "cached_speedup"):
        assert result[key] > 0
    expected = result["full_forward_ms_per_frame"] / result["animate_ms_per_frame"]
    assert result["cached_speedup"] == pytest.approx(expected, rel=1e-2)
