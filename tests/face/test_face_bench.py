import json

import pytest

from shared.face import bench


@pytest.mark.slow
def test_bench_prints_the_three_timings_as_its_last_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--frames", "6", "--chunk", "3"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    for key in ("detect_landmarks_ms", "fit_ms_per_frame", "render_ms_per_frame"):
        assert result[key] is not None and result[key] > 0
    assert result["frames"] == 6 and result["frames_without_face"] == 0
    assert result["crop_size"] == 128
