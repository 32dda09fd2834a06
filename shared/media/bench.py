"""Benchmark of the media layer: ``python -m shared.media.bench [--size 512] [--frames 16] [--calibrate]``.

Measures per-frame costs of the worker's media steps on the scikit-image astronaut with a slow pan, plus
the watermark's survival of a CRF 28 / 0.75x re-encode. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage import data

from shared.media.c2pa_sign import ProvenanceClaim, ensure_dev_chain, read_manifest, sign_video
from shared.media.label import draw_label
from shared.media.verify import verify_video
from shared.media.video import VideoWriter, iter_frame_chunks, reencode
from shared.media.watermark import RivaGanWatermarker, detect_video, payload_for_job


def _frames(count: int, size: int) -> list[np.ndarray]:
    """The astronaut portrait with a slow pan of a few pixels, like a talking-head clip."""
    image = cv2.resize(data.astronaut(), (size + 32, size + 32), interpolation=cv2.INTER_AREA)
    frames = []
    for index in range(count):
        dx, dy = 8 + int(round(6 * np.sin(index / 4))), 8 + int(round(4 * np.cos(index / 5)))
        frames.append(np.ascontiguousarray(image[dy : dy + size, dx : dx + size]))
    return frames


def _per_item_ms(action: Callable[[], Any], items: int) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    return (time.perf_counter() - start) * 1000.0 / items, result


def run(size: int, frame_count: int, samples: int) -> dict[str, Any]:
    frames = _frames(frame_count, size)
    payload = payload_for_job("bench-job", b"bench-secret-0123456789")
    watermarker = RivaGanWatermarker()
    watermarker.embed_frame(frames[0], payload)  # warm-up (session + allocator)
    embed_times, detect_times, label_times = [], [], []
    marked = []
    for frame in frames:
        ms, labelled = _per_item_ms(lambda frame=frame: draw_label(frame), 1)
        label_times.append(ms)
        ms, out = _per_item_ms(lambda labelled=labelled: watermarker.embed_frame(labelled, payload), 1)
        embed_times.append(ms)
        marked.append(out)
    for frame in marked[:samples]:
        ms, _ = _per_item_ms(lambda frame=frame: watermarker.frame_logits(frame), 1)
        detect_times.append(ms)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        out = folder / "out.mp4"
        writer = VideoWriter(out, fps=25, width=size, height=size)
        write_ms, _ = _per_item_ms(lambda: (writer.open(), writer.write(marked), writer.close()), frame_count)
        decode_ms, _ = _per_item_ms(lambda: sum(len(c) for c in iter_frame_chunks(out, 8)), frame_count)
        chain = ensure_dev_chain(folder / "chain")
        claim = ProvenanceClaim("bench-job", "bench", "0" * 64, "0" * 64, payload)
        sign_ms, _ = _per_item_ms(lambda: sign_video(out, folder / "signed.mp4", claim, chain), 1)
        read_ms, _ = _per_item_ms(lambda: read_manifest(folder / "signed.mp4", chain.trust_anchor_pem), 1)
        verify_ms, report = _per_item_ms(
            lambda: verify_video(
                folder / "signed.mp4", trust_anchors=chain.trust_anchor_pem, max_samples=samples
            ),
            1,
        )
        reencode(folder / "signed.mp4", folder / "attacked.mp4", crf=28, scale=0.75)
        attacked = detect_video(folder / "attacked.mp4", max_samples=samples)
    psnr = statistics.mean(cv2.PSNR(a, b) for a, b in zip([draw_label(f) for f in frames], marked))
    return {
        "benchmark": "media",
        "frame_size": size,
        "frames": frame_count,
        "threads": os.cpu_count(),
        "watermark_embed_ms_per_frame": round(statistics.median(embed_times), 1),
        "watermark_detect_ms_per_frame": round(statistics.median(detect_times), 1),
        "label_ms_per_frame": round(statistics.median(label_times), 2),
        "h264_write_ms_per_frame": round(write_ms, 1),
        "decode_ms_per_frame": round(decode_ms, 2),
        "c2pa_sign_ms": round(sign_ms, 1),
        "c2pa_read_ms": round(read_ms, 1),
        f"verify_ms_{samples}_samples": round(verify_ms, 1),
        "watermark_psnr_db": round(psnr, 2),
        "verify_found": report.watermark.found,
        "verify_trusted": report.manifest.trusted,
        "crf28_075_found": attacked.found,
        "crf28_075_confident_bits": attacked.confident_bits,
        "crf28_075_agreeing_bits": attacked.agreeing_bits(payload),
    }


CALIBRATION_IMAGES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
)


def calibrate(size: int, frame_count: int) -> dict[str, Any]:
    """Confident bits after CRF 28 + 0.75x for marked vs unmarked clips of several pictures (threshold check)."""
    watermarker = RivaGanWatermarker()
    payload = payload_for_job("calibration-job", b"calibration-secret-0123")
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in CALIBRATION_IMAGES:
            image = getattr(data, name)()
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            image = np.ascontiguousarray(image[:, :, :3])
            clean = []
            for index in range(frame_count):
                big = cv2.resize(image, (size + 32, size + 32), interpolation=cv2.INTER_AREA)
                dx, dy = 8 + int(round(6 * np.sin(index / 4))), 8 + int(round(4 * np.cos(index / 5)))
                clean.append(np.ascontiguousarray(big[dy : dy + size, dx : dx + size]))
            row = {}
            for tag, frames in (("marked", watermarker.embed(clean, payload)), ("clean", clean)):
                with VideoWriter(folder / "clip.mp4", fps=25, width=size, height=size) as writer:
                    writer.write(frames)
                reencode(folder / "clip.mp4", folder / "attacked.mp4", crf=28, scale=0.75)
                result = detect_video(folder / "attacked.mp4", max_samples=frame_count)
                row[tag] = {
                    "found": result.found,
                    "confident_bits": result.confident_bits,
                    "agreeing_bits": result.agreeing_bits(payload),
                }
            rows[name] = row
    return {
        "benchmark": "media-watermark-calibration",
        "frame_size": size,
        "frames": frame_count,
        "images": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument(
        "--calibrate", action="store_true", help="marked vs unmarked confident bits on 8 pictures (~2 min)"
    )
    args = parser.parse_args()
    if args.calibrate:
        print(json.dumps(calibrate(args.size, min(args.frames, 8))))
    else:
        print(json.dumps(run(args.size, args.frames, args.samples)))


if __name__ == "__main__":
    main()
