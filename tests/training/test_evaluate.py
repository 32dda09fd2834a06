import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.model.checkpoint import save_checkpoint
from shared.model.config import tiny_config
from shared.model.network import GOHANetwork
from shared.training.errors import TrainingError
from shared.training.evaluate import (
    _Accumulator,
    evaluate_real,
    evaluate_synthetic,
    image_metrics,
    to_markdown,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(GOHANetwork(tiny_config()), path)
    return path


def test_image_metrics_of_a_known_error() -> None:
    acc = _Accumulator()
    target = torch.zeros(2, 3, 16, 16)  # 0.5 grey in [0, 1]
    pred = target + 0.2  # +0.1 in [0, 1] -> L1 0.1, PSNR 20 dB
    image_metrics(acc, "x", pred, target)
    assert acc.mean("x_l1") == pytest.approx(0.1, abs=1e-4)
    assert acc.mean("x_psnr") == pytest.approx(20.0, abs=1e-3)
    # A larger ground truth is area-downsampled to the prediction's size first.
    image_metrics(acc, "y", pred[..., :8, :8], torch.zeros(2, 3, 16, 16))
    assert acc.mean("y_psnr") == pytest.approx(20.0, abs=1e-3)


@pytest.mark.slow
def test_evaluate_synthetic_holdout_end_to_end(checkpoint: Path, tiny_data: Path) -> None:
    report = evaluate_synthetic(checkpoint, tiny_data, batch_size=2)
    m = report["metrics"]
    for key in (
        "recon_psnr",
        "recon_ssim",
        "reenact_l1",
        "reenact_lowres_psnr",
        "reenact_akd",
        "cross_csim",
        "cross_aed",
        "cross_apd_deg",
    ):
        assert m[key] is not None and np.isfinite(m[key]), key
    assert (
        report["pairs"] == 2 and report["lpips"] is None and "not available" in report["not_computed"]["fid"]
    )
    assert -1.0 <= m["cross_csim"] <= 1.0 and m["reenact_akd"] >= 0
    markdown = to_markdown(report)
    assert "same-identity reenactment" in markdown and "NOT ArcFace" in markdown


@pytest.mark.slow
def test_preprocess_and_evaluate_a_real_folder(checkpoint: Path, tmp_path: Path) -> None:
    from skimage.data import astronaut

    from shared.training.realdata import RealFolder, preprocess

    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(astronaut()).save(raw / "astronaut.png")
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(raw / "blank.png")
    meta = preprocess([raw], tmp_path / "real", image_size=128)
    assert len(meta["items"]) == 1 and meta["skipped"][0]["code"]
    item = RealFolder(tmp_path / "real")[0]
    assert item["source_image"].shape == (3, 128, 128) and item["source_camera"].shape == (25,)
    report = evaluate_real(checkpoint, tmp_path / "real")
    assert report["pairs"] == 1 and np.isfinite(report["metrics"]["recon_psnr"])


def test_cli_reports_typed_errors(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shared.training", "evaluate", "--data", str(tmp_path), "--checkpoint", str(tmp_path / "x.pt")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert json.loads(proc.stderr.strip().splitlines()[-1])["error"] == "model.checkpoint_missing"
    with pytest.raises(TrainingError):
        evaluate_synthetic(tmp_path / "x.pt", tmp_path, face_metrics_on="bogus")
