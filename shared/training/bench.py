"""``make bench-train``: training speed of a profile and evaluation PSNRs of a checkpoint.

Prints one JSON line last: ``{"profile", "train_it_per_s", "eval_psnr_recon", "eval_psnr_reenact"}``
plus context fields. Training speed: stage-1 steps with every branch switched on, cycling
through the step types (full_src, full_tar, coarse, coarse, cano, cano), after two warm-up steps,
at a global batch of 4, measured two ways in the same run:

- ``train_it_per_s``: the recommended CPU set-up (docs/training.md), DDP over two single-threaded
  gloo processes with batch 2 each (``torchrun --nproc_per_node 2 ... --threads 1``);
- ``train_single_process_it_per_s``: one process, batch 4, ``torch`` threads as given.

On two shared cores the DDP set-up wins by a wide margin: one process's second OpenMP thread
spends most of a step waiting at barriers for a core another job holds.
Evaluation: the checkpoint's served (super-resolved) output on the first ``eval_pairs`` pairs of
the synthetic holdout (regenerated deterministically: seed 0 gives the same identities as the
shipped run's holdout).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shared.training.evaluate import evaluate_synthetic
from shared.training.synthetic import generate_dataset
from shared.training.trainer import TrainConfig, Trainer


def bench(
    *, profile: str = "tiny", checkpoint: str | Path, steps: int = 12, eval_pairs: int = 16, seed: int = 0
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="goha-bench-") as tmp:
        root = Path(tmp) / "data"
        generate_dataset(root, split="train", num_identities=2, pairs_per_identity=2, seed=seed)
        per_identity = 4
        generate_dataset(
            root,
            split="holdout",
            num_identities=-(-eval_pairs // per_identity),
            pairs_per_identity=per_identity,
            seed=seed,
        )
        config = TrainConfig.for_profile(
            profile, expression_from=0, appearance_from=0, sample_every=0, checkpoint_every=0, seed=seed
        )
        trainer = Trainer(config, Path(tmp) / "run", data_root=root, progress=False)
        for _ in range(2):
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        rate = steps / (time.perf_counter() - start)
        ddp_rate = ddp_it_per_s(root, Path(tmp) / "ddp", profile=profile, steps=steps, seed=seed)
        report = evaluate_synthetic(checkpoint, root, max_pairs=eval_pairs, face_metrics=False)
    m = report["metrics"]
    return {
        "profile": profile,
        "train_it_per_s": ddp_rate,
        "train_single_process_it_per_s": round(rate, 3),
        "train_batch_size": config.batch_size,
        "eval_psnr_recon": m["recon_psnr"],
        "eval_psnr_reenact": m["reenact_psnr"],
        "eval_pairs": report["pairs"],
        "model_version": report["model_version"],
    }


def ddp_it_per_s(data_root: Path, run_dir: Path, *, profile: str, steps: int, seed: int) -> float:
    """Steps per second of ``torchrun --nproc_per_node 2`` training (batch 2 per process, one thread
    each), timed from the rank-0 CSV log so process start-up and the two warm-up steps are excluded."""
    warmup = 2
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "shared.training", "--threads", "1", "train", "--profile", profile, "--stage", "1",
        "--data", str(data_root), "--run-dir", str(run_dir), "--batch-size", "2",
        "--max-steps", str(steps + warmup), "--expression-from", "0", "--appearance-from", "0",
        "--sample-every", "0", "--checkpoint-every", "0", "--seed", str(seed), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"DDP bench run failed ({done.returncode}): {done.stderr[-2000:]}")
    log = (run_dir / "log_stage1.csv").read_text().splitlines()
    header = log[0].split(",")
    elapsed = [float(dict(zip(header, row.split(","), strict=True))["seconds"]) for row in log[1:]]
    return round(steps / (elapsed[-1] - elapsed[warmup - 1]), 3)
