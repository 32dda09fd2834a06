"""Evaluation of a checkpoint (paper §4.2 protocol, adapted to what runs offline).

On the synthetic holdout (identities never seen in training):

- **3D portrait reconstruction**: the source re-rendered at its own camera with its own
  expression (I_exp(α, β_s)); L1 / PSNR / SSIM against the source image.
- **Same-identity reenactment**: the source driven by the target's expression render and camera;
  L1 / PSNR / SSIM against the ground-truth target, and AKD: mean distance between dlib's 68
  landmarks on the output and on the ground truth, both predicted inside the box of the morphable
  model's projected target landmarks (synthetic heads are not always found by dlib's HOG detector).
- **Cross-identity reenactment** (no ground truth): source i driven by the driver of another
  identity (I_exp(α_source, β_driver), driver camera). CSIM = cosine of dlib 128-d face
  descriptors between output and source (NOT ArcFace: not comparable with published CSIM);
  AED / APD: mean |β| and |(yaw, pitch, roll)| differences between 3DMM fits
  (shared.face.fit.LandmarkFitter) of the output's and the driver's dlib landmarks.

Image metrics are reported both for the served output (super-resolved, image_size²) and the
low-resolution volume render against the area-downsampled ground truth.

LPIPS (``shared/training/lpips.py``) and FID (``shared/training/fid.py``) need pretrained weights
that are never downloaded: given as local files (``PretrainedMetrics.from_paths``; CLI
``--lpips-backbone-weights`` + ``--lpips-lin-weights`` [+ ``--lpips-net``], ``--fid-weights``)
they are computed, otherwise reported as null with the reason. LPIPS: per pair, for the served
output and the low-res render (renders under 64² are compared after bilinear upsampling of both to
64²). FID: served outputs against ground-truth images — reconstruction vs the sources,
same-identity reenactment vs the targets, cross-identity reenactment vs all ground-truth images
of the evaluated pairs (sources and targets).
The real-data folder format (``shared/training/realdata.py``) gets the reconstruction metrics.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from shared.face.fit import LandmarkFitter, head_pose_angles
from shared.face.morphable import load_procedural_model
from shared.face.render import render_expression
from shared.model.checkpoint import load_checkpoint
from shared.model.network import GOHANetwork
from shared.training import metrics as M
from shared.training.errors import TrainingError
from shared.training.fid import FIDInceptionV3, fid_from_features, inception_features
from shared.training.lpips import LPIPS, NETS, lpips_at_least
from shared.training.synthetic import PairDataset, collate

LPIPS_NOT_GIVEN = "pretrained weights not available: pass --lpips-backbone-weights and --lpips-lin-weights"
FID_NOT_GIVEN = "pretrained weights not available: pass --fid-weights"


def _means_by_suffix(acc: _Accumulator, suffix: str) -> dict[str, float]:
    """{task: mean} of the accumulated values named ``<task><suffix>``."""
    return {name.removesuffix(suffix): acc.mean(name) for name in sorted(acc.values) if name.endswith(suffix)}


@dataclass
class PretrainedMetrics:
    """The optional networks of LPIPS and FID, loaded from local files (None: not computed)."""

    lpips: LPIPS | None = None
    inception: FIDInceptionV3 | None = None

    @classmethod
    def from_paths(
        cls,
        *,
        lpips_backbone: str | os.PathLike[str] | None = None,
        lpips_lin: str | os.PathLike[str] | None = None,
        lpips_net: str = "alex",
        fid_weights: str | os.PathLike[str] | None = None,
    ) -> PretrainedMetrics:
        if (lpips_backbone is None) != (lpips_lin is None):
            raise TrainingError(
                "evaluate.lpips_weights_incomplete",
                "LPIPS needs both files: --lpips-backbone-weights (torchvision ImageNet "
                f"{'alexnet' if lpips_net == 'alex' else 'vgg16'}) and --lpips-lin-weights (lpips v0.1)",
            )
        if lpips_net not in NETS:
            raise TrainingError("evaluate.bad_option", f"--lpips-net must be one of {list(NETS)}")
        lpips = None
        if lpips_backbone is not None and lpips_lin is not None:
            lpips = LPIPS.from_files(lpips_backbone, lpips_lin, lpips_net)
        inception = FIDInceptionV3.from_file(fid_weights) if fid_weights is not None else None
        return cls(lpips=lpips, inception=inception)

    def report_fields(self, acc: _Accumulator, features: _FeatureSets) -> dict[str, Any]:
        """``lpips`` / ``fid`` / ``not_computed`` entries of a report."""
        fields: dict[str, Any] = {"lpips": None, "fid": None, "not_computed": {}}
        if self.lpips is None:
            fields["not_computed"]["lpips"] = LPIPS_NOT_GIVEN
        else:
            fields["lpips"] = {
                "net": self.lpips.net_name,
                **{f"{k}_weights": v for k, v in self.lpips.sources.items()},
                **_means_by_suffix(acc, "_lpips"),
            }
        if self.inception is None:
            fields["not_computed"]["fid"] = FID_NOT_GIVEN
        else:
            fields["fid"] = {
                "weights": self.inception.source,
                **_means_by_suffix(acc, "_fid"),
                "samples": features.counts(),
            }
        return fields


class _FeatureSets:
    """Inception features of named image sets, for FID at the end of an evaluation."""

    def __init__(self, model: FIDInceptionV3 | None) -> None:
        self.model = model
        self.sets: dict[str, list[np.ndarray]] = {}

    def add(self, name: str, images: Tensor) -> None:
        if self.model is not None and images.shape[0]:
            self.sets.setdefault(name, []).append(inception_features(self.model, images))

    def counts(self) -> dict[str, int]:
        return {name: sum(len(f) for f in parts) for name, parts in sorted(self.sets.items())}

    def fid(self, acc: _Accumulator, name: str, fake: str, reals: tuple[str, ...]) -> None:
        """Adds ``{name}_fid`` when both sides have at least 2 samples (a covariance needs 2)."""
        if self.model is None:
            return
        a = list(self.sets.get(fake, []))
        b = [f for real in reals for f in self.sets.get(real, [])]
        if sum(len(f) for f in a) < 2 or sum(len(f) for f in b) < 2:
            return
        acc.add(f"{name}_fid", fid_from_features(np.concatenate(a), np.concatenate(b)))


def _unit(x: Tensor) -> Tensor:
    return ((x.clamp(-1, 1) + 1) * 0.5).float()


def _uint8(x: Tensor, size: int | None = None) -> np.ndarray:
    """(3, H, W) in [-1, 1] → (H', W', 3) uint8, optionally resized (dlib needs some pixels)."""
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def _upsample(x: Tensor, size: int) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _Accumulator:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add(self, name: str, values: Tensor | list[float] | float) -> None:
        if isinstance(values, Tensor):
            values = values.detach().flatten().tolist()
        elif isinstance(values, float | int):
            values = [float(values)]
        self.values.setdefault(name, []).extend(float(v) for v in values)

    def mean(self, name: str) -> float | None:
        vals = [v for v in self.values.get(name, []) if math.isfinite(v)]
        return round(float(np.mean(vals)), 4) if vals else None

    def count(self, name: str) -> int:
        return len(self.values.get(name, []))


def image_metrics(
    acc: _Accumulator, prefix: str, pred: Tensor, target: Tensor, lpips: LPIPS | None = None
) -> None:
    """pred / target in [-1, 1]; target resized (area) to pred's size. ``lpips`` adds
    ``{prefix}_lpips`` (images under 64² upsampled to 64² for it)."""
    if target.shape[-1] != pred.shape[-1]:
        target = F.adaptive_avg_pool2d(target, pred.shape[-1])
    p, t = _unit(pred), _unit(target)
    acc.add(f"{prefix}_l1", M.l1(p, t))
    acc.add(f"{prefix}_psnr", M.psnr(p, t))
    acc.add(f"{prefix}_ssim", M.ssim(p, t))
    if lpips is not None:
        with torch.no_grad():
            acc.add(f"{prefix}_lpips", lpips_at_least(lpips, pred.clamp(-1, 1).float(), target.float()))


@torch.no_grad()
def run_pairs(
    network: GOHANetwork,
    source: Tensor,
    keep: Tensor,
    source_camera: Tensor,
    expression: Tensor,
    coefficients: Tensor,
    camera: Tensor,
) -> tuple[Tensor, Tensor]:
    """(frames, low_res) of batch-aligned pairs: avatar b driven by expression b at camera b."""
    avatar = network.reconstruct(source, keep, source_camera)
    out = network.animate(avatar, expression, camera, expression_coefficients=coefficients)
    assert out.frames is not None
    return out.frames, out.low_res


def evaluate_synthetic(
    checkpoint: str | Path,
    data_root: str | Path,
    *,
    split: str = "holdout",
    max_pairs: int | None = None,
    batch_size: int = 8,
    face_metrics: bool = True,
    face_metrics_on: str = "sr",
    network: GOHANetwork | None = None,
    pretrained: PretrainedMetrics | None = None,
) -> dict[str, Any]:
    """``face_metrics_on``: "sr" (the served output) or "lowres" (the volume render, upsampled).
    ``pretrained``: LPIPS / FID networks (``PretrainedMetrics.from_paths``); None: not computed."""
    if face_metrics_on not in ("sr", "lowres"):
        raise TrainingError("evaluate.bad_option", "face_metrics_on must be 'sr' or 'lowres'")
    start = time.perf_counter()
    network = network or load_checkpoint(checkpoint)
    network.eval()
    dataset = PairDataset(data_root, split)
    count = len(dataset) if max_pairs is None else min(max_pairs, len(dataset))
    if count < 1:
        raise TrainingError("evaluate.empty", f"no pairs in the {split} split of {data_root}")
    model = load_procedural_model()
    size = network.config.image_size
    acc = _Accumulator()
    pretrained = pretrained or PretrainedMetrics()
    lp = pretrained.lpips
    features = _FeatureSets(pretrained.inception)
    dlib_metrics = M.DlibFaceMetrics() if face_metrics else None
    fitter = LandmarkFitter(model) if face_metrics else None
    dlib_size = max(256, size)
    scale = dlib_size / size
    for start_index in range(0, count, batch_size):
        samples = collate([dataset[i] for i in range(start_index, min(count, start_index + batch_size))])
        b = samples["source_image"].shape[0]
        src, keep, src_cam = samples["source_image"], samples["source_keep"], samples["source_camera"]
        # Reconstruction: own camera, own expression.
        exp_src = render_expression(model, samples["alpha"], samples["source_beta"], size, supersample=2)
        frames, low = run_pairs(network, src, keep, src_cam, exp_src, samples["source_beta"], src_cam)
        image_metrics(acc, "recon", frames, src, lp)
        image_metrics(acc, "recon_lowres", low, src, lp)
        features.add("recon_output", frames)
        features.add("source_images", src)
        # Same-identity reenactment.
        frames, low = run_pairs(
            network,
            src,
            keep,
            src_cam,
            samples["expression_image"],
            samples["target_beta"],
            samples["target_camera"],
        )
        image_metrics(acc, "reenact", frames, samples["target_image"], lp)
        image_metrics(acc, "reenact_lowres", low, samples["target_image"], lp)
        features.add("reenact_output", frames)
        features.add("target_images", samples["target_image"])
        if face_metrics_on == "lowres":
            frames = _upsample(low, size)
        if dlib_metrics is not None:
            for i in range(b):
                box = M.box_from_landmarks(samples["target_landmarks"][i].numpy() * scale)
                pred_lm = dlib_metrics.landmarks(_uint8(frames[i], dlib_size), box)
                gt_lm = dlib_metrics.landmarks(_uint8(samples["target_image"][i], dlib_size), box)
                acc.add("reenact_akd", M.keypoint_distance(pred_lm, gt_lm) / scale)
                acc.add(
                    "akd_floor_dlib_vs_model",
                    M.keypoint_distance(gt_lm / scale, samples["target_landmarks"][i].numpy()),
                )
        # Cross-identity: driver = the next pair of the batch with another identity.
        ids = samples["identity"].tolist()
        drivers = [
            next((j for j in [(i + k) % b for k in range(1, b)] if ids[j] != ids[i]), -1) for i in range(b)
        ]
        chosen = [i for i in range(b) if drivers[i] >= 0]
        if not chosen:
            continue
        d = torch.tensor([drivers[i] for i in chosen])
        c = torch.tensor(chosen)
        exp_cross = render_expression(
            model, samples["alpha"][c], samples["target_beta"][d], size, supersample=2
        )
        frames, _ = run_pairs(
            network,
            src[c],
            keep[c],
            src_cam[c],
            exp_cross,
            samples["target_beta"][d],
            samples["target_camera"][d],
        )
        features.add("cross_output", frames)
        if dlib_metrics is None or fitter is None:
            continue
        for k, (i, j) in enumerate(zip(c.tolist(), d.tolist())):
            src_box = M.box_from_landmarks(samples["source_landmarks"][i].numpy() * scale)
            drv_box = M.box_from_landmarks(samples["target_landmarks"][j].numpy() * scale)
            out_img = _uint8(frames[k], dlib_size)
            acc.add(
                "cross_csim",
                M.cosine_similarity(
                    dlib_metrics.descriptor(out_img, drv_box),
                    dlib_metrics.descriptor(_uint8(src[i], dlib_size), src_box),
                ),
            )
            out_lm = dlib_metrics.landmarks(out_img, drv_box) / dlib_size
            drv_lm = (
                dlib_metrics.landmarks(_uint8(samples["target_image"][j], dlib_size), drv_box) / dlib_size
            )
            fits = fitter.fit_portrait(np.stack([out_lm]))
            fit_drv = fitter.fit_portrait(np.stack([drv_lm]))
            acc.add("cross_aed", float((fits.beta[0] - fit_drv.beta[0]).abs().mean()))
            angles = head_pose_angles(torch.stack([fits.rotation[0], fit_drv.rotation[0]]).double())
            acc.add("cross_apd_deg", float((angles[0] - angles[1]).abs().mean()))
    features.fid(acc, "recon", "recon_output", ("source_images",))
    features.fid(acc, "reenact", "reenact_output", ("target_images",))
    features.fid(acc, "cross", "cross_output", ("source_images", "target_images"))
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "model_version": network.version_label,
        "data": str(data_root),
        "split": split,
        "pairs": count,
        "image_size": size,
        "render_size": network.config.renderer.resolution,
        "metrics": {name: acc.mean(name) for name in sorted(acc.values)},
        "counts": {name: acc.count(name) for name in sorted(acc.values)},
        **pretrained.report_fields(acc, features),
        "notes": [
            "recon/reenact: served output (super-resolved) vs ground truth; *_lowres: volume render vs area-downsampled ground truth",
            "AKD: dlib 68 landmarks of output vs ground truth inside the model-projected face box, in image_size pixels",
            "CSIM: cosine of dlib 128-d face descriptors (NOT ArcFace)",
            "AED/APD: 3DMM (procedural model) fits to dlib landmarks of output vs driver; APD in degrees",
            "LPIPS: per pair; *_lowres renders under 64² compared after bilinear upsampling to 64²",
            "FID (served output, 2048-d Inception pool features): recon vs sources, reenact vs targets, "
            "cross vs sources+targets; biased upwards at small sample counts, compare at equal counts",
        ],
        "face_metrics_on": face_metrics_on,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return report


def to_markdown(report: dict[str, Any], title: str = "Evaluation") -> str:
    m = report["metrics"]

    def f(name: str) -> str:
        v = m.get(name)
        return "–" if v is None else f"{v:.4f}"

    def rows() -> list[str]:
        # task | L1 | LPIPS | PSNR | SSIM | FID | AKD | CSIM | AED | APD (the paper's column order)
        spec = [
            ("3D portrait reconstruction (SR output)", "recon", ()),
            ("3D portrait reconstruction (low-res render)", "recon_lowres", ()),
            ("same-identity reenactment (SR output)", "reenact", ("reenact_akd",)),
            ("same-identity reenactment (low-res render)", "reenact_lowres", ()),
        ]
        out = []
        for label, p, extra in spec:
            fid = f(f"{p}_fid") if not p.endswith("lowres") else ""
            akd = f(extra[0]) if extra else ""
            out.append(
                f"| {label} | {f(p + '_l1')} | {f(p + '_lpips')} | {f(p + '_psnr')} | {f(p + '_ssim')} "
                f"| {fid} | {akd} | | | |"
            )
        out.append(
            f"| cross-identity reenactment | | | | | {f('cross_fid')} | | {f('cross_csim')} "
            f"| {f('cross_aed')} | {f('cross_apd_deg')} |"
        )
        return out

    not_computed = report.get("not_computed", {})
    pretrained_lines = []
    lp, fid = report.get("lpips"), report.get("fid")
    if lp:
        pretrained_lines.append(
            f"LPIPS: {lp['net']} backbone `{lp.get('backbone_weights')}`, lin `{lp.get('lin_weights')}`."
        )
    else:
        pretrained_lines.append(f"LPIPS: not computed ({not_computed.get('lpips', 'no weights given')}).")
    if fid:
        counts = ", ".join(f"{k} {v}" for k, v in fid.get("samples", {}).items())
        pretrained_lines.append(f"FID: Inception weights `{fid.get('weights')}`; samples: {counts}.")
    else:
        pretrained_lines.append(f"FID: not computed ({not_computed.get('fid', 'no weights given')}).")
    lines = [
        f"# {title}",
        "",
        f"- checkpoint: `{report['checkpoint']}` ({report['model_version']})",
        f"- data: `{report['data']}` split `{report['split']}`, {report['pairs']} pairs, "
        f"output {report['image_size']}², render {report['render_size']}²",
        "",
        "| task | L1 ↓ | LPIPS ↓ | PSNR ↑ | SSIM ↑ | FID ↓ | AKD ↓ | CSIM ↑ | AED ↓ | APD (°) ↓ |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows(),
        "",
        f"AKD noise floor (dlib on ground truth vs projected model landmarks): {f('akd_floor_dlib_vs_model')} px.",
        *pretrained_lines,
        "",
        *[f"- {note}" for note in report.get("notes", [])],
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | Path, name: str = "evaluation") -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(report, indent=2))
    md_path.write_text(to_markdown(report))
    return json_path, md_path


@torch.no_grad()
def evaluate_real(
    checkpoint: str | Path,
    folder: str | Path,
    *,
    max_items: int | None = None,
    batch_size: int = 8,
    network: GOHANetwork | None = None,
    pretrained: PretrainedMetrics | None = None,
) -> dict[str, Any]:
    """Reconstruction metrics on a real-data folder (each crop re-rendered at its fitted camera)."""
    from shared.face.morphable import load_morphable_model
    from shared.training.realdata import RealFolder

    start = time.perf_counter()
    network = network or load_checkpoint(checkpoint)
    network.eval()
    data = RealFolder(folder)
    if data.image_size != network.config.image_size:
        raise TrainingError(
            "evaluate.size_mismatch",
            f"folder crops are {data.image_size}², the model needs {network.config.image_size}²",
        )
    count = len(data) if max_items is None else min(max_items, len(data))
    if count < 1:
        raise TrainingError("evaluate.empty", f"no items in {folder}")
    model = load_morphable_model(
        None
        if data.meta.get("morphable_model", "procedural-v1").startswith("procedural")
        else data.meta["morphable_model"]
    )
    size = network.config.image_size
    acc = _Accumulator()
    pretrained = pretrained or PretrainedMetrics()
    features = _FeatureSets(pretrained.inception)
    for first in range(0, count, batch_size):
        s = collate([data[i] for i in range(first, min(count, first + batch_size))])
        expression = render_expression(model, s["alpha"], s["source_beta"], size, supersample=2)
        frames, low = run_pairs(
            network,
            s["source_image"],
            s["source_keep"],
            s["source_camera"],
            expression,
            s["source_beta"],
            s["source_camera"],
        )
        image_metrics(acc, "recon", frames, s["source_image"], pretrained.lpips)
        image_metrics(acc, "recon_lowres", low, s["source_image"], pretrained.lpips)
        features.add("recon_output", frames)
        features.add("source_images", s["source_image"])
    features.fid(acc, "recon", "recon_output", ("source_images",))
    fields = pretrained.report_fields(acc, features)
    fields["not_computed"]["reenactment"] = "real folders have no paired targets"
    return {
        "checkpoint": str(checkpoint),
        "model_version": network.version_label,
        "data": str(folder),
        "split": "real",
        "pairs": count,
        "image_size": size,
        "render_size": network.config.renderer.resolution,
        "metrics": {name: acc.mean(name) for name in sorted(acc.values)},
        "counts": {name: acc.count(name) for name in sorted(acc.values)},
        **fields,
        "notes": ["recon: each crop re-rendered at its fitted camera with its fitted expression"],
        "seconds": round(time.perf_counter() - start, 1),
    }
