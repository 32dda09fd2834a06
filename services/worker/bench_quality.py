"""Quality benchmark of the served output (``make bench-quality``).

    python -m services.worker.bench_quality [--checkpoint models/goha-tiny.pt] [--frames-dir runs/quality]

Runs the real worker pipeline (``ReenactmentPipeline`` built by ``services.worker.context.build_context``
on the embedded backends: SQLite, local storage, the checkpoint in-process) on the scikit-image
astronaut portrait driven by two generated clips: the astronaut's own talking clip
(``shared.media.samples``; in-plane sway, the jaw dropping and the lips parting) and a synthetic holdout person turning
its head (yaw ±0.45 rad), talking and blinking on a plain background (``synthetic_driver_frame``; the
only generated driver that turns, so ``yaw_corr`` has something to follow). It decodes each output
MP4 and measures it against its driver and the portrait. The top-level metrics pool the sampled
frames of both jobs; ``drivers`` has each clip's own. It also evaluates the checkpoint on a
deterministic regenerated subset of the synthetic holdout (``shared.training.evaluate``), so nothing
has to be generated beforehand.

The LAST stdout line is JSON. Definitions (others compare against them; keep them exactly):

- Sampling: ``samples`` (>= 25 per clip) output frames evenly spaced over each clip, each with the
  driving frame of the same index (the job keeps the driver's frame rate).
- ``face_rate``: fraction of sampled output frames in which dlib's HOG frontal face detector, upsampling
  once (``detector(image, 1)``), finds a face.
- ``id_dist``: mean Euclidean distance between dlib's 128-d face descriptor
  (face-recognition-models' ``dlib_face_recognition_resnet_model_v1.dat`` on the 68-point shape
  predictor's landmarks) of the output face and of the portrait's face, over the frames with a face
  (same person: < 0.6). null when no output frame has a face.
- ``mouth_corr``: Pearson r, driver vs output, of the inner-lip gap over the face height. Inner-lip gap
  (0-based iBUG-68 indices) = mean over the pairs (61, 67), (62, 66), (63, 65) of ``y[lower] - y[upper]``
  (upper inner lip 61-63, lower inner lip 67-65); face height = distance from landmark 27 (nose bridge
  top) to landmark 8 (chin). Over the sampled frames where both have a face.
- ``yaw_corr``: Pearson r, driver vs output, of ``(x[30] - x_eyes) / iod``: the nose tip's horizontal
  offset from the eyes' centre, ``x_eyes`` = mean of the two eye centres (means of 36-41 and 42-47), over
  the inter-ocular distance ``iod`` (distance between those eye centres).
- ``recon_psnr`` / ``reenact_psnr``: ``shared.training.evaluate.evaluate_synthetic`` on the regenerated
  holdout subset (served, super-resolved output vs ground truth; dB). ``copy_source_psnr``: the same
  pairs with the source image given as the reenactment's answer (the baseline a model must beat).
- ``animate_ms_per_frame``: in-process ``animate`` at 8 frames per call (best of 3), the network alone.
  ``job_animate_ms_per_frame``: the job's own animate stage per frame (under the job's load).

Side-by-side PNGs (portrait | driver | output) of a few sampled frames go to ``--frames-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

LOGGER = logging.getLogger("services.worker.bench_quality")
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT = ROOT / "models" / "goha-tiny.pt"
DEFAULT_FRAMES_DIR = ROOT / "runs" / "quality"
MIN_SAMPLES = 25
# The synthetic holdout as `python -m shared.training generate-data` writes it (seed 0): the bench
# regenerates its first identities and pairs, the same images as the full holdout's.
HOLDOUT_SEED = 0

# 0-based iBUG-68 indices.
UPPER_INNER_LIP = (61, 62, 63)
LOWER_INNER_LIP = (67, 66, 65)  # paired with the upper ones in this order
NOSE_BRIDGE_TOP, CHIN, NOSE_TIP = 27, 8, 30
RIGHT_EYE, LEFT_EYE = slice(36, 42), slice(42, 48)


# --- metric functions (pure, unit-tested) ------------------------------------------------------------


def inner_lip_gap(landmarks: np.ndarray) -> float:
    """Mean vertical inner-lip opening over the face height (27 -> 8) of (68, 2) landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64)
    gap = float(
        np.mean([lm[lower, 1] - lm[upper, 1] for upper, lower in zip(UPPER_INNER_LIP, LOWER_INNER_LIP)])
    )
    height = float(np.linalg.norm(lm[CHIN] - lm[NOSE_BRIDGE_TOP]))
    return gap / height if height > 0 else float("nan")


def nose_yaw(landmarks: np.ndarray) -> float:
    """Nose tip's horizontal offset from the eyes' centre over the inter-ocular distance."""
    lm = np.asarray(landmarks, dtype=np.float64)
    right, left = lm[RIGHT_EYE].mean(axis=0), lm[LEFT_EYE].mean(axis=0)
    iod = float(np.linalg.norm(left - right))
    return float(lm[NOSE_TIP, 0] - (right[0] + left[0]) / 2.0) / iod if iod > 0 else float("nan")


def pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Pearson r of paired finite values; None with fewer than 3 pairs or a constant series."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def descriptor_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def sample_indices(total: int, samples: int) -> list[int]:
    """``samples`` frame indices evenly spaced over ``total`` frames, first and last included."""
    if total < 1:
        return []
    count = min(total, max(1, samples))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, count)})


class FaceMeasure:
    """dlib's HOG detector (upsample 1), 68 landmarks and 128-d descriptors of one image at a time."""

    def __init__(self) -> None:
        import dlib

        from shared.training.metrics import DlibFaceMetrics

        self.detector = dlib.get_frontal_face_detector()
        self.metrics = DlibFaceMetrics()

    def face(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(landmarks (68, 2), descriptor (128,)) of the largest face found, or None."""
        image = np.ascontiguousarray(image)
        found = self.detector(image, 1)
        if not found:
            return None
        best = max(found, key=lambda r: r.width() * r.height())
        box = np.array([best.left(), best.top(), best.right(), best.bottom()], dtype=np.float64)
        return self.metrics.landmarks(image, box), self.metrics.descriptor(image, box)


def video_metrics(
    portrait: np.ndarray,
    driver_frames: Sequence[np.ndarray],
    output_frames: Sequence[np.ndarray],
    measure: FaceMeasure | None = None,
) -> dict[str, Any]:
    """face_rate, id_dist, mouth_corr, yaw_corr over paired sampled (driver, output) frames."""
    return summarise([measure_clip(portrait, driver_frames, output_frames, measure)])


def measure_clip(
    portrait: np.ndarray,
    driver_frames: Sequence[np.ndarray],
    output_frames: Sequence[np.ndarray],
    measure: FaceMeasure | None = None,
) -> dict[str, list[Any]]:
    """The per-frame measurements of one clip: faces found, descriptor distances to the portrait, and
    the driver's and the output's mouth gap and nose yaw where both have a face."""
    if len(driver_frames) != len(output_frames):
        raise ValueError("driver and output samples must pair up")
    measure = measure or FaceMeasure()
    reference = measure.face(portrait)
    found: list[bool] = []
    distances: list[float] = []
    mouth_driver: list[float] = []
    mouth_output: list[float] = []
    yaw_driver: list[float] = []
    yaw_output: list[float] = []
    for driver, output in zip(driver_frames, output_frames):
        out_face = measure.face(output)
        found.append(out_face is not None)
        if out_face is None:
            continue
        if reference is not None:
            distances.append(descriptor_distance(out_face[1], reference[1]))
        drv_face = measure.face(driver)
        if drv_face is None:
            continue
        mouth_driver.append(inner_lip_gap(drv_face[0]))
        mouth_output.append(inner_lip_gap(out_face[0]))
        yaw_driver.append(nose_yaw(drv_face[0]))
        yaw_output.append(nose_yaw(out_face[0]))
    return {
        "found": found,
        "distances": distances,
        "mouth_driver": mouth_driver,
        "mouth_output": mouth_output,
        "yaw_driver": yaw_driver,
        "yaw_output": yaw_output,
        "portrait_face_found": [reference is not None],
    }


def summarise(clips: Sequence[dict[str, list[Any]]]) -> dict[str, Any]:
    """The metrics over the frames of all clips pooled (each clip's frames paired with its driver)."""
    pooled: dict[str, list[Any]] = {}
    for clip in clips:
        for key, values in clip.items():
            pooled.setdefault(key, []).extend(values)
    found, distances = pooled.get("found", []), pooled.get("distances", [])
    return {
        "samples": len(found),
        "face_rate": float(np.mean(found)) if found else 0.0,
        "id_dist": float(np.mean(distances)) if distances else None,
        "mouth_corr": pearson(pooled.get("mouth_driver", []), pooled.get("mouth_output", [])),
        "yaw_corr": pearson(pooled.get("yaw_driver", []), pooled.get("yaw_output", [])),
        "paired_faces": len(pooled.get("mouth_driver", [])),
        "portrait_face_found": all(pooled.get("portrait_face_found", [False])),
    }


# --- video helpers (streamed: only the sampled frames are kept) ---------------------------------------


def frame_count(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def read_frames(path: Path, indices: Iterable[int]) -> list[np.ndarray]:
    """The RGB frames at ``indices`` (sorted), decoding the file once and keeping only those."""
    import av

    wanted = sorted(set(indices))
    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if frames and len(frames) == len(wanted):
                break
            if index == wanted[len(frames)]:
                frames.append(frame.to_ndarray(format="rgb24"))
    return frames


def side_by_side(
    portrait: np.ndarray, driver: np.ndarray, output: np.ndarray, height: int = 256
) -> np.ndarray:
    import cv2

    def fit(image: np.ndarray) -> np.ndarray:
        width = max(1, round(image.shape[1] * height / image.shape[0]))
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)

    gap = np.full((height, 4, 3), 255, np.uint8)
    return np.concatenate([fit(portrait), gap, fit(driver), gap, fit(output)], axis=1)


# --- a second driver: a synthetic person turning and talking --------------------------------------------

# A holdout identity of the synthetic data (never trained on), seen by a camera that moves over the
# head, talking and blinking: unlike the astronaut clip (in-plane sway only) it turns its head, so
# ``yaw_corr`` has something to follow.
SYNTHETIC_DRIVER_IDENTITY = 3
SYNTHETIC_BACKGROUND = (0.62, 0.60, 0.56)  # a plain wall, so the driver looks like a video


def synthetic_driver_frame(index: int, fps: float, size: int) -> np.ndarray:
    """Frame ``index`` (RGB uint8, size²) of the synthetic driver: yaw ±0.45 rad over ~3.2 s, the jaw
    opening and closing at ~1.6 Hz, a blink every 2 s."""
    from shared.face.morphable import load_procedural_model
    from shared.model import cameras
    from shared.training.synthetic import SyntheticConfig, build_scene, render_scene, sample_identity

    model = load_procedural_model()
    identity = sample_identity(model, SyntheticConfig(), 0, "holdout", SYNTHETIC_DRIVER_IDENTITY)
    t = index / fps
    beta = np.zeros(model.num_expression, np.float32)
    beta[model.expression_index("jaw_open")] = 0.9 * max(0.0, np.sin(2 * np.pi * 1.6 * t)) ** 1.5
    blink = max(0.0, 1.0 - abs((t % 2.0) - 1.0) / 0.12)
    beta[model.expression_index("blink_left")] = beta[model.expression_index("blink_right")] = blink
    camera = cameras.spherical_camera(0.45 * np.sin(2 * np.pi * t / 3.2), 0.08 * np.sin(2 * np.pi * t / 2.3))
    image, _, coverage = render_scene(
        build_scene(model, identity, beta), camera.numpy().astype(np.float32), identity.light, size, 2
    )
    # The render is on black: blend it over the wall by its coverage (anti-aliased edges).
    cover = coverage[0].numpy()[..., None]
    rgb = (image.permute(1, 2, 0).numpy() + 1.0) / 2.0 + (1.0 - cover) * np.asarray(SYNTHETIC_BACKGROUND)
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def write_synthetic_driver(path: Path, frames: int, *, fps: int = 25, size: int = 256) -> Path:
    """The synthetic driver as an H.264 MP4 (no audio), written frame by frame."""
    import av

    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(synthetic_driver_frame(index, fps, size), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    return Path(path)


# --- the job --------------------------------------------------------------------------------------------


def run_job(
    workdir: Path, checkpoint: Path, portrait: np.ndarray, driving: Path, options: dict
) -> tuple[Path, dict[str, Any], Any]:
    """Run one job through the worker pipeline; returns (output MP4, the job's stage timings, context)."""
    from services.worker.local_job import run_local_job

    job = run_local_job(workdir, checkpoint, portrait, driving, options, tenant_name="bench-quality")
    out = workdir / "result.mp4"
    job.context.storage.download_to(job.result_key, out)
    return out, job.timings, job.context


# --- holdout metrics and model speed ---------------------------------------------------------------------


def holdout_metrics(
    checkpoint: Path, workdir: Path, identities: int, pairs_per_identity: int
) -> dict[str, Any]:
    from shared.training import metrics as M
    from shared.training.evaluate import evaluate_synthetic
    from shared.training.synthetic import PairDataset, generate_dataset

    root = workdir / "holdout"
    generate_dataset(
        root,
        split="holdout",
        num_identities=identities,
        pairs_per_identity=pairs_per_identity,
        seed=HOLDOUT_SEED,
    )
    report = evaluate_synthetic(checkpoint, root, split="holdout", face_metrics=False)
    dataset = PairDataset(root, "holdout")
    copy = []
    for index in range(len(dataset)):
        pair = dataset[index]
        source = (pair["source_image"][None].clamp(-1, 1) + 1) / 2
        target = (pair["target_image"][None].clamp(-1, 1) + 1) / 2
        copy.append(float(M.psnr(source, target)[0]))
    return {
        "recon_psnr": report["metrics"]["recon_psnr"],
        "reenact_psnr": report["metrics"]["reenact_psnr"],
        "copy_source_psnr": float(np.mean(copy)),
        "recon_lowres_psnr": report["metrics"].get("recon_lowres_psnr"),
        "reenact_lowres_psnr": report["metrics"].get("reenact_lowres_psnr"),
        "holdout_pairs": report["pairs"],
        "model_version": report["model_version"],
    }


def animate_speed(checkpoint: Path, workdir: Path, frames: int = 8, repeats: int = 3) -> float:
    """ms per frame of in-process animate at ``frames`` per call on holdout pairs (best of ``repeats``)."""
    from services.inference.engine import InProcessInference
    from shared.training.synthetic import PairDataset

    engine = InProcessInference.from_checkpoint(checkpoint, max_frames_per_forward=frames)
    dataset = PairDataset(workdir / "holdout", "holdout")
    pairs = [dataset[i % len(dataset)] for i in range(frames)]
    first = pairs[0]
    keep = first["source_keep"].reshape(1, 1, *first["source_keep"].shape[-2:]).numpy()
    planes = engine.reconstruct(
        first["source_image"][None].numpy(), keep, first["source_camera"][None].numpy()
    )
    renders = np.stack([p["expression_image"].numpy() for p in pairs]).astype(np.float32)
    cams = np.stack([p["target_camera"].numpy() for p in pairs]).astype(np.float32)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        start = time.perf_counter()
        engine.animate(planes[0], renders, cams)
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / frames


# --- main ------------------------------------------------------------------------------------------------


def run_bench(
    checkpoint: Path,
    frames_dir: Path,
    *,
    seconds: float = 4.0,
    fps: int = 25,
    driver_size: int = 256,
    samples: int = 30,
    holdout_identities: int = 4,
    holdout_pairs_per_identity: int = 2,
    paste_back: bool = True,
    images: int = 4,
) -> dict[str, Any]:
    from PIL import Image

    from shared.media.samples import astronaut_portrait, write_clip

    started = time.perf_counter()
    portrait = astronaut_portrait()
    frames_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="goha-quality-") as tmp:
        workdir = Path(tmp)
        total = max(MIN_SAMPLES, int(round(seconds * fps)))
        drivers = {
            "astronaut_talking": write_clip(
                workdir / "driver.mp4", total, fps=fps, size=driver_size, talk=True
            ),
            "synthetic_turning": write_synthetic_driver(
                workdir / "synthetic.mp4", total, fps=fps, size=driver_size
            ),
        }
        clips, per_driver, job_s, timings, written, outputs = [], {}, {}, {}, 0, []
        for name, driving in drivers.items():
            t0 = time.perf_counter()
            output, timings[name], _context = run_job(
                workdir / name, checkpoint, portrait, driving, {"paste_back": paste_back}
            )
            job_s[name] = round(time.perf_counter() - t0, 2)
            count = frame_count(output)
            written += count
            indices = sample_indices(count, max(samples, MIN_SAMPLES))
            outputs = read_frames(output, indices)
            driver_frames = read_frames(driving, indices)
            clip = measure_clip(portrait, driver_frames, outputs)
            clips.append(clip)
            per_driver[name] = summarise([clip])
            for k, position in enumerate(np.linspace(0, len(indices) - 1, min(images, len(indices))).round()):
                i = int(position)
                Image.fromarray(side_by_side(portrait, driver_frames[i], outputs[i])).save(
                    frames_dir / f"{name}_{k}_frame{indices[i]:04d}.png"
                )
        quality = summarise(clips)
        holdout = holdout_metrics(checkpoint, workdir, holdout_identities, holdout_pairs_per_identity)
        animate_ms = animate_speed(checkpoint, workdir)
        animate_s = sum(t.get("animate_s", 0.0) for t in timings.values())
    import torch

    return {
        **quality,
        **holdout,
        "animate_ms_per_frame": round(animate_ms, 1),
        "animate_frames_per_call": 8,
        "torch_threads": torch.get_num_threads(),
        "job_animate_ms_per_frame": round(1000.0 * animate_s / max(written, 1), 1),
        "frames": written,
        "output_size": list(outputs[0].shape[:2][::-1]) if outputs else None,
        "paste_back": paste_back,
        "job_s": job_s,
        "drivers": per_driver,
        "stages_s": {name: dict(sorted(t.items())) for name, t in timings.items()},
        "checkpoint": str(checkpoint),
        "frames_dir": str(frames_dir),
        "bench_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.worker.bench_quality", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument(
        "--frames-dir", type=Path, default=DEFAULT_FRAMES_DIR, help="side-by-side PNGs go here"
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the talking driver clip")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--driver-size", type=int, default=256)
    parser.add_argument(
        "--samples", type=int, default=30, help=f"output frames measured (at least {MIN_SAMPLES})"
    )
    parser.add_argument("--holdout-identities", type=int, default=4)
    parser.add_argument("--holdout-pairs-per-identity", type=int, default=2)
    parser.add_argument("--no-paste-back", action="store_true", help="measure the square crop instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    checkpoint = args.checkpoint
    scratch = tempfile.TemporaryDirectory(prefix="goha-quality-ckpt-")
    if not checkpoint.is_file():
        # As make bench-e2e: the pipeline still runs end to end, the numbers say it is untrained.
        from services.worker.bench import random_checkpoint

        print(f"checkpoint {checkpoint} missing: random-weight tiny checkpoint", file=sys.stderr)
        checkpoint = random_checkpoint(Path(scratch.name))
    result = run_bench(
        checkpoint,
        args.frames_dir,
        seconds=args.seconds,
        fps=args.fps,
        driver_size=args.driver_size,
        samples=args.samples,
        holdout_identities=args.holdout_identities,
        holdout_pairs_per_identity=args.holdout_pairs_per_identity,
        paste_back=not args.no_paste_back,
    )
    result["random_weights"] = checkpoint != args.checkpoint
    scratch.cleanup()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
