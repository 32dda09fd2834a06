"""The one-command ablation (paper Table 4 form), sequential and with one process per variant;
the training bench's DDP timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.training.ablation import run_ablation


@pytest.mark.timeout(600)
def test_parallel_ablation_writes_one_row_per_variant(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    result = run_ablation(
        tiny_data,
        out,
        steps=3,
        batch_size=1,
        eval_pairs=1,
        variants=("full", "no_appearance"),
        face_metrics=False,
        jobs=2,
    )
    assert set(result["rows"]) == {"full", "no_appearance"}
    for variant, row in result["rows"].items():
        assert row["train"]["final_step"] == 3
        assert 0 < row["metrics"]["recon_lowres_psnr"] < 100
        assert (out / variant / "model.pt").is_file()
    on_disk = json.loads((out / "ablation.json").read_text())
    assert on_disk["jobs"] == 2 and on_disk["steps_per_variant"] == 3
    table = (out / "ablation.md").read_text()
    assert "| Full model |" in table and "| w/o appearance branch (T_p) |" in table


def test_appearance_output_starts_small_but_every_layer_learns() -> None:
    import torch

    from shared.model.appearance import OUTPUT_INIT_GAIN, AppearanceUpsampler

    torch.manual_seed(0)
    upsampler = AppearanceUpsampler(in_channels=8, hidden=16, plane_channels=4, upsamples=1)
    torch.manual_seed(0)
    reference = torch.nn.Conv2d(8, 4, 1)  # default init of the same shape as the skip layer
    assert upsampler.skip_xy.bias.abs().max() == 0
    ratio = float(upsampler.skip_xy.weight.std() / reference.weight.std())
    assert ratio == pytest.approx(OUTPUT_INIT_GAIN, rel=0.5)
    upsampler(torch.randn(2, 3, 8, 6, 6)).square().mean().backward()
    for name, parameter in upsampler.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, name


@pytest.mark.timeout(600)
def test_bench_times_ddp_training_from_the_rank0_log(tiny_data: Path, tmp_path: Path) -> None:
    from shared.training.bench import ddp_it_per_s

    rate = ddp_it_per_s(tiny_data, tmp_path / "ddp", profile="tiny", steps=2, seed=0)
    assert 0 < rate < 1000
    rows = (tmp_path / "ddp" / "log_stage1.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # header + 2 warm-up + 2 timed steps, rank 0 only
