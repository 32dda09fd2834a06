"""The default face stack: Apache-2.0 MediaPipe models from the installed wheel, no dlib, no network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shared.face.mediapipe_runtime import model_paths

ROOT = Path(__file__).resolve().parents[2]

OFFLINE_SCRIPT = r"""
import builtins, socket, sys

def refuse(*args, **kwargs):
    raise OSError("network access blocked by the test")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
opened = []
real_open = builtins.open
def recording_open(file, *args, **kwargs):
    opened.append(str(file))
    return real_open(file, *args, **kwargs)
builtins.open = recording_open

from skimage import data
from shared.face.morphable import load_procedural_model
from shared.face.pipeline import FaceAnalyzer
from shared.media.samples import astronaut_frame

analyzer = FaceAnalyzer(load_procedural_model(), 64)
portrait = analyzer.analyze_portrait(data.astronaut())
frames = analyzer.analyze_frames([astronaut_frame(i, 256, talk=True) for i in range(4)])
assert all(f.face_found for f in frames), "no face in the driving frames"
assert portrait.matte.shape == (64, 64) and portrait.source_mesh is not None
assert "dlib" not in sys.modules, "the default stack imported dlib"
assert not [p for p in opened if "face_recognition_models" in p or "shape_predictor" in p]
print("OFFLINE-OK")
"""


def test_default_models_are_the_bundled_apache_mediapipe_files() -> None:
    paths = model_paths()
    assert set(paths) == {"face_detection_short_range", "face_landmark_with_attention", "selfie_segmentation"}
    assert all(path.is_file() and path.stat().st_size > 100_000 for path in paths.values())
    assert all("mediapipe/modules/" in str(path) for path in paths.values())


def test_default_stack_loads_and_runs_with_the_network_blocked_and_without_dlib() -> None:
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OFFLINE-OK" in result.stdout
