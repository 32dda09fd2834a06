import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared.training.errors import TrainingError
from shared.training.trainer import (
    CSV_FIELDS,
    TrainConfig,
    Trainer,
    dual_pairs,
    make_batch,
    step_kind,
    tv_due,
    variant_config,
)

REPO = Path(__file__).resolve().parents[2]


def _config(**overrides: object) -> TrainConfig:
    base = dict(batch_size=1, sample_every=0, checkpoint_every=0, expression_from=1, appearance_from=2)
    base.update(overrides)
    return TrainConfig.for_profile("tiny", **base)


def test_the_train_cli_offers_exactly_the_trainer_variants() -> None:
    # The parser lists its choices itself (importing the trainer to build --help costs seconds);
    # this keeps the two lists one.
    from shared.training.cli import build_parser
    from shared.training.trainer import TRAIN_VARIANTS

    train = next(
        action.choices["train"]
        for action in build_parser()._actions
        if isinstance(action.choices, dict) and "train" in action.choices
    )
    variant = next(action for action in train._actions if action.dest == "variant")
    assert tuple(variant.choices) == TRAIN_VARIANTS


def test_schedule_follows_the_notes() -> None:
    config = TrainConfig.for_profile("tiny", expression_from=6, appearance_from=12)
    assert [step_kind(s, config) for s in range(6)] == ["cano"] * 6
    assert [step_kind(s, config) for s in range(6, 12)] == [
        "full_src", "full_tar", "coarse", "coarse", "cano", "cano"
    ]  # fmt: skip
    assert tv_due(7, "full_tar") and tv_due(8, "coarse") and not tv_due(10, "coarse")
    assert tv_due(10, "cano") and not tv_due(11, "cano")
    assert variant_config("tiny", "no_appearance").appearance.enabled is False
    assert variant_config("tiny", "linear_expression").expression.mode == "linear"
    with pytest.raises(TrainingError):
        variant_config("tiny", "bogus")


@pytest.mark.slow
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_data: Path, tmp_path: Path) -> None:
    trainer = Trainer(_config(lr=1e-3, expression_from=10**6), tmp_path, data_root=tiny_data, progress=False)
    samples = trainer._samples(0)
    losses = []
    for _ in range(10):
        torch.manual_seed(0)
        losses.append(trainer.stage1_step(samples).losses["total"])
    # Adam at lr 1e-3 on one batch overshoots now and then (one step back up by ~30 %): the loss must
    # have come down over the last steps, not at every one.
    assert min(losses[-4:]) < losses[0] * 0.9, losses


@pytest.mark.slow
def test_a_few_steps_on_the_opacity_loss_alone_reduce_it(tiny_data: Path, tmp_path: Path) -> None:
    # Alone: in the full step the colour terms move the opacity too (Adam normalises the step), so
    # only this isolates what the opacity term's gradient does through the renderer.
    import torch.nn.functional as F

    from shared.training.losses import opacity_loss

    trainer = Trainer(_config(expression_from=10**6), tmp_path, data_root=tiny_data, progress=False)
    samples = trainer._samples(0)
    batch, _ = make_batch(samples, "cano", trainer.network, trainer.config, 0)
    optimizer = torch.optim.Adam(trainer.trained_parameters, lr=3e-3)
    losses = []
    for _ in range(6):
        generator = torch.Generator().manual_seed(0)
        opacity = trainer.network(batch, generator=generator, intermediate_renders=False).final.opacity
        loss = opacity_loss(opacity, samples["target_alpha"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8, losses
    coverage = F.adaptive_avg_pool2d(samples["target_alpha"], opacity.shape[-1])
    assert opacity[coverage > 0.99].mean() > opacity[coverage < 0.01].mean() + 0.1


@pytest.mark.slow
def test_opacity_loss_uses_the_coverage_of_the_rendered_camera(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.training.steps as steps_module
    import shared.training.trainer as trainer_module

    trainer = Trainer(
        _config(expression_from=0, appearance_from=10**6), tmp_path, data_root=tiny_data, progress=False
    )
    samples = trainer._samples(0)
    samples["source_alpha"] = torch.zeros_like(samples["target_alpha"])  # tell the two apart
    used: list[str] = []
    original = steps_module.opacity_loss

    def recording(opacity: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
        assert opacity.shape[1] == 1 and opacity.requires_grad
        used.append("source" if coverage is samples["source_alpha"] else "target")
        return original(opacity, coverage)

    monkeypatch.setattr(steps_module, "opacity_loss", recording)  # the step maths live in steps.py
    kinds = []
    for step in (6, 7, 8, 10):  # full_src, full_tar, coarse, cano
        trainer.step = step
        result = trainer.stage1_step(samples)
        kinds.append(result.kind)
        assert result.losses["alpha"] >= 0
    assert kinds == ["full_src", "full_tar", "coarse", "cano"]
    assert used == ["source", "target", "target", "target"]
    assert "alpha" in trainer_module.CSV_FIELDS
    trainer.config.opacity_weight = 0.0
    assert "alpha" not in trainer.stage1_step(samples).losses


@pytest.mark.slow
def test_expression_region_loss_uses_the_keep_mask_of_the_rendered_image(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.training.steps as steps_module
    import shared.training.trainer as trainer_module

    trainer = Trainer(
        _config(expression_from=0, appearance_from=10**6, expression_region_weight=0.5),
        tmp_path,
        data_root=tiny_data,
        progress=False,
    )
    samples = trainer._samples(0)
    # A source keep-mask unlike the target's (a square hole mid-image): tell the two apart.
    size = samples["target_keep"].shape[-1]
    samples["source_keep"] = torch.ones_like(samples["target_keep"])
    samples["source_keep"][..., size // 3 : size // 2, size // 3 : size // 2] = 0
    used: list[str] = []
    original = steps_module.region_l1_loss

    def recording(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        assert pred.requires_grad and region.shape[1] == 1
        source = torch.equal(region, 1 - samples["source_keep"])
        target_side = torch.equal(region, 1 - samples["target_keep"])
        used.append("source" if source and not target_side else "target" if target_side else "?")
        return original(pred, target, region)

    monkeypatch.setattr(steps_module, "region_l1_loss", recording)
    kinds, regions = [], []
    for step in (6, 7, 8, 10):  # full_src, full_tar, coarse, cano
        trainer.step = step
        result = trainer.stage1_step(samples)
        kinds.append(result.kind)
        regions.append(result.losses.get("region"))
    assert kinds == ["full_src", "full_tar", "coarse", "cano"]
    assert used == ["source", "target", "target"]
    assert all(r is not None and r > 0 for r in regions[:3]) and regions[3] is None  # Eq. 1 steps: not used
    assert "region" in trainer_module.CSV_FIELDS
    trainer.config.expression_region_weight = 0.0
    trainer.step = 7
    assert "region" not in trainer.stage1_step(samples).losses


def test_gate_loss_trains_the_gate_toward_the_expression_change(tiny_data: Path, tmp_path: Path) -> None:
    """Steps with T_e add the gate's BCE against the exact expression-change map of the expression
    they render (the source's on full_src steps); a few steps on it alone open the gate where the
    face moved and keep it shut elsewhere."""
    from shared.training.losses import gate_loss
    from shared.training.steps import gate_targets

    trainer = Trainer(
        _config(expression_from=0, appearance_from=10**6, variant="colour_gate"),
        tmp_path,
        data_root=tiny_data,
        progress=False,
    )
    samples = trainer._samples(0)
    trainer.step = 7  # full_tar
    assert trainer.stage1_step(samples).losses["gate"] > 0
    assert "gate" in CSV_FIELDS
    network = trainer.network
    # Make sure the batch has an expression that moved the face.
    samples["target_beta"] = torch.zeros_like(samples["target_beta"])
    samples["target_beta"][:, 0] = 0.9  # jaw_open
    target = gate_targets(samples, "full_tar", network)
    source_target = gate_targets(samples, "full_src", network)
    assert target.amax() > 0.9 and not torch.equal(target, source_target)
    batch, _ = make_batch(samples, "full_tar", network, trainer.config, 7)
    optimizer = torch.optim.Adam(network.expression.gate.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        gate = network.expression_planes_and_gate(batch.expression_render)[1]
        loss = gate_loss(gate, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5, losses
    gate = gate.detach()
    assert gate[target > 0.9].mean() > gate[target < 0.01].mean() + 0.2
    trainer.config.gate_weight = 0.0
    assert "gate" not in trainer.stage1_step(samples).losses


@pytest.mark.slow
def test_resume_continues_identically(tiny_data: Path, tmp_path: Path) -> None:
    straight = Trainer(_config(), tmp_path / "a", data_root=tiny_data, progress=False)
    kinds = [straight.train_step().kind for _ in range(3)]
    assert kinds == ["cano", "full_tar", "coarse"]

    first = Trainer(_config(), tmp_path / "b", data_root=tiny_data, progress=False)
    first.train_step()
    first.train_step()
    first.save_state()
    resumed = Trainer(_config(), tmp_path / "b", data_root=tiny_data, resume=True, progress=False)
    assert resumed.step == 2
    resumed.train_step()
    for (name, a), (_, b) in zip(straight.network.state_dict().items(), resumed.network.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(TrainingError) as err:
        Trainer(_config(), tmp_path / "empty", data_root=tiny_data, resume=True, progress=False)
    assert err.value.code == "training.no_state"
    # Stage 2 starts from a stage-1 state and keeps its step counter.
    stage2 = Trainer(
        _config(stage=2, variant="superres_generator"),
        tmp_path / "s2",
        data_root=tiny_data,
        init_checkpoint=first.state_path,
        progress=False,
    )
    assert stage2.step == 2
    assert torch.equal(
        stage2.network.state_dict()["superres.conv_body_first.weight"],
        first.network.state_dict()["superres.conv_body_first.weight"],
    )


def test_stage2_refuses_a_config_whose_superres_generator_is_off(tiny_data: Path, tmp_path: Path) -> None:
    assert variant_config("tiny", "full").superres.generator is False
    assert variant_config("tiny", "superres_generator").superres.generator is True
    with pytest.raises(TrainingError) as err:
        Trainer(_config(stage=2), tmp_path, data_root=tiny_data, progress=False)
    assert err.value.code == "training.no_superres_generator"


@pytest.mark.slow
def test_stage2_trains_only_the_superresolution(tiny_data: Path, tmp_path: Path) -> None:
    trainer = Trainer(
        _config(stage=2, r1_every=1, variant="superres_generator"),
        tmp_path,
        data_root=tiny_data,
        progress=False,
    )
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    result = trainer.train_step()
    assert {"l1", "perceptual", "g_gan", "d_loss", "r1"} <= set(result.losses)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())
    changed = {
        k.split(".")[0] for k, v in trainer.network.state_dict().items() if not torch.equal(v, before[k])
    }
    assert changed == {"superres"}
    path = trainer.save_samples()
    assert path.is_file()


@pytest.mark.slow
def test_stage2_frozen_parts_stay_in_eval_and_d_sees_one_condition(tiny_data: Path, tmp_path: Path) -> None:
    trainer = Trainer(
        _config(stage=2, r1_every=1, variant="superres_generator"),
        tmp_path,
        data_root=tiny_data,
        progress=False,
    )
    seen: list[torch.Tensor] = []
    discriminator = trainer.ddp_discriminator
    assert discriminator is not None

    def recording(pair: torch.Tensor) -> torch.Tensor:
        seen.append(pair.detach().clone())
        return discriminator(pair)

    trainer.ddp_discriminator = recording  # type: ignore[assignment]
    trainer.train_step()
    trainer.network.train()  # any later train() call must not wake the frozen parts up
    for name, module in trainer.network.named_modules():
        if name:
            assert module.training == name.startswith("superres"), name
    # Two identical stage-2 low-res forwards give identical renders (no drop-path noise).
    samples = trainer._samples(0)
    config = dataclasses.replace(trainer.config, appearance_from=0)
    batch, _ = make_batch(samples, "full_tar", trainer.network, config, trainer.step)
    with torch.no_grad():
        a, b = (
            trainer.network(
                batch, deterministic=True, intermediate_renders=False, return_features=False
            ).final.rgb
            for _ in range(2)
        )
    assert torch.equal(a, b), (a - b).abs().max()
    # D saw [SR, render] in the G step, then [real, render] and [SR, render]: one condition for all.
    assert len(seen) == 3
    g_fake, d_real, d_fake = seen
    assert torch.equal(d_real[:, 3:], d_fake[:, 3:]) and torch.equal(g_fake[:, 3:], d_real[:, 3:])
    assert not torch.equal(d_real[:, :3], d_fake[:, :3])


def test_dual_pairs_condition_real_and_fake_on_the_same_render() -> None:
    real, fake, render = torch.rand(3, 2, 3, 8, 8).unbind(0)
    real_pair, fake_pair = dual_pairs(real, fake, render)
    assert torch.equal(real_pair, torch.cat([real, render], 1))
    assert torch.equal(fake_pair, torch.cat([fake, render], 1))


@pytest.mark.slow
def test_ddp_two_cpu_processes_on_gloo(tiny_data: Path, tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "shared.training", "--threads", "1", "train", "--data", str(tiny_data), "--run-dir", str(tmp_path),
        "--max-steps", "2", "--batch-size", "1", "--expression-from", "1", "--appearance-from", "1",
        "--sample-every", "0", "--checkpoint-every", "0", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["final_step"] == 2
    rows = (tmp_path / "log_stage1.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + 2 steps, written by rank 0 only


def _deadline_rank(rank: int, init_file: str, results: str) -> None:
    import time
    from types import SimpleNamespace

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        fake = SimpleNamespace(dist=SimpleNamespace(world_size=2))
        # Rank 0 is past its deadline, rank 1 is not: both must stop at this step.
        deadline = 0.0 if rank == 0 else time.perf_counter() + 3600
        stop = Trainer._past_deadline(fake, deadline)  # type: ignore[arg-type]
        Path(results, f"rank{rank}").write_text(str(stop))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_agree_on_the_max_minutes_stop(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_deadline_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["True", "True"]


def test_load_partial_copies_matches_and_overlaps_and_reports_the_rest() -> None:
    from torch import nn

    from shared.training.trainer import load_partial

    torch.manual_seed(0)
    old = nn.Sequential(nn.Linear(4, 6), nn.Conv2d(6, 8, 3), nn.Linear(5, 3))
    new = nn.Sequential(nn.Linear(4, 6), nn.Conv2d(6, 10, 3), nn.Linear(7, 3), nn.Linear(2, 2))
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    source = dict(old.state_dict())
    source["gone.weight"] = torch.ones(3)  # no counterpart
    source["1.bias"] = torch.ones(8)  # leading dimension 8 -> 10
    source["1.weight"] = torch.ones(8, 6, 2, 2)  # a middle (kernel) dimension differs too: skipped
    report = load_partial(new, source)
    assert sorted(report.full) == ["0.bias", "0.weight", "2.bias"]
    assert sorted(report.partial) == ["1.bias", "2.weight"]
    assert sorted(report.skipped) == ["1.weight", "gone.weight"]
    assert sorted(report.missing) == ["3.bias", "3.weight"]
    assert "3 tensors loaded fully, 2 partially, 2 skipped" in report.summary()
    state = new.state_dict()
    assert torch.equal(state["0.weight"], old.state_dict()["0.weight"])
    # Leading dimension grew: the first 8 outputs are loaded, the 2 new ones keep their init.
    assert torch.equal(state["1.bias"][:8], torch.ones(8))
    assert torch.equal(state["1.bias"][8:], fresh["1.bias"][8:])
    # Trailing (input) dimension grew: the overlap is copied, the new inputs keep their init.
    assert torch.equal(state["2.weight"][:, :5], old.state_dict()["2.weight"])
    assert torch.equal(state["2.weight"][:, 5:], fresh["2.weight"][:, 5:])
    assert torch.equal(state["1.weight"], fresh["1.weight"])
    # The copies went into the parameters themselves.
    assert torch.equal(new[0].weight.detach(), old[0].weight.detach())


@pytest.mark.slow
def test_init_partial_warm_starts_from_another_architecture(tiny_data: Path, tmp_path: Path) -> None:
    from shared.model.checkpoint import save_checkpoint
    from shared.model.network import GOHANetwork

    base = variant_config("tiny", "full")
    hidden = base.renderer.decoder_hidden
    older = dataclasses.replace(base, renderer=dataclasses.replace(base.renderer, decoder_hidden=hidden // 2))
    torch.manual_seed(1)
    old_network = GOHANetwork(older)
    path = tmp_path / "old.pt"
    save_checkpoint(old_network, path)
    with pytest.raises(TrainingError) as err:
        Trainer(_config(init_partial=str(path)), tmp_path / "both", data_root=tiny_data,
                init_checkpoint=path, progress=False)  # fmt: skip
    assert err.value.code == "training.bad_init"
    log = tmp_path / "log.txt"
    with log.open("w") as handle:
        trainer = Trainer(
            _config(init_partial=str(path)), tmp_path / "run", data_root=tiny_data, progress=False, log=handle
        )
    report = trainer.partial_load
    decoder = {
        "renderer.decoder.net.0.weight",
        "renderer.decoder.net.0.bias",
        "renderer.decoder.net.2.weight",
    }
    assert decoder <= set(report.partial)
    assert not report.skipped and not report.missing
    assert len(report.full) == len(old_network.state_dict()) - len(report.partial)
    new_state, old_state = trainer.network.state_dict(), old_network.state_dict()
    assert all(torch.equal(new_state[name], old_state[name]) for name in report.full)
    h = hidden // 2
    assert torch.equal(
        new_state["renderer.decoder.net.0.weight"][:h], old_state["renderer.decoder.net.0.weight"]
    )
    assert torch.equal(
        new_state["renderer.decoder.net.2.weight"][:, :h], old_state["renderer.decoder.net.2.weight"]
    )
    assert trainer.step == 0
    assert f"{len(report.full)} tensors loaded fully, 3 partially, 0 skipped" in log.read_text()
    trainer.train_step()  # and it trains
