"""Admission checks for uploaded media: what a file *is* comes from its bytes, never its name or header.

- ``sniff``: magic bytes -> image (JPEG/PNG/WebP) or video container (MP4/MOV, Matroska/WebM, AVI).
- ``inspect_image``: pixel count from the header is bounded *before* any decode (decompression
  bombs), then the image is decoded once (bounded now) so truncated files are caught here.
- ``inspect_video``: PyAV reads the headers (codec, resolution, fps, duration) and refuses anything
  beyond the limits before decoding; then it decodes only the first frame and demuxes (does not
  decode) every packet, which measures the real length (headers can lie) and finds truncation.

Every refusal is an ``InputRejected`` with a stable code and the measured facts in ``details``.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Literal

from shared.platform.errors import (
    AUDIO_CODEC_NOT_ALLOWED,
    CORRUPT_MEDIA,
    EMPTY_UPLOAD,
    IMAGE_TOO_LARGE,
    IMAGE_TOO_SMALL,
    UNSUPPORTED_MEDIA_TYPE,
    VIDEO_CODEC_NOT_ALLOWED,
    VIDEO_FPS_TOO_HIGH,
    VIDEO_TOO_LARGE,
    VIDEO_TOO_LONG,
    VIDEO_TOO_MANY_FRAMES,
    WRONG_MEDIA_KIND,
    InputRejected,
)
from shared.platform.settings import DEFAULT_AUDIO_CODECS, Settings

MediaKind = Literal["image", "video"]
SNIFF_BYTES = 64

# Formats Pillow must report for each sniffed image type (a mismatch means a disguised file).
_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
# Substrings of FFmpeg demuxer names for each sniffed container family.
_AV_FORMATS = {"mp4": "mp4", "quicktime": "mov", "webm": "webm", "matroska": "matroska", "avi": "avi"}


@dataclass(frozen=True)
class InputLimits:
    max_upload_bytes: int
    max_image_pixels: int
    min_image_side: int
    max_video_seconds: float
    max_video_fps: float
    max_video_width: int
    max_video_height: int
    max_video_frames: int
    allowed_video_codecs: frozenset[str]
    allowed_audio_codecs: frozenset[str] = frozenset(DEFAULT_AUDIO_CODECS)

    @classmethod
    def from_settings(cls, settings: Settings) -> InputLimits:
        return cls(
            max_upload_bytes=settings.max_upload_bytes,
            max_image_pixels=settings.max_image_pixels,
            min_image_side=settings.min_image_side,
            max_video_seconds=settings.max_video_seconds,
            max_video_fps=settings.max_video_fps,
            max_video_width=settings.max_video_width,
            max_video_height=settings.max_video_height,
            max_video_frames=settings.max_video_frames,
            allowed_video_codecs=frozenset(c.lower() for c in settings.allowed_video_codecs),
            allowed_audio_codecs=frozenset(c.lower() for c in settings.allowed_audio_codecs),
        )


@dataclass(frozen=True)
class Sniffed:
    kind: MediaKind
    media_type: str  # MIME type decided from the bytes
    family: str  # jpeg/png/webp or mp4/quicktime/webm/matroska/avi


@dataclass(frozen=True)
class MediaInfo:
    kind: MediaKind
    media_type: str
    width: int
    height: int
    format: str
    fps: float | None = None
    duration_s: float | None = None
    frame_count: int | None = None
    codec: str | None = None
    has_audio: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}


def _reject(code: str, message: str, status: int = 422, **details: Any) -> InputRejected:
    return InputRejected(code, message, status=status, details=details)


def sniff(head: bytes) -> Sniffed:
    """Identify a file from its first bytes. Raises ``unsupported_media_type`` (415) for anything else."""
    if not head:
        raise _reject(EMPTY_UPLOAD, "the uploaded file is empty")
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "image/jpeg", "jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "image/png", "png")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("image", "image/webp", "webp")
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return Sniffed("video", "video/x-msvideo", "avi")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return Sniffed("video", "video/quicktime", "quicktime")
        if brand[:3] in {b"hei", b"mif", b"avi", b"msf"}:  # HEIF/AVIF stills share the ISO box layout
            raise _reject(
                UNSUPPORTED_MEDIA_TYPE,
                "HEIF/AVIF images are not supported",
                415,
                brand=brand.decode("latin-1"),
            )
        return Sniffed("video", "video/mp4", "mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        if b"webm" in head:
            return Sniffed("video", "video/webm", "webm")
        return Sniffed("video", "video/x-matroska", "matroska")
    raise _reject(
        UNSUPPORTED_MEDIA_TYPE,
        "unsupported file type: portraits must be JPEG, PNG or WebP; videos MP4, MOV, WebM, MKV or AVI",
        415,
    )


def sniff_file(path: str | os.PathLike[str]) -> Sniffed:
    with open(path, "rb") as handle:
        return sniff(handle.read(SNIFF_BYTES))


def inspect_image(path: str | os.PathLike[str], sniffed: Sniffed, limits: InputLimits) -> MediaInfo:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns above its global limit; ours is stricter and explicit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=[_PIL_FORMATS[sniffed.media_type]]) as image:
                width, height = image.size
                _check_image_size(width, height, limits)
                image.load()  # full decode, bounded by the check above; raises on truncated data
                mode = image.mode
    except InputRejected:
        raise
    except Image.DecompressionBombError as exc:  # Pillow refused at open: far beyond any sane limit
        # Pillow's message quotes its own global limit (178,956,970 pixels); the user's limit is ours.
        raise _reject(
            IMAGE_TOO_LARGE,
            f"image is far larger than the limit of {_pixels(limits.max_image_pixels)}; refused before decoding",
            max_pixels=limits.max_image_pixels,
        ) from exc
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as exc:
        raise _reject(CORRUPT_MEDIA, f"the image could not be decoded (truncated or corrupt): {exc}") from exc
    return MediaInfo(
        kind="image",
        media_type=sniffed.media_type,
        width=width,
        height=height,
        format=sniffed.family,
        extra={"mode": mode},
    )


def _check_image_size(width: int, height: int, limits: InputLimits) -> None:
    if width * height > limits.max_image_pixels:
        raise _reject(
            IMAGE_TOO_LARGE,
            f"image is {width}x{height} = {width * height:,} pixels; the limit is {_pixels(limits.max_image_pixels)}",
            width=width,
            height=height,
            max_pixels=limits.max_image_pixels,
        )
    if min(width, height) < limits.min_image_side:
        raise _reject(
            IMAGE_TOO_SMALL,
            f"image is {width}x{height}; both sides must be at least {limits.min_image_side} px",
            width=width,
            height=height,
        )


def _pixels(count: int) -> str:
    """``25,000,000 pixels (25 MP)``: the platform's limit as users read it."""
    return f"{count:,} pixels ({count / 1e6:g} MP)"


def _rate(stream: Any) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def inspect_video(path: str | os.PathLike[str], sniffed: Sniffed, limits: InputLimits) -> MediaInfo:
    import av

    try:
        container = av.open(os.fspath(path), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise _reject(CORRUPT_MEDIA, f"the video could not be opened (truncated or corrupt): {exc}") from exc
    with container:
        format_name = container.format.name
        if _AV_FORMATS[sniffed.family] not in format_name:
            raise _reject(
                CORRUPT_MEDIA, f"container says {format_name!r} but the bytes look like {sniffed.family}"
            )
        if not container.streams.video:
            raise _reject(WRONG_MEDIA_KIND, "the file holds no video stream", 415)
        _check_stream_codecs(container, limits)
        stream = container.streams.video[0]
        codec = _codec_name(stream)
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        fps = _rate(stream)
        header_duration = _header_duration(container, stream)
        if width <= 0 or height <= 0:
            raise _reject(CORRUPT_MEDIA, "the video stream declares no frame size")
        if width > limits.max_video_width or height > limits.max_video_height:
            raise _reject(
                VIDEO_TOO_LARGE,
                f"video is {width}x{height}; the limit is {limits.max_video_width}x{limits.max_video_height}",
                width=width,
                height=height,
            )
        if fps is not None and float(fps) > limits.max_video_fps + 1e-6:
            raise _reject(
                VIDEO_FPS_TOO_HIGH,
                f"video is {float(fps):.2f} fps; the limit is {limits.max_video_fps}",
                fps=float(fps),
            )
        _check_duration(header_duration, limits)
        declared_frames = int(stream.frames or 0)
        if declared_frames > limits.max_video_frames:
            raise _reject(
                VIDEO_TOO_MANY_FRAMES,
                f"video has {declared_frames} frames; the limit is {limits.max_video_frames}",
                frames=declared_frames,
            )
        _decode_first_frame(container, stream)
        counted, measured_duration = _demux_all(container, stream, limits)
        if measured_duration <= 0.0 and fps:  # no timestamps on the packets (e.g. some AVI files)
            measured_duration = counted / float(fps)
        _check_duration(measured_duration, limits)
        if declared_frames and counted < declared_frames:
            raise _reject(
                CORRUPT_MEDIA,
                f"the video is truncated: {counted} of {declared_frames} frames are present",
                frames_present=counted,
                frames_declared=declared_frames,
            )
        frame_s = 1.0 / float(fps) if fps else 0.04
        if header_duration and measured_duration < 0.9 * header_duration - 2 * frame_s:
            raise _reject(
                CORRUPT_MEDIA,
                f"the video is truncated: {measured_duration:.2f} s of the declared {header_duration:.2f} s are present",
                seconds_present=round(measured_duration, 3),
                seconds_declared=round(header_duration, 3),
            )
        duration = max(header_duration or 0.0, measured_duration)
        if fps is None:
            fps = Fraction(counted / duration).limit_denominator(1001) if duration > 0 else Fraction(25)
        return MediaInfo(
            kind="video",
            media_type=sniffed.media_type,
            width=width,
            height=height,
            format=sniffed.family,
            fps=round(float(fps), 4),
            duration_s=round(duration, 4),
            frame_count=counted,
            codec=codec,
            has_audio=bool(container.streams.audio),
        )


def _codec_name(stream: Any) -> str:
    context = stream.codec_context
    return ((context.name if context is not None else None) or "").lower()


def _check_stream_codecs(container: Any, limits: InputLimits) -> None:
    """Every video and every audio stream against its allow-list, not only the stream we animate from:
    a decoder reachable through a second track is attack surface all the same."""
    for stream in container.streams.video:
        codec = _codec_name(stream)
        if codec not in limits.allowed_video_codecs:
            raise _reject(
                VIDEO_CODEC_NOT_ALLOWED,
                f"video stream {stream.index} uses codec {codec!r}, which is not accepted; "
                f"use one of {sorted(limits.allowed_video_codecs)}",
                415,
                codec=codec,
                stream=stream.index,
            )
    for stream in container.streams.audio:
        codec = _codec_name(stream)
        if codec not in limits.allowed_audio_codecs:
            raise _reject(
                AUDIO_CODEC_NOT_ALLOWED,
                f"audio stream {stream.index} uses codec {codec!r}, which is not accepted; "
                f"use one of {sorted(limits.allowed_audio_codecs)} (or remove the audio)",
                415,
                codec=codec,
                stream=stream.index,
            )


def _header_duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _check_duration(duration: float | None, limits: InputLimits) -> None:
    if duration is not None and duration > limits.max_video_seconds + 1e-6:
        raise _reject(
            VIDEO_TOO_LONG,
            f"video lasts {duration:.2f} s; the limit is {limits.max_video_seconds:g} s",
            duration_s=round(duration, 3),
        )


def _decode_first_frame(container: Any, stream: Any) -> None:
    import av

    try:
        for _frame in container.decode(stream):
            break
        else:
            raise _reject(CORRUPT_MEDIA, "the video stream holds no decodable frame")
    except av.FFmpegError as exc:
        raise _reject(CORRUPT_MEDIA, f"the first video frame could not be decoded: {exc}") from exc
    container.seek(0, stream=stream)  # rewind: the packet count below must include the first frame


def _demux_all(container: Any, stream: Any, limits: InputLimits) -> tuple[int, float]:
    """Count the video packets without decoding them; returns (count, measured seconds)."""
    import av

    count = 0
    first_pts: int | None = None
    end_pts: int | None = None
    time_base = stream.time_base or Fraction(1, 1000)
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream flush packet
                continue
            count += 1
            if count > limits.max_video_frames:
                raise _reject(
                    VIDEO_TOO_MANY_FRAMES,
                    f"video has more than {limits.max_video_frames} frames",
                    frames=count,
                )
            if packet.pts is not None:
                first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
                packet_end = packet.pts + (packet.duration or 0)
                end_pts = packet_end if end_pts is None else max(end_pts, packet_end)
                if count % 64 == 0:  # lying headers: stop reading as soon as the real length is too long
                    _check_duration(float((end_pts - first_pts) * time_base), limits)
    except av.FFmpegError as exc:
        raise _reject(CORRUPT_MEDIA, f"the video is truncated or corrupt: {exc}") from exc
    if count == 0:
        raise _reject(CORRUPT_MEDIA, "the video stream holds no frames")
    measured = (
        float((end_pts - first_pts) * time_base) if first_pts is not None and end_pts is not None else 0.0
    )
    if not math.isfinite(measured) or measured < 0:
        raise _reject(CORRUPT_MEDIA, "the video timestamps are not valid")
    return count, measured


def inspect_media(
    path: str | os.PathLike[str], limits: InputLimits, expected_kind: MediaKind | None = None
) -> MediaInfo:
    """Sniff and inspect a file; ``expected_kind`` refuses e.g. a video given as the portrait."""
    size = os.path.getsize(path)
    if size == 0:
        raise _reject(EMPTY_UPLOAD, "the uploaded file is empty")
    sniffed = sniff_file(path)
    if expected_kind is not None and sniffed.kind != expected_kind:
        raise _reject(
            WRONG_MEDIA_KIND,
            f"expected {'an image' if expected_kind == 'image' else 'a video'} but the bytes are {sniffed.media_type}",
            415,
            expected=expected_kind,
            sniffed=sniffed.media_type,
        )
    if sniffed.kind == "image":
        return inspect_image(path, sniffed, limits)
    return inspect_video(path, sniffed, limits)
