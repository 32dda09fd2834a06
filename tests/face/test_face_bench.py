import json

import pytest

from shared.face import bench


@pytest.mark.slow
def test_bench_prints_the_three_timings_as_its_last_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--frames", "6", "--chunk", "3", "--no-quality"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    for key in ("detect_landmarks_ms", "fit_ms_per_frame", "render_ms_per_frame"):
        assert result[key] is not None and result[key] > 0
    assert result["frames"] == 6 and result["frames_without_face"] == 0
    assert result["crop_size"] == 128


@pytest.mark.slow
def test_quality_keys_meet_their_targets() -> None:
    from shared.face.bench_quality import measure
    from shared.face.morphable import load_procedural_model
    from shared.face.pipeline import FaceAnalyzer

    model = load_procedural_model()
    result = measure(model, lambda: FaceAnalyzer(model, 128), num_synthetic=24, num_talking=24)
    assert result["synthetic_frames_with_face"] == 24
    assert result["mouth_corr_fit"] >= 0.85
    assert result["pose_err_deg"] <= 3.5
    assert result["jitter_px"] <= 0.5
    assert result["matte_iou"] >= 0.9
