"""Two-stage GOHA trainer (paper §3.5; schedule from official-code-notes.md §7).

Stage 1 trains everything except the super-resolution. Like the released code, each iteration
is ONE step type (one render per step, which is also what makes CPU training affordable):

- before ``expression_from``: only ``cano`` steps (I_c against I_neu / the masked target, Eq. 1);
- afterwards ``step % 6``: 0 ``full_src`` (all active planes at the source camera, the source's
  own expression), 1 ``full_tar`` (target camera and expression), 2–3 ``coarse`` (T_c + T_e vs the
  target), 4–5 ``cano``. T_p joins the ``full`` steps from ``appearance_from`` (I_{c+e+p}).
- losses: L1 + perceptual (+ TV 0.25 always in full steps, in coarse steps when step % 4 == 0,
  in cano steps when step % 6 == 4) + the opacity loss (``opacity_weight``, every stage-1 step)
  + the source-colour gate's loss (``gate_weight``, steps with T_e, when the config has the gate)
  + the expression-region L1 (``expression_region_weight``, non-cano steps, off by default).

Addition to the paper: an opacity loss, L1 between the render's accumulated opacity and the
synthetic head's coverage area-downsampled to the render size (``opacity_loss``). Without it the
density is a see-through fog (median opacity 0.47 inside the head): nothing in the paper's losses
asks for a surface on black backgrounds, since a dim opaque pixel and a bright thin one look the
same. Its reference is the coverage of the image the step renders: ``target_alpha`` for
``full_tar`` / ``coarse`` / ``cano`` (the neutral render I_c is at the target camera too, and the
silhouette barely changes with expression), ``source_alpha`` for ``full_src``.

Stage 2 trains only the super-resolution: L1 + perceptual against the full-resolution image plus
0.1 × the non-saturating logistic GAN loss of a dual discriminator that sees
[image, upsampled low-res render]; D uses the logistic loss with lazy R1 (γ = 10 every 16 D steps).
Deliberate differences to EG3D's dual discrimination, both because the low-res render is frozen
here (EG3D trains it jointly):

- real and fake are conditioned on the SAME frozen render ([image, up(render)] vs
  [SR, up(render)]). EG3D's real half is the image down-sampled and up again; with a frozen render
  that half differs between real and fake in a way the SR cannot change, so D separates them on
  those channels and its gradient tells the SR nothing.
- every frozen part (all but the SR; D is trained) stays in eval mode, so SegFormer drop-path does
  not turn the SR's input into noise (``GOHANetwork.freeze_in_eval``).

Determinism: every step seeds its own generators from (seed, rank, step) (data indices, ray
jitter, SR noise, drop-path), and the RNG states are saved too, so a resumed run continues
exactly like an uninterrupted one.

Layout: this module orchestrates (data, seeding, optimisers, state files, logs, sample grids); the
maths of a step (its type, its network inputs, the loss it assembles) is in steps.py.

Multi-process: under ``torchrun`` (WORLD_SIZE > 1) the trained module is wrapped in
DistributedDataParallel (gloo on CPU, nccl on GPUs); each rank draws its own samples.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from shared.face.morphable import load_procedural_model
from shared.model.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, read_checkpoint, save_checkpoint
from shared.model.config import ModelConfig, config_from_dict, config_to_dict, get_profile
from shared.model.discriminator import (
    StyleGAN2Discriminator,
    paper_discriminator_config,
    tiny_discriminator_config,
)
from shared.model.gan_losses import R1Config
from shared.model.network import GOHANetwork
from shared.training.errors import TrainingError
from shared.training.losses import perceptual_loss_for_stage, resize_image
from shared.training.steps import (
    dual_pairs,
    make_batch,
    source_expression_renders,
    stage1_loss,
    stage2_discriminator_loss,
    stage2_generator_loss,
    step_kind,
    tv_due,
)
from shared.training.synthetic import PairDataset, collate

__all__ = [  # the step helpers (steps.py) stay importable from here
    "CSV_FIELDS",
    "STATE_FORMAT",
    "TRAIN_VARIANTS",
    "VARIANTS",
    "DistInfo",
    "PartialLoad",
    "StepResult",
    "TrainConfig",
    "Trainer",
    "dual_pairs",
    "init_distributed",
    "load_partial",
    "make_batch",
    "sample_indices",
    "source_expression_renders",
    "step_kind",
    "tv_due",
    "variant_config",
]

Variant = Literal["full", "no_appearance", "linear_expression"]
VARIANTS: tuple[str, ...] = ("full", "no_appearance", "linear_expression")
# What `train --variant` accepts: the ablation's variants, and the profile with the source-colour gate
# (ExpressionConfig.colour_gate: an experiment that lost on bench-quality, models/README.md).
TRAIN_VARIANTS: tuple[str, ...] = (*VARIANTS, "colour_gate", "superres_generator")
STATE_FORMAT = "goha-train-state/1"
CSV_FIELDS = (
    "step", "stage", "kind", "total", "l1", "perceptual", "tv", "alpha", "l1_neutral", "perc_neutral",
    "l1_target_masked", "perc_target_masked", "g_gan", "d_loss", "r1", "grad_norm", "seconds", "it_per_s",
    "gate", "region",  # appended: a run resumed from an older log keeps its columns
)  # fmt: skip


@dataclass
class TrainConfig:
    profile: str = "tiny"
    variant: str = "full"
    stage: int = 1
    batch_size: int = 4
    # The notes' Adam: betas (0, 0.99), lr 1e-4 constant. Tiny CPU runs see ~10^3 steps instead of
    # 7.5·10^5, so the tiny default lr is 2e-4 (documented in docs/training.md).
    lr: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.99)
    grad_clip: float = 1000.0
    expression_from: int = 120_000  # notes: add_expr_plane
    appearance_from: int = 240_000  # notes: add_id_plane
    tv_weight: float = 0.25
    tv_points: int = 1000
    # Not in the paper: L1 of the render's opacity vs the data's coverage (a solid head, not fog).
    opacity_weight: float = 1.0
    # Not in the paper: BCE of the source-colour gate vs the exact expression-change map (steps.py).
    gate_weight: float = 0.2
    # Not in the paper: L1 inside the eyes/brows/mouth region alone in the steps with a target
    # expression (losses.region_l1_loss): the whole-image L1 barely sees the mouth. Off by default.
    expression_region_weight: float = 0.0
    # The gate head's learning rate / lr: only its own loss trains it (expression.py), and at lr it
    # took ~1,000 steps to open where the face moved; the decoder must learn the mouth behind it.
    gate_lr_multiplier: float = 5.0
    # Fraction of batch items in full steps rendered with the gate forced open (m = 0 everywhere):
    # where the gate opens at serving time the decoder's own colour shows, and with the lifted
    # colour on the face in every step it was never trained there (a purple blur on the chin
    # where a driver opened the jaw, 1,300 steps in).
    gate_open_prob: float = 0.25
    neutral_perceptual_weight: float = 3.0
    gan_weight: float = 0.1
    d_lr: float = 5e-4
    r1_gamma: float = 10.0
    r1_every: int = 16
    max_steps: int | None = None  # absolute step to stop at (the counter continues across stages)
    max_minutes: float | None = None
    log_every: int = 1
    sample_every: int = 50
    checkpoint_every: int = 50
    seed: int = 0
    vgg_weights: str | None = None
    lpips_backbone_weights: str | None = None  # LPIPS (stage 1's perceptual loss in the notes)
    lpips_lin_weights: str | None = None
    lpips_net: str = "alex"
    threads: int = 2
    # Warm start from a checkpoint / state of a slightly different architecture (load_partial).
    init_partial: str | None = None

    @classmethod
    def for_profile(cls, profile: str, **overrides: Any) -> TrainConfig:
        base: dict[str, Any] = {"profile": profile}
        if profile == "tiny":
            # Thresholds scaled down from 120k / 240k (a tiny CPU run is a few hundred steps).
            base.update(lr=2e-4, expression_from=800, appearance_from=1600, batch_size=4, sample_every=500)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def variant_config(profile: str, variant: str) -> ModelConfig:
    """The model config of an ablation variant (paper Table 4)."""
    config = get_profile(profile)
    if variant == "full":
        return config
    if variant == "no_appearance":
        # The source-colour blend (its gate, the mouth map) read T_p's lifted colour: without the branch
        # there is none.
        return dataclasses.replace(
            config,
            appearance=dataclasses.replace(config.appearance, enabled=False),
            expression=dataclasses.replace(
                config.expression, colour_gate=False, mouth_interior=False, mouth_teeth=False
            ),
            renderer=dataclasses.replace(
                config.renderer, source_colour_blend=False, surface_colour_resolution=0
            ),
        )
    if variant == "linear_expression":
        num = load_procedural_model().num_expression
        return dataclasses.replace(
            config, expression=dataclasses.replace(config.expression, mode="linear", num_bases=num)
        )
    if variant == "superres_generator":
        # The SR's generator on (the tiny profile serves the detail image without it): stage 2 trains it.
        return dataclasses.replace(config, superres=dataclasses.replace(config.superres, generator=True))
    if variant == "colour_gate":
        return dataclasses.replace(
            config, expression=dataclasses.replace(config.expression, colour_gate=True)
        )
    raise TrainingError("training.bad_variant", f"variant must be one of {TRAIN_VARIANTS}, got {variant!r}")


# --- distributed helpers -------------------------------------------------------------------------


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())


def _seed_for(config: TrainConfig, rank: int, step: int, salt: int = 0) -> int:
    return (config.seed * 1_000_003 + rank * 7919 + step * 31 + salt) % (2**62)


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state as tensors and ints (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


# --- module modes ----------------------------------------------------------------------------------


# --- partial warm start ------------------------------------------------------------------------------


@dataclass
class PartialLoad:
    """What ``load_partial`` did, by tensor name."""

    full: list[str] = field(default_factory=list)  # name and shape match: copied
    partial: list[str] = field(default_factory=list)  # first / last dimension differs: overlap copied
    skipped: list[str] = field(default_factory=list)  # in the file, no usable counterpart
    missing: list[str] = field(default_factory=list)  # in the network, not in the file: fresh init

    def summary(self) -> str:
        return (
            f"{len(self.full)} tensors loaded fully, {len(self.partial)} partially, "
            f"{len(self.skipped)} skipped, {len(self.missing)} of the network not in the file"
        )


def _overlap(target: tuple[int, ...], source: tuple[int, ...]) -> tuple[slice, ...] | None:
    """The common block of two shapes that differ only in their first and/or last dimension."""
    if len(target) != len(source) or not target:
        return None
    middle = range(1, len(target) - 1)
    if any(target[i] != source[i] for i in middle):
        return None
    return tuple(slice(0, min(a, b)) for a, b in zip(target, source))


def _weights_in(path: str | Path) -> dict[str, Tensor]:
    """The model tensors of a platform checkpoint (goha-checkpoint/1) or a training state."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError("training.init_missing", f"no checkpoint or state at {path}") from None
    except Exception as exc:  # torch raises several types for foreign / truncated files
        raise TrainingError("training.init_unreadable", f"{path}: unreadable ({exc})") from exc
    if isinstance(payload, dict) and payload.get("format") == STATE_FORMAT:
        return dict(payload["model"])
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return dict(payload["state_dict"])
    raise TrainingError(
        "training.init_unreadable",
        f"{path}: neither a {CHECKPOINT_FORMAT} checkpoint nor a {STATE_FORMAT} state",
    )


@torch.no_grad()
def load_partial(network: nn.Module, source: dict[str, Tensor]) -> PartialLoad:
    """Copy every tensor of ``source`` whose name and shape match into ``network``; where only the
    leading (output) and/or the trailing dimension differ, copy the overlapping block (the rest
    keeps its fresh initialisation). Everything else is skipped. For warm-starting a changed
    architecture (wider planes, more decoder outputs, ...) from an older checkpoint: no config
    check, by design, so the caller reads the returned counts."""
    report = PartialLoad()
    own = network.state_dict()
    for name, tensor in source.items():
        if name not in own:
            report.skipped.append(name)
            continue
        target = own[name]
        if target.shape == tensor.shape:
            target.copy_(tensor.to(target.dtype))
            report.full.append(name)
            continue
        block = _overlap(tuple(target.shape), tuple(tensor.shape))
        if block is None or not tensor.is_floating_point() or not target.is_floating_point():
            report.skipped.append(name)
            continue
        target[block].copy_(tensor[block].to(target.dtype))
        report.partial.append(name)
    report.missing = [name for name in own if name not in source]
    return report


# --- batches ---------------------------------------------------------------------------------------


def sample_indices(config: TrainConfig, rank: int, step: int, dataset_size: int) -> list[int]:
    g = torch.Generator().manual_seed(_seed_for(config, rank, step, 1))
    return torch.randint(dataset_size, (config.batch_size,), generator=g).tolist()


# --- the trainer -----------------------------------------------------------------------------------


@dataclass
class StepResult:
    step: int
    kind: str
    losses: dict[str, float] = field(default_factory=dict)


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        data_root: str | Path,
        init_checkpoint: str | Path | None = None,
        resume: bool = False,
        dist_info: DistInfo | None = None,
        progress: bool = True,
        log: Any = None,
    ) -> None:
        self.config = config
        self.dist = dist_info or DistInfo()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress and self.dist.is_main
        self._log_file = log
        torch.manual_seed(config.seed)
        self.dataset = PairDataset(data_root, "train")
        model_config = variant_config(config.profile, config.variant)
        if self.dataset.image_size != model_config.image_size:
            raise TrainingError(
                "training.size_mismatch",
                f"dataset images are {self.dataset.image_size}², profile {config.profile} needs {model_config.image_size}²",
            )
        self.network = GOHANetwork(model_config)
        # I_exp of full_src steps is rendered like the dataset's stored I_exp.
        self.expression_supersample = int(self.dataset.meta.get("config", {}).get("supersample", 2))
        self.step = 0
        if init_checkpoint is not None and config.init_partial:
            raise TrainingError(
                "training.bad_init", "give either --init (same architecture) or --init-partial, not both"
            )
        if init_checkpoint is not None:
            self._load_init(init_checkpoint)
        if config.init_partial:
            # state_dict() tensors share storage with the parameters: copying into them loads.
            report = load_partial(self.network, _weights_in(config.init_partial))
            self.say(f"init-partial from {config.init_partial}: {report.summary()}")
            if report.partial:
                self.say(f"  partially loaded: {', '.join(report.partial)}")
            if report.skipped:
                self.say(f"  skipped: {', '.join(report.skipped)}")
            self.partial_load = report
        self.perceptual = perceptual_loss_for_stage(
            config.stage,
            vgg_weights=config.vgg_weights,
            lpips_backbone_weights=config.lpips_backbone_weights,
            lpips_lin_weights=config.lpips_lin_weights,
            lpips_net=config.lpips_net,
        )
        self.say(self.perceptual.description)
        self.discriminator: StyleGAN2Discriminator | None = None
        self.d_optimizer: torch.optim.Optimizer | None = None
        self.d_steps = 0
        if config.stage == 1:
            self.network.requires_grad_(True)
            self.network.superres.requires_grad_(False)
            trained: nn.Module = self.network
        elif config.stage == 2:
            if not model_config.superres.generator:
                raise TrainingError(
                    "training.no_superres_generator",
                    "stage 2 trains the SR's generator, which this config does not run "
                    "(superres.generator is false: the served frame is the render's detail image); "
                    "export the stage-1 run instead",
                )
            self.network.requires_grad_(False)
            self.network.superres.requires_grad_(True)
            trained = self.network.superres
            self.network.freeze_in_eval({"superres"})
            d_config = (
                tiny_discriminator_config if config.profile == "tiny" else paper_discriminator_config
            )(6)
            if d_config.size != model_config.superres.out_size:
                d_config = dataclasses.replace(d_config, size=model_config.superres.out_size)
            self.discriminator = StyleGAN2Discriminator(d_config)
            self.d_optimizer = torch.optim.Adam(
                self.discriminator.parameters(), lr=config.d_lr, betas=config.betas
            )
            self.r1 = R1Config(gamma=config.r1_gamma, every=config.r1_every)
        else:
            raise TrainingError("training.bad_stage", f"stage must be 1 or 2, got {config.stage}")
        self.trained_parameters = [p for p in trained.parameters() if p.requires_grad]
        gate_head = getattr(self.network.expression, "gate", None)
        fast = {id(p) for p in gate_head.parameters()} if gate_head is not None else set()
        groups = [{"params": [p for p in self.trained_parameters if id(p) not in fast]}]
        if fast & {id(p) for p in self.trained_parameters}:
            groups.append(
                {
                    "params": [p for p in self.trained_parameters if id(p) in fast],
                    "lr": config.lr * config.gate_lr_multiplier,
                }
            )
        self.optimizer = torch.optim.Adam(groups, lr=config.lr, betas=config.betas)
        self.trained_module: nn.Module = trained
        self.ddp_discriminator: nn.Module | None = self.discriminator
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.trained_module = DistributedDataParallel(trained, find_unused_parameters=True)
            if self.discriminator is not None:
                self.ddp_discriminator = DistributedDataParallel(
                    self.discriminator, find_unused_parameters=True
                )
        if resume:
            self.load_state(self.state_path)
        self._csv_path = self.run_dir / f"log_stage{config.stage}.csv"
        # Four fixed pairs spread over the dataset (different identities) for the sample grids.
        n = len(self.dataset)
        self._fixed_samples = collate([self.dataset[(i * n) // 4] for i in range(min(4, n))])

    # --- bookkeeping ---------------------------------------------------------------------------

    def say(self, message: str) -> None:
        if not self.dist.is_main:
            return
        line = f"[train {time.strftime('%H:%M:%S')}] {message}"
        print(line, file=self._log_file or sys.stderr, flush=True)

    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.pt"

    def _load_init(self, path: str | Path) -> None:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise TrainingError("training.init_missing", f"no checkpoint or state at {path}") from None
        except Exception as exc:  # torch raises several types for foreign / truncated files
            raise TrainingError("training.init_unreadable", f"{path}: unreadable ({exc})") from exc
        if isinstance(payload, dict) and payload.get("format") == STATE_FORMAT:
            self.network.load_state_dict(payload["model"])
            self.step = int(payload["step"])
        else:
            loaded = load_checkpoint(path, expected_config=self.network.config)
            self.network.load_state_dict(loaded.state_dict())
            self.step = int(read_checkpoint(path).get("extra", {}).get("step", 0))
        self.say(f"initialised from {path} at step {self.step}")

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "train_config": dataclasses.asdict(self.config),
            "model_config": config_to_dict(self.network.config),
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "d_steps": self.d_steps,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_rng_state(),
                "python": random.getstate(),
            },
        }
        if self.discriminator is not None and self.d_optimizer is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["d_optimizer"] = self.d_optimizer.state_dict()
        return state

    def save_state(self, path: Path | None = None) -> None:
        if not self.dist.is_main:
            return
        path = path or self.state_path
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_state(self, path: Path) -> None:
        if not path.is_file():
            raise TrainingError("training.no_state", f"nothing to resume: {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for foreign / truncated files
            raise TrainingError("training.bad_state", f"{path}: unreadable training state ({exc})") from exc
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise TrainingError("training.bad_state", f"{path} is not a {STATE_FORMAT} file")
        if config_from_dict(state["model_config"]) != self.network.config:
            raise TrainingError("training.state_mismatch", f"{path} was written by a different model config")
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.discriminator is not None:
            if "discriminator" not in state:
                # A stage-1 state resumed as stage 2: the discriminator starts fresh.
                self.say("state has no discriminator; stage 2 starts a new one")
            else:
                self.discriminator.load_state_dict(state["discriminator"])
                assert self.d_optimizer is not None
                self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.step = int(state["step"])
        self.d_steps = int(state.get("d_steps", 0))
        torch.set_rng_state(state["rng"]["torch"])
        _set_numpy_rng_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self.say(f"resumed from {path} at step {self.step}")

    def export(self, path: str | Path, extra: dict[str, Any] | None = None) -> str:
        """Write the platform checkpoint (shared.model.checkpoint format); returns its model version."""
        info = {
            "step": self.step,
            "stage": self.config.stage,
            "train_config": dataclasses.asdict(self.config),
        }
        info.update(extra or {})
        return save_checkpoint(self.network, path, extra=json.loads(json.dumps(info, default=str)))

    # --- one step ------------------------------------------------------------------------------

    def _samples(self, step: int) -> dict[str, Tensor]:
        indices = sample_indices(self.config, self.dist.rank, step, len(self.dataset))
        return collate([self.dataset[i] for i in indices])

    def stage1_step(self, samples: dict[str, Tensor]) -> StepResult:
        step, config = self.step, self.config
        kind = step_kind(step, config)
        generator = torch.Generator().manual_seed(_seed_for(config, self.dist.rank, step, 2))
        batch, target = make_batch(
            samples, kind, self.network, config, step, expression_supersample=self.expression_supersample
        )
        out = self.trained_module(
            batch, generator=generator, intermediate_renders=False, return_features=False
        )
        total, parts = stage1_loss(
            out, samples, target, kind, step, config, self.perceptual, self.network, generator
        )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trained_parameters, config.grad_clip)
        self.optimizer.step()
        parts.update(total=float(total.detach()), grad_norm=float(grad_norm.detach()))
        return StepResult(step, kind, parts)

    def stage2_step(self, samples: dict[str, Tensor]) -> StepResult:
        step, config = self.step, self.config
        assert (
            self.discriminator is not None
            and self.d_optimizer is not None
            and self.ddp_discriminator is not None
        )
        kind = "full_src" if step % 2 == 0 else "full_tar"
        generator = torch.Generator().manual_seed(_seed_for(config, self.dist.rank, step, 3))
        batch, target = make_batch(
            samples,
            kind,
            self.network,
            dataclasses.replace(config, appearance_from=0),
            step,
            expression_supersample=self.expression_supersample,
        )
        with torch.no_grad():
            low = self.network(
                batch,
                deterministic=True,
                intermediate_renders=False,
                return_features=False,
                inference=True,
            ).final.rgb
        sr = self.trained_module(low, generator=generator)
        size = sr.shape[-1]
        real = resize_image(target, size)
        up_low = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
        # Generator (SR) update.
        self.discriminator.requires_grad_(False)
        total, parts = stage2_generator_loss(
            sr, real, up_low, self.perceptual, self.ddp_discriminator, config.gan_weight
        )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trained_parameters, config.grad_clip)
        self.optimizer.step()
        # Discriminator update (every iteration in stage 2), lazy R1.
        self.discriminator.requires_grad_(True)
        self.d_steps += 1
        d_loss, d_parts = stage2_discriminator_loss(
            real, sr.detach(), up_low, self.ddp_discriminator, self.r1, self.d_steps
        )
        parts.update(d_parts)
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optimizer.step()
        parts.update(total=float(total.detach()), grad_norm=float(grad_norm.detach()))
        return StepResult(step, "sr", parts)

    def train_step(self) -> StepResult:
        # Per-step seeding of the global RNG (SegFormer drop-path) keeps resumed runs identical.
        torch.manual_seed(_seed_for(self.config, self.dist.rank, self.step, 4))
        samples = self._samples(self.step)
        self.network.train()  # stage 2: the frozen parts stay in eval (freeze_in_eval)
        if self.discriminator is not None:
            self.discriminator.train()
        result = self.stage1_step(samples) if self.config.stage == 1 else self.stage2_step(samples)
        self.step += 1
        return result

    # --- the loop ----------------------------------------------------------------------------------

    def _steps(self) -> Iterator[int]:
        while self.config.max_steps is None or self.step < self.config.max_steps:
            yield self.step

    def _past_deadline(self, deadline: float) -> bool:
        """Whether to stop for ``max_minutes``. Under DDP every rank must stop at the same step (a
        rank that leaves early strands the others in their next all-reduce), so the ranks agree:
        any rank past its deadline stops all of them."""
        if deadline == math.inf:
            return False
        past = time.perf_counter() >= deadline
        if self.dist.world_size == 1:
            return past
        flag = torch.tensor([int(past)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def fit(self) -> dict[str, Any]:
        config = self.config
        start = time.perf_counter()
        deadline = start + config.max_minutes * 60 if config.max_minutes else math.inf
        first_step = self.step
        bar = None
        if self.progress:
            from tqdm import tqdm

            total = (config.max_steps - self.step) if config.max_steps is not None else None
            bar = tqdm(
                total=total,
                desc=f"stage {config.stage}",
                mininterval=5.0,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        new_file = not self._csv_path.exists()
        csv_file = self._csv_path.open("a", newline="") if self.dist.is_main else None
        writer = csv.DictWriter(csv_file, fieldnames=CSV_FIELDS) if csv_file else None
        if writer is not None and new_file:
            writer.writeheader()
        self.say(
            f"stage {config.stage} ({config.variant}) from step {self.step}: profile {config.profile}, "
            f"batch {config.batch_size} x {self.dist.world_size} process(es), lr {config.lr}, "
            f"max_steps {config.max_steps}, max_minutes {config.max_minutes}"
        )
        stopped_by = "max_steps"
        try:
            for _ in self._steps():
                if self._past_deadline(deadline):
                    stopped_by = "max_minutes"
                    break
                result = self.train_step()
                elapsed = time.perf_counter() - start
                rate = (self.step - first_step) / max(elapsed, 1e-9)
                if writer is not None and (result.step % config.log_every == 0):
                    row = {
                        k: (round(v, 6) if isinstance(v, float) else v)
                        for k, v in result.losses.items()
                        if k in CSV_FIELDS
                    }
                    writer.writerow({"step": result.step, "stage": config.stage, "kind": result.kind, **row,
                                     "seconds": round(elapsed, 2), "it_per_s": round(rate, 4)})  # fmt: skip
                    assert csv_file is not None
                    csv_file.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        {"kind": result.kind, "loss": f"{result.losses['total']:.4f}", "it/s": f"{rate:.3f}"}
                    )
                if self.dist.is_main and config.sample_every and self.step % config.sample_every == 0:
                    self.save_samples()
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.save_state()
        finally:
            if bar is not None:
                bar.close()
            if csv_file is not None:
                csv_file.close()
        elapsed = time.perf_counter() - start
        self.save_state()
        if self.dist.is_main:
            self.save_samples()
        steps = self.step - first_step
        summary = {
            "stage": config.stage,
            "variant": config.variant,
            "steps": steps,
            "final_step": self.step,
            "seconds": round(elapsed, 1),
            "it_per_s": round(steps / max(elapsed, 1e-9), 4),
            "stopped_by": stopped_by,
            "world_size": self.dist.world_size,
        }
        self.say(json.dumps(summary))
        return summary

    # --- sample grids -------------------------------------------------------------------------------

    @torch.no_grad()
    def render_grid(self, samples: dict[str, Tensor]) -> Tensor:
        """Rows: source | target | I_c | I_{c+e} | I_{c+e+p} | SR (low-res renders upsampled)."""
        self.network.eval()
        config = self.config
        batch, target = make_batch(
            samples, "full_tar", self.network, config, max(self.step, config.appearance_from)
        )
        batch.use_expression = self.step >= config.expression_from or config.stage == 2
        batch.use_appearance = self.network.appearance is not None and (
            self.step >= config.appearance_from or config.stage == 2
        )
        batch.use_superres = True
        out = self.network(batch, deterministic=True)
        size = samples["source_image"].shape[-1]

        def up(x: Tensor | None) -> Tensor:
            if x is None:
                return torch.full_like(samples["source_image"], -1.0)
            return F.interpolate(x, size=size, mode="nearest")

        columns = [
            samples["source_image"],
            target,
            up(out.canonical),
            up(out.canonical_expression),
            up(out.full),
            up(out.superres),
        ]
        self.network.train()
        return torch.cat([torch.cat(list(col), dim=1) for col in columns], dim=2)  # (3, B*S, 6*S)

    def save_samples(self) -> Path:
        from PIL import Image

        grid = self.render_grid(self._fixed_samples)
        array = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        out_dir = self.run_dir / "samples"
        out_dir.mkdir(exist_ok=True)
        path = out_dir / f"stage{self.config.stage}_step{self.step:06d}.png"
        Image.fromarray(array).save(path)
        return path
