"""Sample inputs the project can make on any machine, without downloads: the scikit-image astronaut
(a public-domain NASA portrait that ships inside the ``scikit-image`` wheel) as a portrait, and driving
clips of that face moving (a real face the detector finds in every frame), optionally "talking" and
with an AAC tone track. Used by ``make demo`` and by the worker, e2e and CLI tests.

Clips are encoded frame by frame: nothing holds the whole clip in memory.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image
from skimage import data

SAMPLE_RATE = 44_100


def astronaut_portrait() -> np.ndarray:
    """The 512x512 RGB astronaut portrait (uint8)."""
    return np.asarray(data.astronaut())


def write_portrait(path: Path) -> Path:
    """The astronaut portrait as PNG (the format follows ``path``'s suffix)."""
    path = Path(path)
    Image.fromarray(astronaut_portrait()).save(path)
    return path


# The astronaut's mouth in scikit-image's 512² still, from dlib's iBUG-68 landmarks on it: the inner
# lips meet at y ≈ 147, the corners sit at x ≈ 202 and 246, the chin at y ≈ 178.
MOUTH_LINE_Y = 147.0
MOUTH_CENTRE_X = 224.0
JAW_HALF_WIDTH = 24.0  # px either side of the centre that the dropped jaw moves (fading to 0)
CHIN_Y = 178.0
NECK_FADE = 25.0  # px under the chin over which the jaw's drop fades out (the neck stretches)
MAX_JAW_DROP = 9.0  # px at the mouth's centre when fully open (the mouth is ~17 px tall)
MOUTH_INTERIOR = (72, 26, 32)


def open_mouth(image: np.ndarray, opening: float) -> np.ndarray:
    """The astronaut still with the jaw dropped by ``opening`` (0 closed, 1 fully open).

    Everything from the lip line down to the chin moves down by ``opening · MAX_JAW_DROP`` px at the
    mouth's centre (a parabola across the jaw, 0 at ±``JAW_HALF_WIDTH``), fading out over the neck;
    the lens-shaped gap this opens between the lips shows a dark mouth interior. A real opening that
    landmark detectors see as the inner lips parting.
    """
    drop = float(np.clip(opening, 0.0, 1.0)) * MAX_JAW_DROP
    if drop <= 0:
        return image
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    across = np.clip(1.0 - ((xs - MOUTH_CENTRE_X) / JAW_HALF_WIDTH) ** 2, 0.0, 1.0)
    down = np.clip(ys - MOUTH_LINE_Y + 1.0, 0.0, 1.0) * np.clip(
        (CHIN_Y + NECK_FADE - ys) / NECK_FADE, 0.0, 1.0
    )
    shift = drop * across * down
    source_y = ys - shift
    moved = cv2.remap(image, xs, source_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gap = (ys >= MOUTH_LINE_Y) & (source_y < MOUTH_LINE_Y)
    moved[gap] = MOUTH_INTERIOR
    return moved


def astronaut_frame(index: int, size: int = 256, *, talk: bool = False) -> np.ndarray:
    """Frame ``index`` of the astronaut's head swaying, nodding in scale and drifting sideways.

    ``talk`` also opens and closes the mouth (`open_mouth`: the jaw drops, the lips part), so
    expression tracking has something to follow: opening ``0.5 + 0.5 sin(index / 2.5)``. (Until
    December 2026 it stretched rows 225-265 of the still, which are the suit's collar, not the mouth:
    neither dlib nor the face stack saw a mouth move, r = 0.11 and −0.26 against that opening.)
    """
    image = data.astronaut()
    if talk:
        image = open_mouth(image, talk_opening(index))
    angle = 4.0 * np.sin(index / 5.0)
    scale = 1.0 + 0.03 * np.sin(index / 7.0)
    matrix = cv2.getRotationMatrix2D((256.0, 200.0), angle, scale)
    matrix[0, 2] += 6.0 * np.sin(index / 4.0)
    warped = cv2.warpAffine(image, matrix, (512, 512), borderMode=cv2.BORDER_REFLECT)
    # The head and shoulders, so the face stays large enough for the detector at small sizes.
    return cv2.resize(warped[0:300, 60:360], (size, size), interpolation=cv2.INTER_AREA)


def talk_opening(index: int) -> float:
    """The talking clip's mouth opening at frame ``index``, in [0, 1]."""
    return 0.5 + 0.5 * float(np.sin(index / 2.5))


def blank_frame(index: int, size: int = 256) -> np.ndarray:
    """A moving colour gradient without any face (for the no-face failure paths)."""
    yy, xx = np.mgrid[0:size, 0:size]
    value = (xx + yy + 3 * index) % 256
    return np.stack([value, value // 2, 255 - value], axis=-1).astype(np.uint8)


def _tone(start: int, count: int) -> av.AudioFrame:
    t = np.arange(start, start + count) / SAMPLE_RATE
    samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = start
    frame.time_base = Fraction(1, SAMPLE_RATE)
    return frame


def write_clip(
    path: Path,
    frames: int,
    *,
    fps: int = 25,
    size: int = 256,
    audio: bool = True,
    face: bool = True,
    talk: bool = False,
) -> Path:
    """An H.264 (yuv420p) MP4 of ``frames`` frames at ``fps``; with ``audio`` a 440 Hz AAC tone."""
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        stream_audio = None
        if audio:
            stream_audio = container.add_stream("aac", rate=SAMPLE_RATE)
            stream_audio.layout = "mono"
        per_frame = SAMPLE_RATE // fps
        for index in range(frames):
            image = astronaut_frame(index, size, talk=talk) if face else blank_frame(index, size)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
            if stream_audio is not None:
                for packet in stream_audio.encode(_tone(index * per_frame, per_frame)):
                    container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if stream_audio is not None:
            for packet in stream_audio.encode():
                container.mux(packet)
    return Path(path)


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An MP4 holding only an AAC tone (a "video" upload without any video stream)."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=SAMPLE_RATE)
        stream.layout = "mono"
        total = int(seconds * SAMPLE_RATE)
        step = 1024
        for start in range(0, total, step):
            for packet in stream.encode(_tone(start, step)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)
