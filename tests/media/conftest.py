"""Clips generated for the media tests (nothing downloaded): synthetic frames with an AAC track, and a
512x512 astronaut clip with slight camera motion that carries the label + invisible watermark."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from skimage import data

from shared.media.c2pa_sign import SigningChain, ensure_dev_chain
from shared.media.guardrails import apply_guardrails
from shared.media.video import VideoWriter
from shared.media.watermark import payload_for_job

FPS = 25
SAMPLE_RATE = 44_100
WATERMARK_SECRET = b"tests-media-secret-0123456789"
JOB_ID = "job-7f3c2a"


def gradient_frame(index: int, width: int, height: int) -> np.ndarray:
    """A frame whose mean brightness grows with ``index`` (decode order is checkable) plus a gradient."""
    x = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 40, height, dtype=np.float32)[:, None, None]
    base = np.float32(20 + 3 * index)
    frame = np.broadcast_to(base + x + y, (height, width, 3)).copy()
    frame[..., 1] *= 0.8
    return np.clip(frame, 0, 255).astype(np.uint8)


def write_av_clip(
    path: Path,
    frames: int,
    *,
    width: int = 96,
    height: int = 64,
    fps: int = FPS,
    audio_codec: str | None = "aac",
    container_format: str | None = None,
    rotation: int | None = None,
    gop: int | None = None,
) -> Path:
    """Source clip written with PyAV directly (not with the code under test): H.264 + a 440 Hz tone."""
    container = av.open(str(path), mode="w", format=container_format)
    video = container.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    if rotation is not None:
        video.set_display_rotation(rotation)
    if gop is not None:
        video.codec_context.gop_size = gop
    audio = None
    if audio_codec is not None:
        audio = container.add_stream(audio_codec, rate=SAMPLE_RATE)
        audio.layout = "mono"
    samples_per_frame = SAMPLE_RATE // fps
    sample = 0
    for index in range(frames):
        for packet in video.encode(
            av.VideoFrame.from_ndarray(gradient_frame(index, width, height), format="rgb24")
        ):
            container.mux(packet)
        if audio is not None:
            t = np.arange(sample, sample + samples_per_frame) / SAMPLE_RATE
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            if audio_codec.startswith("pcm_s16"):
                audio_frame = av.AudioFrame.from_ndarray(
                    (tone * 32767).astype(np.int16), format="s16", layout="mono"
                )
            else:
                audio_frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            audio_frame.sample_rate = SAMPLE_RATE
            audio_frame.pts = sample
            audio_frame.time_base = Fraction(1, SAMPLE_RATE)
            sample += samples_per_frame
            for packet in audio.encode(audio_frame):
                container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    if audio is not None:
        for packet in audio.encode():
            container.mux(packet)
    container.close()
    return path


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def source_clip(media_dir: Path) -> Path:
    """50 frames (2 s at 25 fps) of 96x64 video with an AAC tone."""
    return write_av_clip(media_dir / "source.mp4", 50)


def astronaut_motion_frames(count: int, size: int = 512) -> list[np.ndarray]:
    """The scikit-image astronaut portrait with a slow sub-frame pan, like a talking-head clip."""
    margin = 32
    image = cv2.resize(data.astronaut(), (size + margin, size + margin), interpolation=cv2.INTER_AREA)
    frames = []
    for index in range(count):
        dx = int(round(margin / 4 + 6 * np.sin(index / 4)))
        dy = int(round(margin / 4 + 4 * np.cos(index / 5)))
        frames.append(np.ascontiguousarray(image[dy : dy + size, dx : dx + size]))
    return frames


def dark_head_frames(
    count: int, size: int = 512, tone: tuple[float, float, float] = (150, 105, 62)
) -> list[np.ndarray]:
    """What the tiny model renders: a blurry, flat head on a black background (70 % of the pixels below
    20), drawn at 128 px and upsampled, drifting by a pixel or two. RivaGAN writes some bits of some
    payloads weakly on such frames (docs/media.md)."""
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
    colour = np.asarray(tone, dtype=np.float32)
    frames = []
    for index in range(count):
        cx, cy = 64 + 1.5 * np.sin(index / 3), 62 + np.cos(index / 4)
        small = np.zeros((128, 128, 3), np.float32)
        head = ((xx - cx) / 30) ** 2 + ((yy - cy) / 44) ** 2 <= 1
        shade = 0.75 + 0.35 * (1 - (yy - cy + 44) / 88)  # lit from above
        small[head] = colour * shade[head][:, None]
        for dx in (-11, 11):
            small[((xx - cx - dx) / 6) ** 2 + ((yy - cy + 6) / 3) ** 2 <= 1] *= 0.55  # eyes
        small[((xx - cx) / 9) ** 2 + ((yy - cy - 22) / 3) ** 2 <= 1] *= 0.6  # mouth
        small = cv2.GaussianBlur(small, (0, 0), 3.0)
        frames.append(
            np.clip(cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR), 0, 255).astype(np.uint8)
        )
    return frames


@dataclass(frozen=True)
class MarkedClip:
    path: Path  # labelled + watermarked, H.264 CRF 20, with the source clip's audio
    clean_path: Path  # the same frames without any mark
    payload: int
    frames: int


@pytest.fixture(scope="session")
def marked_clip(media_dir: Path, source_clip: Path) -> MarkedClip:
    frames = astronaut_motion_frames(16)
    payload = payload_for_job(JOB_ID, WATERMARK_SECRET)
    marked = apply_guardrails(frames, payload)
    path, clean_path = media_dir / "marked.mp4", media_dir / "clean.mp4"
    with VideoWriter(path, fps=FPS, width=512, height=512, audio_source=source_clip) as writer:
        writer.write(marked[:8])
        writer.write(marked[8:])
    with VideoWriter(clean_path, fps=FPS, width=512, height=512) as writer:
        writer.write(frames)
    return MarkedClip(path=path, clean_path=clean_path, payload=payload, frames=len(frames))


@pytest.fixture(scope="session")
def dev_chain(media_dir: Path) -> SigningChain:
    return ensure_dev_chain(media_dir / "c2pa-dev")


@pytest.fixture(autouse=True)
def _default_decode_limits() -> Iterator[None]:
    """The media tests decode with the platform's default frame limits. The gateway's app factory and
    the worker's context set the process's limits from their settings (320² in some gateway tests,
    whose app can outlive their own tests in the same process)."""
    from shared.media.video import DecodeLimits, decode_limits, set_decode_limits

    before = decode_limits()
    set_decode_limits(DecodeLimits())
    yield
    set_decode_limits(before)
