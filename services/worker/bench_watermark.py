"""Robustness and cost of the invisible watermark on the shipped model's real output (``make bench-watermark``).

    python -m services.worker.bench_watermark [--payloads 50] [--sources 3] [--seconds 2] [--negatives 1000]
                                              [--processes N]

1. **Sources**: ``--sources`` jobs run through the worker pipeline in process (``models/goha-tiny.pt``,
   in-process inference, the worker's chunking, paste-back when the pipeline has it), with the astronaut
   portrait varied (mirrored, brightened, darkened) and a generated talking driver. The frames the worker
   hands to ``Guardrails`` are saved unmarked, chunk by chunk (nothing holds a clip). Those jobs' own
   stage timings give ``guardrails_share`` = sum of ``guardrails_s`` / sum of ``total_s``.
2. **Payloads**: ``--payloads`` job payloads, each marked onto one source exactly as the worker does
   (one ``Guardrails`` per video, chunk by chunk) and written like the worker's output (CRF 20,
   ``medium``): ``embed_ms_per_frame`` is the marking wall time per frame on one thread.
3. **Attacks**, each a streamed H.264 re-encode (CRF 23, ``veryfast`` unless the attack is the CRF):
   ``crf23``, ``crf28``, ``crf35``; ``scale075``, ``scale050``; ``crop8`` (8 % of the width and height cut
   from every side, kept at the cropped size); ``fps15``; ``cut1s`` (the middle second removed);
   ``grey``; ``flip`` (horizontal); ``crf28_scale075``. Each attacked file is read by ``detect_video``
   (the verifier's sampling, vote and early stop); *found* = ``found`` and ``matches(payload)``.
4. **False positives**: ``--negatives`` generated unmarked frame sets (8 frames with slight motion
   each: the unmarked model output, the scikit-image pictures, noise, gradients, flat colours, text-like
   stripes, under random crops, flips, gains), voted like the verifier votes; a false positive is a set
   that is ``found`` and names one of the bench's job payloads (``matches``). ``negatives_found`` counts
   sets ``found`` at all.

The payloads and the unmarked sets are independent, so after the sources they run on ``--processes``
worker processes (default: one per CPU core; each on one torch/ONNX thread, so ``embed_ms_per_frame``
stays a one-thread figure) and are summed in the parent: the run is one command whatever the cores.

The LAST stdout line is JSON with the issue's keys (``embed_ms_per_frame``, ``guardrails_share``,
``found_rate_<attack>``, ``false_positives``), ``agreeing_bits_<attack>`` (mean majority bits equal to
the payload) and the run's parameters and duration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shared.media.video import VideoWriter, iter_frame_chunks, probe_video

LOGGER = logging.getLogger("services.worker.bench_watermark")
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT = ROOT / "models" / "goha-tiny.pt"
SECRET = b"bench-watermark-secret-0123456789"
ATTACKS = (
    "crf23",
    "crf28",
    "crf35",
    "scale075",
    "scale050",
    "crop8",
    "fps15",
    "cut1s",
    "grey",
    "flip",
    "crf28_scale075",
)
TARGETS = {"crf23": 0.98, "crf28": 0.98, "scale075": 0.98, "crf28_scale075": 0.98}
CHUNK = 16  # the worker's default chunk_frames
FPS = 25
NEGATIVE_SHARD = 50  # unmarked sets per worker task (each shard has its own seed)


@dataclass(frozen=True)
class BenchConfig:
    payloads: int = 50
    sources: int = 3
    seconds: float = 2.0
    negatives: int = 1000
    checkpoint: Path = DEFAULT_CHECKPOINT
    attacks: bool = True  # False: sources and negatives only (e.g. to run the negatives in another process)
    first_payload: int = 0  # payloads bench-job-<first>... (several processes can split the payloads)
    processes: int = 0  # worker processes for payloads and unmarked sets; 0: one per CPU core


# --- attacks ------------------------------------------------------------------------------------------------
def _even(value: float) -> int:
    return max(2, int(round(value / 2.0)) * 2)


def attack(source: Path, target: Path, name: str) -> Path:
    """Write ``source`` attacked by ``name`` (one of ``ATTACKS``) to ``target``, streaming."""
    info = probe_video(source)
    width, height, fps = info.width, info.height, info.fps
    crf = {"crf23": 23, "crf28": 28, "crf35": 35, "crf28_scale075": 28}.get(name, 23)
    scale = {"scale075": 0.75, "scale050": 0.5, "crf28_scale075": 0.75}.get(name, 1.0)
    transform: Callable[[np.ndarray], np.ndarray] = lambda frame: frame  # noqa: E731
    out_w, out_h = _even(width * scale), _even(height * scale)
    if scale != 1.0:
        transform = lambda frame: cv2.resize(frame, (out_w, out_h), interpolation=cv2.INTER_AREA)  # noqa: E731
    elif name == "crop8":
        dx, dy = int(round(width * 0.08)), int(round(height * 0.08))
        out_w, out_h = _even(width - 2 * dx), _even(height - 2 * dy)
        transform = lambda frame: np.ascontiguousarray(frame[dy : dy + out_h, dx : dx + out_w])  # noqa: E731
    elif name == "grey":
        transform = lambda frame: cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)  # noqa: E731
    elif name == "flip":
        transform = lambda frame: np.ascontiguousarray(frame[:, ::-1])  # noqa: E731
    target_fps = 15 if name == "fps15" else None
    second = int(round(float(fps)))
    start = info.frame_count // 2 - second // 2
    cut = (start, start + second) if name == "cut1s" else None  # one second of frames from the middle
    index = 0
    with VideoWriter(
        target, fps=target_fps or fps, width=out_w, height=out_h, crf=crf, preset="veryfast"
    ) as writer:
        for chunk in iter_frame_chunks(source, CHUNK, target_fps=target_fps):
            kept = []
            for frame in chunk:
                if cut is None or not cut[0] <= index < cut[1]:
                    kept.append(transform(frame))
                index += 1
            if kept:
                writer.write(kept)
    return target


# --- sources: the tiny model's real output, captured unmarked ----------------------------------------------
def usable_checkpoint(path: Path, workdir: Path) -> Path:
    """``path`` if it loads verified; else its weights re-saved under the current config (a checkpoint
    whose stored hash predates a config field added since, e.g. while a retrained model is on its way)."""
    from shared.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    try:
        load_checkpoint(path)
        return path
    except CheckpointError as exc:
        if exc.code != "model.hash_mismatch":
            raise
        LOGGER.warning("%s: %s; re-saving its weights under the current config", path, exc.message)
        copy = workdir / f"{path.stem}-rehashed.pt"
        save_checkpoint(load_checkpoint(path, verify=False).eval(), copy)
        return copy


def _portrait(variant: int) -> np.ndarray:
    from shared.media.samples import astronaut_portrait

    image = astronaut_portrait().astype(np.float32)
    if variant % 3 == 1:
        image = image[:, ::-1]
    gain = (1.0, 1.25, 0.7)[variant % 3]
    return np.clip(image * gain, 0, 255).astype(np.uint8)


@dataclass
class Source:
    chunks: list[Path]  # unmarked frames as the worker gave them to Guardrails, one .npy per chunk
    frames: int
    timings: dict[str, float]


def capture_source(index: int, checkpoint: Path, workdir: Path, seconds: float) -> Source:
    """One job through the worker pipeline, its unmarked output frames saved chunk by chunk."""
    import services.worker.pipeline as pipeline
    from shared.media import guardrails as guardrails_module
    from shared.media.samples import write_clip

    directory = workdir / f"source{index}"
    directory.mkdir(parents=True)
    chunks: list[Path] = []

    class Capturing(guardrails_module.Guardrails):
        def __call__(self, frames_rgb: Any) -> list[np.ndarray]:
            frames = list(frames_rgb)
            path = directory / f"chunk{len(chunks):04d}.npy"
            np.save(path, np.stack(frames))
            chunks.append(path)
            return super().__call__(frames)

    driver = write_clip(directory / "driver.mp4", int(round(seconds * FPS)), size=256, talk=index % 2 == 0)
    original = pipeline.Guardrails
    pipeline.Guardrails = Capturing  # type: ignore[misc]
    try:
        # Even sources: the default paste-back (the portrait's own framing); odd: the square face crop,
        # the dark, flat output RivaGAN carries worst.
        for options in ({}, {"paste_back": False}) if index % 2 == 0 else ({"paste_back": False},):
            chunks.clear()
            try:
                timings = _run_job(
                    directory / f"job-{len(options)}", checkpoint, _portrait(index), driver, options
                )
                break
            except RuntimeError as exc:  # paste-back still landing: fall back to the square crop
                LOGGER.warning("source %d with options %s failed (%s)", index, options, exc)
        else:
            raise RuntimeError(f"source {index}: the worker pipeline failed")
    finally:
        pipeline.Guardrails = original  # type: ignore[misc]
    frames = sum(int(np.load(path, mmap_mode="r").shape[0]) for path in chunks)
    return Source(chunks=list(chunks), frames=frames, timings=timings)


def _run_job(workdir: Path, checkpoint: Path, portrait: np.ndarray, driving: Path, options: dict) -> dict:
    """One job through the worker pipeline (``services.worker.local_job``); its stage timings."""
    from services.worker.local_job import run_local_job

    return run_local_job(
        workdir, checkpoint, portrait, driving, options, tenant_name="bench-watermark"
    ).timings


def source_chunks(source: Source) -> Iterator[np.ndarray]:
    for path in source.chunks:
        yield np.load(path)


# --- one payload ----------------------------------------------------------------------------------------------
def mark_source(source: Source, payload: int, path: Path) -> float:
    """Mark ``source`` with ``payload`` as the worker does and write it like the worker; marking seconds."""
    import torch

    from shared.media.guardrails import Guardrails

    torch.set_num_threads(1)
    marker = Guardrails(payload, workers=1)
    seconds = 0.0
    writer: VideoWriter | None = None
    try:
        for chunk in source_chunks(source):
            started = time.perf_counter()
            marked = marker(list(chunk))
            seconds += time.perf_counter() - started
            if writer is None:
                height, width = chunk.shape[1:3]
                writer = VideoWriter(
                    path, fps=FPS, width=width, height=height, crf=20, preset="medium"
                ).open()
            writer.write(marked)
    finally:
        if writer is not None:
            writer.close()
    return seconds


# --- negatives --------------------------------------------------------------------------------------------------
def negative_sets(
    count: int, sources: list[Source], seed: int = 0, start: int = 0
) -> Iterator[list[np.ndarray]]:
    """``count`` unmarked 8-frame sets with slight motion, from varied content (set numbers from
    ``start``: shards of one run pass their offset and their own seed)."""
    from skimage import data

    rng = np.random.default_rng(seed)
    pictures = [
        data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry(),
        data.hubble_deep_field(), data.retina(), data.colorwheel(), data.logo()[..., :3],
        np.dstack([data.camera()] * 3), np.dstack([data.moon()] * 3), np.dstack([data.text()] * 3),
    ]  # fmt: skip
    for number in range(start, start + count):
        kind = number % 4
        if kind == 0 and sources:
            source = sources[int(rng.integers(len(sources)))]
            chunk = np.load(source.chunks[int(rng.integers(len(source.chunks)))], mmap_mode="r")
            base = np.asarray(chunk[int(rng.integers(chunk.shape[0]))])
        elif kind == 1:
            base = np.asarray(pictures[int(rng.integers(len(pictures)))])
        elif kind == 2:
            size = int(rng.integers(64, 256))
            base = cv2.resize(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (512, 512))
        else:
            y, x = np.mgrid[0:512, 0:512].astype(np.float32) / 512.0
            colour = rng.uniform(0, 255, 3).astype(np.float32)
            slope = rng.uniform(-120, 120, (2, 3)).astype(np.float32)
            base = np.clip(colour + x[..., None] * slope[0] + y[..., None] * slope[1], 0, 255).astype(
                np.uint8
            )
            if rng.random() < 0.3:
                base[(np.arange(512) // int(rng.integers(4, 24))) % 2 == 0] //= 2  # stripes
        if rng.random() < 0.5:
            base = base[:, ::-1]
        gain = float(rng.uniform(0.5, 1.3))
        base = np.clip(base.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        height, width = base.shape[:2]
        frames = []
        for step in range(8):
            matrix = np.float32([[1, 0, 2.0 * np.sin(step / 3.0 + number)], [0, 1, 1.5 * np.cos(step / 4.0)]])
            frames.append(cv2.warpAffine(base, matrix, (width, height), borderMode=cv2.BORDER_REFLECT))
        yield frames


def count_false_positives(
    count: int,
    sources: list[Source],
    payloads: list[int],
    *,
    seed: int = 0,
    start: int = 0,
    num_threads: int | None = None,
) -> tuple[int, int, float]:
    """(false positives, sets found at all, seconds) over ``count`` generated unmarked sets."""
    from shared.media.watermark import DEFAULT_CONFIG, RivaGanWatermarker, vote_decided, vote_logits

    config = DEFAULT_CONFIG if num_threads is None else replace(DEFAULT_CONFIG, num_threads=num_threads)
    watermarker = RivaGanWatermarker(config)
    started = time.perf_counter()
    false_positives = found = 0
    for frames in negative_sets(count, sources, seed=seed, start=start):
        logits: list[np.ndarray] = []
        for frame in frames:
            logits.append(watermarker.frame_logits(frame))
            if vote_decided(np.array(logits), len(frames)):
                break
        result = vote_logits(np.array(logits))
        if result.found:
            found += 1
            false_positives += any(result.matches(payload) for payload in payloads)
    return false_positives, found, time.perf_counter() - started


# --- the run -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PayloadResult:
    mark_s: float
    frames: int
    found: dict[str, int]
    agreeing: dict[str, int]


def _one_thread() -> None:
    """Worker-process initialiser: one torch thread (ONNX sessions get ``num_threads=1`` explicitly)."""
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def run_payload(source: Source, payload: int, workdir: Path, num_threads: int | None = None) -> PayloadResult:
    """Mark ``source`` with ``payload``, apply every attack and read each back (one task of the run)."""
    from shared.media.watermark import DEFAULT_CONFIG, detect_video

    config = DEFAULT_CONFIG if num_threads is None else replace(DEFAULT_CONFIG, num_threads=num_threads)
    workdir.mkdir(parents=True, exist_ok=True)
    marked = workdir / "marked.mp4"
    mark_s = mark_source(source, payload, marked)
    found: dict[str, int] = {}
    agreeing: dict[str, int] = {}
    for name in ATTACKS:
        attacked = attack(marked, workdir / f"{name}.mp4", name)
        result = detect_video(attacked, config=config)
        found[name] = int(result.found and result.matches(payload))
        agreeing[name] = result.agreeing_bits(payload)
        with contextlib.suppress(OSError):
            attacked.unlink()
    with contextlib.suppress(OSError):
        marked.unlink()
    return PayloadResult(mark_s=mark_s, frames=source.frames, found=found, agreeing=agreeing)


def _negative_shards(count: int) -> list[tuple[int, int]]:
    """(start, count) shards of ``NEGATIVE_SHARD`` sets; shard ``i`` uses seed ``i``."""
    return [(start, min(NEGATIVE_SHARD, count - start)) for start in range(0, count, NEGATIVE_SHARD)]


def run_bench(config: BenchConfig) -> dict[str, Any]:
    from shared.media.watermark import payload_for_job

    started = time.perf_counter()
    processes = config.processes or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="goha-bench-watermark-") as tmp:
        workdir = Path(tmp)
        checkpoint = usable_checkpoint(config.checkpoint, workdir)
        sources = []
        for index in range(config.sources):
            sources.append(capture_source(index, checkpoint, workdir, config.seconds))
            LOGGER.info("source %d: %d frames, timings %s", index, sources[-1].frames, sources[-1].timings)
        payloads = [
            payload_for_job(f"bench-job-{config.first_payload + index}", SECRET)
            for index in range(config.payloads)
        ]
        found = {name: 0 for name in ATTACKS}
        agreeing = {name: 0 for name in ATTACKS}
        mark_s, marked_frames = 0.0, 0
        false_positives = negatives_found = 0
        negatives_cpu_s = 0.0
        threads = 1 if processes > 1 else None
        with ProcessPoolExecutor(
            max_workers=processes, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread
        ) as pool:
            payload_futures = [
                pool.submit(
                    run_payload, sources[index % len(sources)], payload, workdir / f"payload{index}", threads
                )
                for index, payload in enumerate(payloads if config.attacks else [])
            ]
            negative_futures = [
                pool.submit(
                    count_false_positives,
                    count,
                    sources,
                    payloads,
                    seed=shard,
                    start=start,
                    num_threads=threads,
                )
                for shard, (start, count) in enumerate(_negative_shards(config.negatives))
            ]
            for done, future in enumerate(payload_futures, start=1):
                result = future.result()
                mark_s += result.mark_s
                marked_frames += result.frames
                for name in ATTACKS:
                    found[name] += result.found[name]
                    agreeing[name] += result.agreeing[name]
                LOGGER.info("payload %d/%d: %s", done, len(payloads), found)
            for done, future in enumerate(negative_futures, start=1):
                shard_fp, shard_found, shard_s = future.result()
                false_positives += shard_fp
                negatives_found += shard_found
                negatives_cpu_s += shard_s
                LOGGER.info("unmarked shard %d/%d: %d found, %d false positives", done,
                            len(negative_futures), negatives_found, false_positives)  # fmt: skip
        guardrails_s = sum(source.timings.get("guardrails_s", 0.0) for source in sources)
        guardrails_cpu_s = sum(source.timings.get("guardrails_cpu_s", 0.0) for source in sources)
        total_s = sum(source.timings.get("total_s", 0.0) for source in sources)
        frame_sizes = [list(np.load(source.chunks[0], mmap_mode="r").shape[1:3]) for source in sources]
    marked_payloads = max(len(payloads), 1) if config.attacks else 0
    rate = (lambda count: round(count / marked_payloads, 4)) if marked_payloads else (lambda count: None)  # noqa: E731
    report: dict[str, Any] = {
        "embed_ms_per_frame": round(1000.0 * mark_s / max(marked_frames, 1), 2),
        "guardrails_share": round(guardrails_s / total_s, 4) if total_s else None,
        "guardrails_cpu_share": round(guardrails_cpu_s / total_s, 4) if total_s else None,
        **{f"found_rate_{name}": rate(found[name]) for name in ATTACKS},
        "false_positives": false_positives,
        "negatives": config.negatives,
        "negatives_found": negatives_found,
        **{
            f"agreeing_bits_{name}": round(agreeing[name] / marked_payloads, 2) if marked_payloads else None
            for name in ATTACKS
        },
        "below_target": [
            name
            for name, target in TARGETS.items()
            if marked_payloads and found[name] / marked_payloads < target
        ],
        "payloads": config.payloads,
        "first_payload": config.first_payload,
        "sources": config.sources,
        "processes": processes,
        "frames_per_source": [source.frames for source in sources],
        "frame_sizes": frame_sizes,
        "source_guardrails_s": round(guardrails_s, 2),
        "source_total_s": round(total_s, 2),
        "negatives_s": round(negatives_cpu_s, 1),  # summed over the shards (worker seconds)
        "duration_s": round(time.perf_counter() - started, 1),
        "checkpoint": checkpoint.name,
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.worker.bench_watermark", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--payloads", type=int, default=50)
    parser.add_argument("--sources", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="driving clip length per source")
    parser.add_argument("--negatives", type=int, default=1000)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--no-attacks", action="store_true", help="sources and negatives only")
    parser.add_argument("--first-payload", type=int, default=0, help="first job index (split runs)")
    parser.add_argument(
        "--processes", type=int, default=0, help="worker processes for payloads and sets (0: one per core)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = BenchConfig(
        payloads=args.payloads,
        sources=args.sources,
        seconds=args.seconds,
        negatives=args.negatives,
        checkpoint=args.checkpoint,
        attacks=not args.no_attacks,
        first_payload=args.first_payload,
        processes=args.processes,
    )
    print(json.dumps(run_bench(config)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
