"""Small synthetic uploads made on the fly, with no face in them: colourful images and tiny PyAV-encoded
clips, distinct per seed (content addressing sees different files). Load for the gateway benchmark
and inputs for the tests; ``shared/media/samples.py`` makes the real-face samples the model needs.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any


def make_image_bytes(size: tuple[int, int] = (128, 128), fmt: str = "PNG", seed: int = 0) -> bytes:
    """A small colourful image (distinct per seed, so content addressing sees different files)."""
    import numpy as np
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1), (xx + yy) % 256], axis=-1)
    noise = rng.integers(0, 32, size=(height, width, 3))
    pixels = ((base + noise) % 256).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def make_video_file(
    path: str | os.PathLike[str],
    *,
    frames: int = 8,
    size: tuple[int, int] = (64, 64),
    fps: int = 8,
    codec: str = "libx264",
    faststart: bool = False,
    seed: int = 0,
) -> Path:
    """Encode a tiny clip with PyAV (container from the suffix: .mp4, .mkv, .webm, .avi, .mov)."""
    import av
    import numpy as np

    path = Path(path)
    width, height = size
    options = {"movflags": "+faststart"} if faststart else {}
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "30"}
        yy, xx = np.mgrid[0:height, 0:width]
        for index in range(frames):
            shift = index * 4
            rgb = np.stack([(xx + shift) % 256, (yy + shift) % 256, (xx + yy) % 256], axis=-1)
            rgb = (rgb + rng.integers(0, 8, size=rgb.shape)) % 256
            frame = av.VideoFrame.from_ndarray(rgb.astype("uint8"), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_video_bytes(suffix: str = ".mp4", **kwargs: Any) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = make_video_file(Path(tmp) / f"clip{suffix}", **kwargs)
        return path.read_bytes()
