"""LPIPS and FID written in the project: closed-form Fréchet distances, LPIPS properties and an
independent functional re-computation, weight files in the torchvision / lpips / pytorch-fid key
layouts (random weights, seeded), typed errors, and an evaluation that reports both."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.model.checkpoint import save_checkpoint
from shared.model.config import tiny_config
from shared.model.network import GOHANetwork
from shared.training.errors import TrainingError, WeightsError
from shared.training.evaluate import PretrainedMetrics, evaluate_synthetic, to_markdown
from shared.training.fid import (
    FIDInceptionV3,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_features,
)
from shared.training.lpips import LPIPS, LPIPS_SCALE, LPIPS_SHIFT

REPO = Path(__file__).resolve().parents[2]

# torchvision ``alexnet`` / ``vgg16`` feature convs: index in ``features`` → (out, in, k).
ALEX_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
VGG16_CONVS = {
    0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
    14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512),
    26: (512, 512), 28: (512, 512),
}  # fmt: skip
ALEX_LIN = (64, 192, 384, 256, 256)
VGG_LIN = (64, 128, 256, 512, 512)


def write_backbone(path: Path, net: str, seed: int = 0) -> Path:
    """A random state dict with torchvision's key names (He-scaled so activations stay alive)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    convs = ALEX_CONVS if net == "alex" else {i: (o, c, 3) for i, (o, c) in VGG16_CONVS.items()}
    for i, (out, inp, k) in convs.items():
        state[f"features.{i}.weight"] = torch.randn(out, inp, k, k, generator=g) * math.sqrt(
            2 / (inp * k * k)
        )
        state[f"features.{i}.bias"] = torch.randn(out, generator=g) * 0.01
    state["classifier.6.bias"] = torch.zeros(1000)  # classifier keys are ignored
    torch.save(state, path)
    return path


def write_lin(path: Path, channels: tuple[int, ...], seed: int = 1, value: float | None = None) -> Path:
    """lpips v0.1 lin-layer file: ``lin{l}.model.1.weight`` (1, C, 1, 1), non-negative."""
    g = torch.Generator().manual_seed(seed)
    state = {
        f"lin{i}.model.1.weight": torch.full((1, c, 1, 1), value)
        if value is not None
        else torch.rand(1, c, 1, 1, generator=g)
        for i, c in enumerate(channels)
    }
    torch.save(state, path)
    return path


def write_inception(path: Path, seed: int = 0) -> Path:
    """A random state dict in the pt_inception layout: BN statistics set, ``fc`` (1008 classes)
    present and no ``num_batches_tracked`` (the converted TF file has none)."""
    torch.manual_seed(seed)
    model = FIDInceptionV3()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    for k in state:
        if k.endswith("conv.weight"):  # He scale: default init fades out over 94 layers
            fan_in = state[k][0].numel()
            state[k] = torch.randn_like(state[k]) * math.sqrt(2 / fan_in)
        elif k.endswith("running_mean"):
            state[k] = torch.randn_like(state[k]) * 0.1
        elif k.endswith("running_var"):
            state[k] = torch.rand_like(state[k]) + 0.5
    state["fc.weight"] = torch.randn(1008, 2048) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    torch.save(state, path)
    return path


# --- Fréchet distance ----------------------------------------------------------------------------


def test_frechet_distance_closed_forms() -> None:
    # 1-D: (μ1 − μ2)² + (σ1 − σ2)².
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]])) == (
        pytest.approx(4.0 + 1.0)
    )
    # Diagonal: Σ_i (Δμ_i)² + (s1_i − s2_i)².
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 1.5])
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected)
    # Non-commuting 2×2 by hand: Σ1Σ2 = [[2, 4], [1, 8]] has tr 10, det 12, and for a matrix with
    # non-negative eigenvalues tr √M = √(tr M + 2√det M).
    sigma1, sigma2 = np.array([[2.0, 1.0], [1.0, 2.0]]), np.diag([1.0, 4.0])
    value = frechet_distance(np.array([1.0, 0.0]), sigma1, np.zeros(2), sigma2)
    assert value == pytest.approx(1.0 + 4.0 + 5.0 - 2 * math.sqrt(10 + 2 * math.sqrt(12)))


def test_frechet_distance_of_singular_covariances_is_finite() -> None:
    # Degenerate (point-mass) distributions: only the means remain.
    mu1, mu2 = np.array([1.0, 2.0]), np.array([-1.0, 2.0])
    assert frechet_distance(mu1, np.zeros((2, 2)), mu2, np.zeros((2, 2))) == pytest.approx(4.0, abs=1e-5)
    with pytest.raises(WeightsError) as err:
        frechet_distance(mu1, np.zeros((2, 2)), np.zeros(3), np.zeros((3, 3)))
    assert err.value.code == "fid.bad_statistics"


def test_fid_of_identical_sets_is_zero_on_both_paths() -> None:
    rng = np.random.default_rng(0)
    full = rng.normal(size=(80, 6)) @ rng.normal(size=(6, 6))  # n > d: sqrtm path
    assert fid_from_features(full, full) == pytest.approx(0.0, abs=1e-6)
    low = rng.normal(size=(5, 2048))  # n < d: exact low-rank path
    assert fid_from_features(low, low) == pytest.approx(0.0, abs=1e-8 * (low**2).sum())
    assert fid_from_features(low, low + 1.0) == pytest.approx(2048.0, rel=1e-9)  # pure mean shift


def test_low_rank_path_matches_sqrtm() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(12, 40)), rng.normal(size=(9, 40)) * 1.5 + 0.3
    exact = fid_from_features(a, b)  # rank-deficient covariances → SVD path
    reference = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert exact == pytest.approx(reference, rel=1e-4)
    assert exact > 0
    with pytest.raises(WeightsError) as err:
        fid_from_features(a[:1], b)
    assert err.value.code == "fid.too_few_samples"


# --- LPIPS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alex_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lpips")
    return write_backbone(root / "alexnet.pth", "alex"), write_lin(root / "alex.pth", ALEX_LIN)


def test_lpips_properties(alex_files: tuple[Path, Path]) -> None:
    assert LPIPS_SHIFT == (-0.030, -0.088, -0.188) and LPIPS_SCALE == (0.458, 0.448, 0.450)
    model = LPIPS.from_files(*alex_files, net="alex")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 48, 48, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(3, 3, 48, 48, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        same, ab, ba = model(a, a), model(a, b), model(b, a)
        closer = model(a, (a + 0.05 * (b - a)))
    assert same.shape == (3,) and torch.all(same == 0)
    assert torch.all(ab > 0) and torch.allclose(ab, ba, rtol=1e-5, atol=1e-7)
    assert torch.all(closer < ab)  # a smaller perturbation is closer
    with pytest.raises(WeightsError) as err:
        model(a[..., :24, :24], b[..., :24, :24])
    assert err.value.code == "lpips.too_small"


def test_lpips_alex_matches_a_functional_recomputation(tmp_path: Path, alex_files: tuple[Path, Path]) -> None:
    """With unit lin weights, LPIPS = Σ_l mean_hw ‖x̂_l − ŷ_l‖² of unit-normalised relu1..relu5;
    recomputed here with F.conv2d straight from the file's tensors."""
    backbone = alex_files[0]
    ones = write_lin(tmp_path / "ones.pth", ALEX_LIN, value=1.0)
    model = LPIPS.from_files(backbone, ones, net="alex")
    sd = torch.load(backbone, weights_only=True)
    shift, scale = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)

    def taps(x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - shift) / scale
        out = []
        for i, (stride, pad, pool) in {0: (4, 2, True), 3: (1, 2, True), 6: (1, 1, False), 8: (1, 1, False), 10: (1, 1, False)}.items():  # fmt: skip
            x = F.relu(F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], stride, pad))
            out.append(x)
            if pool:
                x = F.max_pool2d(x, 3, 2)
        return out

    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1, torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    expected = sum(
        ((fa / (fa.norm(dim=1, keepdim=True) + 1e-10) - fb / (fb.norm(dim=1, keepdim=True) + 1e-10)) ** 2)
        .sum(1)
        .mean(dim=(1, 2))
        for fa, fb in zip(taps(a), taps(b))
    )
    with torch.no_grad():
        assert torch.allclose(model(a, b), expected, rtol=1e-4)


def test_lpips_vgg16_loads_torchvision_layout(tmp_path: Path) -> None:
    model = LPIPS.from_files(
        write_backbone(tmp_path / "vgg16.pth", "vgg"), write_lin(tmp_path / "vgg.pth", VGG_LIN), net="vgg"
    )
    a = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        d = model(a, -a)
    assert d.shape == (1,) and float(d) > 0 and model.sources["lin"].endswith("vgg.pth")


def test_lpips_weight_files_give_typed_errors(tmp_path: Path, alex_files: tuple[Path, Path]) -> None:
    backbone, lin = alex_files
    state = torch.load(backbone, weights_only=True)
    del state["features.8.weight"]
    torch.save(state, tmp_path / "no_conv4.pth")
    lin_state = torch.load(lin, weights_only=True)
    lin_state["lin2.model.1.weight"] = torch.ones(1, 100, 1, 1)
    torch.save(lin_state, tmp_path / "bad_lin.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    cases = [
        (tmp_path / "absent.pth", lin, "weights.missing"),
        (tmp_path / "garbage.pth", lin, "weights.unreadable"),
        (tmp_path / "no_conv4.pth", lin, "weights.mismatch"),
        (backbone, tmp_path / "bad_lin.pth", "weights.mismatch"),
        (lin, backbone, "weights.mismatch"),  # files swapped
    ]
    for b, lw, code in cases:
        with pytest.raises(WeightsError) as err:
            LPIPS.from_files(b, lw, net="alex")
        assert err.value.code == code, (b, lw)
        assert isinstance(err.value, TrainingError)
    with pytest.raises(WeightsError) as err:
        LPIPS.from_files(backbone, lin, net="vgg")  # an AlexNet file for the VGG backbone
    assert err.value.code == "weights.mismatch" and "features.2.weight" in str(err.value)


# --- Inception -----------------------------------------------------------------------------------


def test_inception_layout_matches_pt_inception() -> None:
    model = FIDInceptionV3()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_1a_3x3.bn.running_var": (32,),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7b.branch3x3_2b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch3x3dbl_1.conv.weight": (448, 2048, 1, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert not any(k.startswith(("fc.", "AuxLogits.")) for k in shapes)
    # 94 conv+BN units; parameters = torchvision inception_v3 (27,161,264) − AuxLogits − fc.
    assert sum(k.endswith(".conv.weight") for k in shapes) == 94
    assert sum(p.numel() for p in model.parameters()) == 21_785_568
    assert model.Mixed_7b.pool == "avg" and model.Mixed_7c.pool == "max"


def test_inception_loads_pt_inception_file_and_returns_2048(tmp_path: Path) -> None:
    path = write_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    model = FIDInceptionV3.from_file(path)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = inception_features(model, images)
    assert feats.shape == (2, 2048) and np.isfinite(feats).all() and (feats >= 0).all()
    assert np.abs(feats[0] - feats[1]).max() > 0
    state = torch.load(path, weights_only=True)
    assert torch.equal(
        model.Mixed_7c.branch_pool.bn.running_var, state["Mixed_7c.branch_pool.bn.running_var"]
    )
    del state["Mixed_7c.branch_pool.bn.running_var"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError) as err:
        FIDInceptionV3.from_file(tmp_path / "broken.pth")
    assert err.value.code == "weights.mismatch" and "Mixed_7c.branch_pool.bn.running_var" in str(err.value)


# --- evaluation ----------------------------------------------------------------------------------


def test_pretrained_metrics_need_both_lpips_files(alex_files: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(TrainingError) as err:
        PretrainedMetrics.from_paths(lpips_backbone=alex_files[0])
    assert err.value.code == "evaluate.lpips_weights_incomplete"
    with pytest.raises(WeightsError) as err:
        PretrainedMetrics.from_paths(fid_weights=tmp_path / "absent.pth")
    assert err.value.code == "weights.missing"
    none = PretrainedMetrics.from_paths()
    assert none.lpips is None and none.inception is None


@pytest.mark.slow
def test_evaluate_reports_lpips_and_fid(
    tmp_path: Path, tiny_data: Path, alex_files: tuple[Path, Path]
) -> None:
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(GOHANetwork(tiny_config()), checkpoint)
    pretrained = PretrainedMetrics.from_paths(
        lpips_backbone=alex_files[0],
        lpips_lin=alex_files[1],
        fid_weights=write_inception(tmp_path / "pt_inception.pth"),
    )
    report = evaluate_synthetic(
        checkpoint, tiny_data, batch_size=2, face_metrics=False, pretrained=pretrained
    )
    m = report["metrics"]
    for key in ("recon_lpips", "recon_lowres_lpips", "reenact_lpips", "reenact_lowres_lpips"):
        assert m[key] is not None and m[key] > 0 and report["counts"][key] == 2, key
    for key in ("recon", "reenact", "cross"):
        assert report["fid"][key] is not None and report["fid"][key] > 0, key  # outputs ≠ ground truth
        assert report["fid"][key] == m[f"{key}_fid"]
    assert report["lpips"]["net"] == "alex" and report["lpips"]["recon"] == m["recon_lpips"]
    assert report["fid"]["samples"] == {
        "cross_output": 2,
        "recon_output": 2,
        "reenact_output": 2,
        "source_images": 2,
        "target_images": 2,
    }
    assert report["not_computed"] == {}
    markdown = to_markdown(report)
    assert f"{m['recon_lpips']:.4f}" in markdown and f"{m['cross_fid']:.4f}" in markdown
    assert "not computed" not in markdown


def test_cli_wires_the_weight_options(tmp_path: Path, alex_files: tuple[Path, Path]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shared.training", "evaluate", "--data", str(tmp_path),
         "--checkpoint", str(tmp_path / "x.pt"), "--lpips-net", "vgg",
         "--lpips-backbone-weights", str(tmp_path / "vgg16.pth"), "--lpips-lin-weights", str(alex_files[1])],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    error = json.loads(proc.stderr.strip().splitlines()[-1])
    assert error["error"] == "weights.missing" and "VGG-16" in error["message"]


def test_stage1_trains_with_the_lpips_loss_and_stage2_prefers_vgg(
    tiny_data: Path, tmp_path: Path, alex_files: tuple[Path, Path]
) -> None:
    from shared.training.losses import LPIPSLoss, PerceptualLoss, perceptual_loss_for_stage
    from shared.training.trainer import TrainConfig, Trainer

    backbone, lin = alex_files
    config = TrainConfig.for_profile(
        "tiny",
        batch_size=1,
        lr=1e-3,
        expression_from=10**6,
        sample_every=0,
        checkpoint_every=0,
        lpips_backbone_weights=str(backbone),
        lpips_lin_weights=str(lin),
    )
    log = tmp_path / "train.log"
    trainer = Trainer(config, tmp_path / "run", data_root=tiny_data, progress=False, log=log.open("w"))
    assert isinstance(trainer.perceptual, LPIPSLoss)
    samples = trainer._samples(0)
    losses = []
    for _ in range(6):
        torch.manual_seed(0)
        losses.append(trainer.stage1_step(samples).losses["total"])
    assert min(losses[1:]) < 0.9 * losses[0], losses  # Adam at lr 1e-3 overshoots now and then
    assert all(p.grad is None for p in trainer.perceptual.parameters())  # frozen metric
    # Stage 2 follows the notes (VGG-19) when both are given, LPIPS when only it is.
    assert isinstance(
        perceptual_loss_for_stage(2, lpips_backbone_weights=backbone, lpips_lin_weights=lin), LPIPSLoss
    )
    with pytest.raises(WeightsError):
        perceptual_loss_for_stage(1, lpips_backbone_weights=backbone)
    assert isinstance(perceptual_loss_for_stage(1), PerceptualLoss)
