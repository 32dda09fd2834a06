"""Per-driving-frame cost of face analysis: ``python -m shared.face.bench`` (``make bench-face``).

The driving clip is the scikit-image astronaut portrait (512x512) moved by a smooth similarity
(roll, translation, zoom), decoded frame by frame as a real clip would be. Measured per frame, on
``--threads`` CPU threads, after one warm-up chunk (which also estimates the driver's identity):

* ``detect_landmarks_ms``: face tracking (default mesh backend: the MediaPipe graph in tracking mode,
  478 points per frame, detection only when the face is lost; ``--detect-every`` applies to the dlib
  backend) + the crop matrix;
* ``fit_ms_per_frame``: the batched expression/pose fit of a chunk + One-Euro smoothing + cameras;
* ``render_ms_per_frame``: I_exp at the crop size with ``shared.face.render.render_expression``
  (batched per chunk, supersample 1, ``--threads``), or null when the renderer cannot be imported;
* ``render_ss2_ms_per_frame``: the same render at supersample 2 (256² averaged down to 128²) on ONE
  torch thread, the way the worker renders I_exp (``render_ss2_cpu_ms_per_frame``: the CPU time of
  the rendering thread; idle torch/OpenMP workers left spinning by the 2-thread steps are not in it,
  but they do compete with it for the cores, so the wall time is an upper bound on a busy machine).

``total_ms_per_frame`` adds the render at the supersample the worker uses (the training data's,
``SyntheticConfig.supersample``, reported as ``render_supersample``), timed on one thread.

Quality keys (``shared/face/bench_quality.py`` defines them): ``mouth_corr_fit``, ``eye_corr_fit``,
``pose_err_deg``, ``jitter_px``, ``matte_iou`` (+ a few details); ``--no-quality`` skips them.

The LAST stdout line is the JSON result.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import cv2
import numpy as np
import torch

from shared.face.morphable import load_morphable_model
from shared.face.pipeline import AnalyzerConfig, FaceAnalyzer


def astronaut_clip(num_frames: int, size: int = 512, start: int = 0) -> list[np.ndarray]:
    """Frames of the astronaut with a smooth head-like motion (roll +-8 deg, +-15 px, +-5 % zoom)."""
    from skimage import data

    image = data.astronaut()
    if size != image.shape[0]:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    factor = size / 512.0
    frames = []
    for i in range(start, start + num_frames):
        angle = 8.0 * np.sin(i / 10.0)
        matrix = cv2.getRotationMatrix2D(
            (222.0 * factor, 130.0 * factor), angle, 1.0 + 0.05 * np.sin(i / 13.0)
        )
        matrix[0, 2] += 15.0 * factor * np.sin(i / 7.0)
        matrix[1, 2] += 6.0 * factor * np.cos(i / 9.0)
        frames.append(cv2.warpAffine(image, matrix, (size, size), borderMode=cv2.BORDER_REFLECT))
    return frames


def worker_supersample() -> int:
    """The I_exp supersampling the worker uses: the training data's factor (as
    ``services.worker.pipeline.training_supersample``; 2 when the training package is absent)."""
    try:
        from shared.training.synthetic import SyntheticConfig
    except ImportError:
        return 2
    return int(SyntheticConfig().supersample)


def run(
    num_frames: int, chunk: int, crop_size: int, frame_size: int, detect_every: int, threads: int
) -> dict[str, object]:
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    model = load_morphable_model(None)
    analyzer = FaceAnalyzer(model, crop_size, AnalyzerConfig(detect_every=detect_every))
    try:
        from shared.face.render import render_expression
    except ImportError:  # the renderer is another module; report null rather than fail
        render_expression = None  # type: ignore[assignment]

    state = analyzer.start_video()
    warmup = astronaut_clip(chunk, frame_size, start=0)
    analyzer.analyze_frames(warmup, state=state)
    identity = state.identity
    assert identity is not None
    if render_expression is not None:  # warm-up renders (first calls allocate and fault in memory)
        warm_beta = torch.zeros(chunk, model.num_expression)
        warm_alpha = identity.unsqueeze(0).expand(chunk, -1)
        with torch.no_grad():
            for factor in (1, 2, worker_supersample()):
                render_expression(model, warm_alpha, warm_beta, crop_size, supersample=factor)

    supersample = worker_supersample()
    # Supersampling factors timed on one thread (the worker renders I_exp single-threaded).
    single_thread_factors = sorted({2, supersample})
    render_1t_s = dict.fromkeys(single_thread_factors, 0.0)
    render_1t_cpu = dict.fromkeys(single_thread_factors, 0.0)
    detect_s = fit_s = render_s = 0.0
    detect_cpu = fit_cpu = render_cpu = 0.0
    measured = 0
    for start in range(chunk, chunk + num_frames, chunk):
        frames = astronaut_clip(min(chunk, chunk + num_frames - start), frame_size, start=start)
        # analyze_frames = track_frames + analyze_tracked: time each half on its own.
        t0, c0 = time.perf_counter(), time.process_time()
        tracked = analyzer.track_frames(frames, state)
        t1, c1 = time.perf_counter(), time.process_time()
        results = analyzer.analyze_tracked(tracked, state)
        t2, c2 = time.perf_counter(), time.process_time()
        if render_expression is not None:
            beta = torch.stack([r.beta for r in results])
            with torch.no_grad():
                render_expression(model, identity.unsqueeze(0).expand(len(results), -1), beta, crop_size)
        t3, c3 = time.perf_counter(), time.process_time()
        if render_expression is not None:
            alpha = identity.unsqueeze(0).expand(len(results), -1)
            torch.set_num_threads(1)
            try:
                for factor in single_thread_factors:
                    t4, c4 = time.perf_counter(), time.thread_time()
                    with torch.no_grad():
                        render_expression(model, alpha, beta, crop_size, supersample=factor)
                    render_1t_s[factor] += time.perf_counter() - t4
                    render_1t_cpu[factor] += time.thread_time() - c4
            finally:
                torch.set_num_threads(threads)
        detect_cpu += c1 - c0
        fit_cpu += c2 - c1
        render_cpu += c3 - c2
        detect_s += t1 - t0
        fit_s += t2 - t1
        render_s += t3 - t2
        measured += len(frames)

    detect_ms = 1000.0 * detect_s / measured
    fit_ms = 1000.0 * fit_s / measured
    render_ms = 1000.0 * render_s / measured if render_expression is not None else None
    one_thread_ms = {f: 1000.0 * t / measured for f, t in render_1t_s.items()}
    ss2_ms = one_thread_ms.get(2) if render_expression is not None else None
    worker_render_ms = one_thread_ms.get(supersample) if render_expression is not None else None
    total = detect_ms + fit_ms + (worker_render_ms or 0.0)
    return {
        "detect_landmarks_ms": round(detect_ms, 3),
        "fit_ms_per_frame": round(fit_ms, 3),
        "render_ms_per_frame": None if render_ms is None else round(render_ms, 3),
        "render_ss2_ms_per_frame": None if ss2_ms is None else round(ss2_ms, 3),
        "render_ss2_cpu_ms_per_frame": (
            None if ss2_ms is None else round(1000.0 * render_1t_cpu[2] / measured, 3)
        ),
        "render_supersample": supersample,
        "total_ms_per_frame": round(total, 3),
        "target_ms_per_frame": 40.0,
        "frames": measured,
        "chunk": chunk,
        "frame_size": frame_size,
        "crop_size": crop_size,
        "detect_every": detect_every,
        "detections_run": state.tracker.detections_run,
        "frames_without_face": state.frames_without_face,
        "threads": threads,
        # Process CPU time per frame: detection and fitting run on one thread, so on a busy machine
        # these approximate their wall time on an idle one (the render's counts all its threads).
        "detect_landmarks_cpu_ms": round(1000.0 * detect_cpu / measured, 3),
        "fit_cpu_ms_per_frame": round(1000.0 * fit_cpu / measured, 3),
        "render_cpu_ms_per_frame": None if render_ms is None else round(1000.0 * render_cpu / measured, 3),
        # Other processes on the machine inflate every number above; recorded for context.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=128, help="the tiny profile's crop/render size")
    parser.add_argument("--frame-size", type=int, default=512, help="driving frame side in pixels")
    parser.add_argument("--detect-every", type=int, default=3)
    # One thread: the worker runs the face stack and I_exp in its prepare thread on one torch thread.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--no-quality", action="store_true", help="timings only (skip ~30 s of quality checks)"
    )
    args = parser.parse_args(argv)
    result = run(args.frames, args.chunk, args.crop_size, args.frame_size, args.detect_every, args.threads)
    if not args.no_quality:
        from shared.face.bench_quality import measure

        model = load_morphable_model(None)
        result.update(measure(model, lambda: FaceAnalyzer(model, args.crop_size)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
