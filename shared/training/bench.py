"""``make bench-train``: training speed of a profile and evaluation PSNRs of a checkpoint.

Prints one JSON line last: ``{"profile", "train_it_per_s", "eval_psnr_recon", "eval_psnr_reenact"}``
plus context fields. Training speed: stage-1 steps with every branch switched on, cycling
through the step types (full_src, full_tar, coarse, coarse, cano, cano), after two warm-up steps.
Evaluation: the checkpoint's served (super-resolved) output on the first ``eval_pairs`` pairs of
the synthetic holdout (regenerated deterministically: seed 0 gives the same identities as the
shipped run's holdout).
"""

from __future__ import annotations

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
        report = evaluate_synthetic(checkpoint, root, max_pairs=eval_pairs, face_metrics=False)
    m = report["metrics"]
    return {
        "profile": profile,
        "train_it_per_s": round(rate, 3),
        "train_batch_size": config.batch_size,
        "eval_psnr_recon": m["recon_psnr"],
        "eval_psnr_reenact": m["reenact_psnr"],
        "eval_pairs": report["pairs"],
        "model_version": report["model_version"],
    }
