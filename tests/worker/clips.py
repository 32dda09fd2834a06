"""Driving clips generated for the worker tests: the scikit-image astronaut moving slightly (a real face
dlib finds in every frame), optionally with an AAC tone; and clips without any face."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from skimage import data

SAMPLE_RATE = 44_100


def astronaut_frame(index: int, size: int = 256) -> np.ndarray:
    image = data.astronaut()
    angle = 4.0 * np.sin(index / 5.0)
    scale = 1.0 + 0.03 * np.sin(index / 7.0)
    matrix = cv2.getRotationMatrix2D((256.0, 200.0), angle, scale)
    matrix[0, 2] += 6.0 * np.sin(index / 4.0)
    warped = cv2.warpAffine(image, matrix, (512, 512), borderMode=cv2.BORDER_REFLECT)
    # The head and shoulders, so the face stays large enough for the detector at small sizes.
    return cv2.resize(warped[0:300, 60:360], (size, size), interpolation=cv2.INTER_AREA)


def blank_frame(index: int, size: int = 256) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    value = (xx + yy + 3 * index) % 256
    return np.stack([value, value // 2, 255 - value], axis=-1).astype(np.uint8)


def write_clip(
    path: Path, frames: int, *, fps: int = 25, size: int = 256, audio: bool = True, face: bool = True
) -> Path:
    make = astronaut_frame if face else blank_frame
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
            for packet in video.encode(av.VideoFrame.from_ndarray(make(index, size), format="rgb24")):
                container.mux(packet)
            if stream_audio is not None:
                t = np.arange(index * per_frame, (index + 1) * per_frame) / SAMPLE_RATE
                tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                frame.sample_rate = SAMPLE_RATE
                frame.pts = index * per_frame
                frame.time_base = Fraction(1, SAMPLE_RATE)
                for packet in stream_audio.encode(frame):
                    container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if stream_audio is not None:
            for packet in stream_audio.encode():
                container.mux(packet)
    return path


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=SAMPLE_RATE)
        stream.layout = "mono"
        total = int(seconds * SAMPLE_RATE)
        step = 1024
        for start in range(0, total, step):
            t = np.arange(start, start + step) / SAMPLE_RATE
            frame = av.AudioFrame.from_ndarray(
                (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], format="fltp", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE
            frame.pts = start
            frame.time_base = Fraction(1, SAMPLE_RATE)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
