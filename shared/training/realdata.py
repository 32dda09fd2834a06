"""Real-data folder format and the ``preprocess`` command that builds it with the face stack.

Layout (``goha-real-folder/1``)::

    <folder>/dataset.json
    <folder>/images/<id>.png   aligned crops, image_size², RGB
    <folder>/masks/<id>.png    keep-masks (255 keep, 0 on eyes / brows / mouth)

``dataset.json``::

    {"format": "goha-real-folder/1", "image_size": 128, "morphable_model": "procedural-v1",
     "items": [{"id": "clip_000012", "image": "images/clip_000012.png", "keep_mask": "masks/...",
                "source": "raw/clip.mp4", "frame": 12, "group": "clip",
                "camera": [25 floats, EG3D], "alpha": [K_id], "beta": [K_exp],
                "landmarks": [[x, y] × 68 in crop pixels], "fit_rms": 0.004}], "skipped": [...]}

``group`` names the person/clip an item came from (frames of one video share it), so pairs of
the same identity can be formed for training on real video. Cameras, α and β come from
``shared.face.pipeline.FaceAnalyzer`` (dlib landmarks + the project's 3DMM fit); with the
procedural morphable model these are approximate. Videos are decoded one frame at a time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from shared.training.errors import DataError

REAL_FORMAT = "goha-real-folder/1"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm"}


def _inputs(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError("data.missing", f"input {p} does not exist")
    if not files:
        raise DataError("data.empty", "no images or videos found in the inputs")
    return files


def _frames(path: Path, every: int, max_frames: int | None) -> Any:
    """(frame index, RGB uint8) pairs; images give one frame."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        with Image.open(path) as image:
            yield 0, np.asarray(image.convert("RGB"))
        return
    from shared.media.video import iter_frames

    kept = 0
    for index, frame in enumerate(iter_frames(path)):
        if index % every:
            continue
        yield index, frame
        kept += 1
        if max_frames is not None and kept >= max_frames:
            return


def preprocess(
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    image_size: int = 128,
    every_nth_frame: int = 5,
    max_frames_per_video: int | None = 200,
    morphable_model: str | None = None,
) -> dict[str, Any]:
    """Detect, align, fit and write every usable face of the inputs; returns the dataset JSON."""
    from shared.face.errors import FaceError
    from shared.face.morphable import load_morphable_model
    from shared.face.pipeline import FaceAnalyzer

    if image_size < 32 or every_nth_frame < 1:
        raise DataError("data.bad_size", "image_size must be >= 32 and every_nth_frame >= 1")
    model = load_morphable_model(morphable_model)
    analyzer = FaceAnalyzer(model, image_size)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    items: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for path in _inputs(list(inputs)):
        group = path.stem
        for index, frame in _frames(path, every_nth_frame, max_frames_per_video):
            try:
                analysis = analyzer.analyze_portrait(frame)
            except FaceError as exc:
                skipped.append({"source": str(path), "frame": index, "code": exc.code})
                continue
            item_id = f"{group}_{index:06d}"
            Image.fromarray(analysis.crop).save(out / "images" / f"{item_id}.png")
            mask = (np.clip(analysis.keep_mask, 0, 1) * 255).round().astype(np.uint8)
            Image.fromarray(mask).save(out / "masks" / f"{item_id}.png")
            items.append(
                {
                    "id": item_id,
                    "image": f"images/{item_id}.png",
                    "keep_mask": f"masks/{item_id}.png",
                    "source": str(path),
                    "frame": index,
                    "group": group,
                    "camera": analysis.camera.tolist(),
                    "alpha": analysis.alpha.tolist(),
                    "beta": analysis.beta.tolist(),
                    "landmarks": analysis.landmarks.tolist(),
                    "fit_rms": analysis.rms_error,
                }
            )
    meta = {
        "format": REAL_FORMAT,
        "image_size": image_size,
        "morphable_model": model.name,
        "items": items,
        "skipped": skipped,
    }
    (out / "dataset.json").write_text(json.dumps(meta))
    return meta


class RealFolder(torch.utils.data.Dataset):
    """Items of a real-data folder as tensors (image / keep-mask in the network's conventions)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / "dataset.json"
        if not path.is_file():
            raise DataError(
                "data.missing", f"{path} not found (build it with `python -m shared.training preprocess`)"
            )
        self.meta = json.loads(path.read_text())
        if self.meta.get("format") != REAL_FORMAT:
            raise DataError("data.bad_format", f"{path}: not a {REAL_FORMAT} folder")
        self.items: list[dict[str, Any]] = self.meta["items"]

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = self.items[index]
        with Image.open(self.root / item["image"]) as image:
            rgb = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1
        with Image.open(self.root / item["keep_mask"]) as mask:
            keep = (torch.from_numpy(np.array(mask.convert("L"))).float() / 255.0)[None]
        return {
            "source_image": rgb,
            "source_keep": keep,
            "source_camera": torch.tensor(item["camera"], dtype=torch.float32),
            "alpha": torch.tensor(item["alpha"], dtype=torch.float32),
            "source_beta": torch.tensor(item["beta"], dtype=torch.float32),
        }
