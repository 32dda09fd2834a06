"""Issue 16, item 2: a video whose frames outgrow its header cannot take a worker (or the gateway) down.

The clip: an H.264 stream in Matroska whose header (and first frames) say 64x64 and whose later frames
are 640x640 — admission reads the header and the first frame and accepts it under a 320x320 limit, as
a 320x240 -> 4096x4096 file passes the production limits. Decoding now holds every frame to the limits,
untrusted decoding runs first in a bounded child process (a native crash or memory exhaustion costs that
child, reported with a code), and /v1/verify refuses it on the real gateway stack. (A job whose worker
keeps dying fails as worker_crashed after N starts: tests/platform/test_leases.py.)"""

from __future__ import annotations

import io
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from shared.media.errors import MediaError
from shared.media.video import DecodeLimits, decode_limits, iter_frames, set_decode_limits
from shared.platform.errors import InputRejected
from shared.platform.inputs import InputLimits, inspect_media
from shared.platform.mediasandbox import (
    MEDIA_DECODER_CRASHED,
    SandboxLimits,
    check_video,
    run_sandboxed,
)


def _annexb(size: tuple[int, int], frames: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):  # smooth content: a small file whatever the frame size
            rgb = np.zeros((size[1], size[0], 3), dtype=np.uint8)
            rgb[..., 0] = (np.arange(size[0]) * 255 // size[0]).astype(np.uint8)
            rgb[..., 1] = (seed * 80 + index * 20) % 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def write_growing_mkv(folder: Path) -> Path:
    """64x64 for 5 frames, then 640x640 for 5 (10 fps, H.264 in Matroska)."""
    raw = folder / "switch.h264"
    raw.write_bytes(_annexb((64, 64), 5, 0) + _annexb((640, 640), 5, 1))
    path = folder / "switch.mkv"
    with av.open(str(raw), format="h264") as source, av.open(str(path), "w", format="matroska") as out:
        video = source.streams.video[0]
        stream = out.add_stream_from_template(video)
        stream.time_base = Fraction(1, 10)
        for index, packet in enumerate(p for p in source.demux(video) if p.size):
            packet.stream = stream
            packet.pts = packet.dts = index  # 10 fps
            packet.duration = 1
            packet.time_base = Fraction(1, 10)
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def growing_mkv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_growing_mkv(tmp_path_factory.mktemp("hostile"))


LIMITS = InputLimits(
    max_upload_bytes=1 << 20,
    max_image_pixels=1_000_000,
    min_image_side=32,
    max_video_seconds=3.0,
    max_video_fps=60.0,
    max_video_width=320,
    max_video_height=320,
    max_video_frames=120,
    allowed_video_codecs=frozenset({"h264"}),
)


@pytest.fixture
def small_decode_limits() -> object:
    before = decode_limits()
    set_decode_limits(DecodeLimits(320, 320))
    yield
    set_decode_limits(before)


def test_admission_accepts_it_from_its_header(growing_mkv: Path) -> None:
    info = inspect_media(growing_mkv, LIMITS, "video")
    assert (info.width, info.height, info.frame_count) == (64, 64, 10)  # why decoding must check too


def test_every_decoded_frame_is_held_to_the_limits(growing_mkv: Path, small_decode_limits: object) -> None:
    decoded = []
    with pytest.raises(MediaError) as refused:
        for frame in iter_frames(growing_mkv):
            decoded.append(frame.shape)
    assert refused.value.code == "video_frame_too_large"
    assert decoded == [(64, 64, 3)] * 5  # stopped at the first 640x640 frame, never converted it
    with pytest.raises(MediaError):  # resampled decoding too (frames dropped in time still checked)
        list(iter_frames(growing_mkv, target_fps=5))


def test_the_sandbox_refuses_it_with_a_code(growing_mkv: Path) -> None:
    with pytest.raises(InputRejected) as refused:
        check_video(growing_mkv, SandboxLimits(320, 320))
    assert refused.value.code == "video_frame_too_large" and refused.value.details["frames"] == 5
    assert check_video(growing_mkv, SandboxLimits(640, 640)) == {"ok": True, "frames": 10}


def test_a_native_crash_or_memory_exhaustion_costs_the_child_not_the_caller() -> None:
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    with pytest.raises(InputRejected) as crashed:
        run_sandboxed(crash, SandboxLimits(320, 320, timeout_s=30))
    assert crashed.value.code == MEDIA_DECODER_CRASHED and "SIGSEGV" in crashed.value.message
    hog = [sys.executable, "-c", "b = bytearray(3 << 30)"]  # 3 GiB under a 512 MiB address-space cap
    with pytest.raises(InputRejected) as exhausted:
        run_sandboxed(hog, SandboxLimits(320, 320, memory_bytes=512 << 20, timeout_s=30))
    assert exhausted.value.code == MEDIA_DECODER_CRASHED
    hang = [sys.executable, "-c", "import time; time.sleep(30)"]
    with pytest.raises(InputRejected) as hung:
        run_sandboxed(hang, SandboxLimits(320, 320, timeout_s=1))
    assert hung.value.code == "media_decode_timeout"
