"""Video decode/encode for the reenactment worker, streaming and in bounded memory.

- :func:`probe_video` reads a clip's facts (size, fps, frame count, audio) and proves its first frame decodes.
- :func:`iter_frame_chunks` decodes RGB frames chunk by chunk (never the whole clip), optionally resampled to
  a target fps by dropping/duplicating frames on their timestamps.
- :class:`VideoWriter` writes browser-playable H.264 (libx264, yuv420p, ``+faststart``) and carries the
  audio of a source clip over without re-encoding, interleaved with the video as it is written and trimmed
  to the written video's duration.
- :func:`reencode` re-encodes a clip (CRF, resize): used to test watermark robustness.

Decoded frames honour the display-matrix rotation (phone clips), so frame ``i`` is what a player shows.

Every decoded frame is held to the process's :class:`DecodeLimits` (``set_decode_limits``; the gateway
and the worker set them from the platform's video limits): a stream whose header says 320x240 but
whose frames switch to 4096x4096 mid-stream fails with ``video_frame_too_large`` at the first such
frame, before it is converted or kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import av.error
import cv2
import numpy as np

from shared.media.errors import (
    AUDIO_UNREADABLE,
    FILE_NOT_FOUND,
    VIDEO_INVALID_ARGUMENT,
    VIDEO_INVALID_FRAME,
    VIDEO_NO_FRAMES,
    VIDEO_NO_VIDEO_STREAM,
    VIDEO_UNREADABLE,
    MediaError,
)

PathLike = str | os.PathLike[str]

VIDEO_FRAME_TOO_LARGE = "video_frame_too_large"


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on every decoded frame (coded size, before rotation)."""

    max_width: int = 4096
    max_height: int = 4096


_decode_limits = DecodeLimits()


def set_decode_limits(limits: DecodeLimits) -> None:
    """The bounds this process holds every decoded frame to (default 4096x4096)."""
    global _decode_limits
    _decode_limits = limits


def decode_limits() -> DecodeLimits:
    return _decode_limits


def check_frame_size(frame: av.VideoFrame, index: int | None = None) -> None:
    """Raise ``video_frame_too_large`` when a decoded frame is larger than the decode limits."""
    limits = _decode_limits
    if frame.width > limits.max_width or frame.height > limits.max_height:
        where = f"frame {index}" if index is not None else "a frame"
        raise MediaError(
            VIDEO_FRAME_TOO_LARGE,
            f"{where} of the video decodes to {frame.width}x{frame.height}; the limit is "
            f"{limits.max_width}x{limits.max_height} (the stream changed size after its header)",
            {"width": frame.width, "height": frame.height, "frame": index},
        )


DEFAULT_CRF = 20
DEFAULT_PRESET = "medium"
# Audio codecs the MP4 muxer stores as-is and browsers play; anything else is transcoded to AAC.
MP4_COPYABLE_AUDIO_CODECS = frozenset({"aac", "mp3", "opus", "flac", "alac", "ac3", "eac3"})
# AAC/Opus streams start with encoder-priming packets stamped slightly before zero; the muxer turns them
# into an edit list. Keep packets that end within this much before the first video frame, drop older ones.
AUDIO_PRIMING_TOLERANCE_S = 0.05
_FLOAT_FPS_MAX_DENOMINATOR = 1001


@dataclass(frozen=True)
class VideoInfo:
    """Facts about a clip. ``width``/``height`` are the displayed size (rotation applied)."""

    path: str
    width: int
    height: int
    fps: Fraction
    frame_count: int
    frame_count_exact: bool  # False when estimated from duration x fps (container did not state it)
    duration_s: float
    codec: str
    pix_fmt: str | None
    rotation: int  # counter-clockwise degrees applied to decoded frames for display (0, 90, 180, 270)
    has_audio: bool
    audio_codec: str | None

    @property
    def fps_float(self) -> float:
        return float(self.fps)


@dataclass(frozen=True)
class WriteResult:
    """What :class:`VideoWriter` produced."""

    path: str
    frames_written: int
    fps: Fraction
    duration_s: float
    audio_mode: str  # "none", "copy" or "transcode"
    audio_packets: int


def _as_fraction(fps: Fraction | float | int, *, what: str = "fps") -> Fraction:
    if isinstance(fps, Fraction):
        value = fps
    elif isinstance(fps, int):
        value = Fraction(fps)
    else:
        if not math.isfinite(fps):
            raise MediaError(VIDEO_INVALID_ARGUMENT, f"{what} must be finite, got {fps!r}")
        value = Fraction(fps).limit_denominator(_FLOAT_FPS_MAX_DENOMINATOR)
    if value <= 0:
        raise MediaError(VIDEO_INVALID_ARGUMENT, f"{what} must be > 0, got {fps!r}")
    return value


def _open_input(path: PathLike) -> av.container.InputContainer:
    """Open a media file for reading, mapping FFmpeg's failures to typed errors."""
    path_str = os.fspath(path)
    if not os.path.isfile(path_str):
        raise MediaError(FILE_NOT_FOUND, f"video file not found: {path_str}", {"path": path_str})
    try:
        return av.open(path_str, mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise MediaError(
            VIDEO_UNREADABLE, f"cannot open {Path(path_str).name} as a video: {exc}", {"path": path_str}
        ) from exc


def _video_stream(container: av.container.InputContainer, path: PathLike) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise MediaError(
            VIDEO_NO_VIDEO_STREAM, f"{Path(path).name} holds no video track", {"path": os.fspath(path)}
        )
    return container.streams.video[0]


def _stream_fps(stream: av.video.stream.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def _codec_name(stream: av.stream.Stream) -> str:
    """The codec's canonical id name ("mp3"), not the decoder's ("mp3float")."""
    codec = stream.codec_context.codec
    return getattr(codec, "canonical_name", None) or codec.name


def _quarter_turns(rotation: float) -> int:
    """Counter-clockwise quarter turns for a display rotation in degrees (non-right angles are rounded)."""
    return int(round(rotation / 90.0)) % 4


def probe_video(path: PathLike) -> VideoInfo:
    """Read a clip's facts; decodes the first frame so a clip that cannot be decoded fails here, early.

    Raises ``MediaError`` with ``file_not_found``, ``video_unreadable``, ``video_no_video_stream`` or
    ``video_no_frames``.
    """
    path_str = os.fspath(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream)
        if stream.duration is not None and stream.time_base is not None:
            duration_s = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration_s = container.duration / av.time_base
        else:
            duration_s = 0.0
        first = _first_frame(container, stream, path_str)
        if fps is None:
            # No rate anywhere in the headers: a single still frame or a broken stream; 25 keeps maths sane.
            fps = Fraction(25)
        frame_count_exact = bool(stream.frames and stream.frames > 0)
        frame_count = int(stream.frames) if frame_count_exact else max(1, int(round(duration_s * float(fps))))
        if duration_s <= 0.0:
            duration_s = frame_count / float(fps)
        turns = _quarter_turns(first.rotation)
        width, height = (first.width, first.height) if turns % 2 == 0 else (first.height, first.width)
        audio = container.streams.audio[0] if container.streams.audio else None
        return VideoInfo(
            path=path_str,
            width=width,
            height=height,
            fps=fps,
            frame_count=frame_count,
            frame_count_exact=frame_count_exact,
            duration_s=duration_s,
            codec=_codec_name(stream),
            pix_fmt=stream.codec_context.pix_fmt,
            rotation=turns * 90,
            has_audio=audio is not None,
            audio_codec=_codec_name(audio) if audio is not None else None,
        )


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: str
) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            check_frame_size(frame, 0)
            return frame
    except av.error.FFmpegError as exc:
        raise MediaError(VIDEO_UNREADABLE, f"cannot decode {Path(path).name}: {exc}", {"path": path}) from exc
    raise MediaError(VIDEO_NO_FRAMES, f"{Path(path).name} has a video track with no frames", {"path": path})


def _to_rgb(frame: av.VideoFrame, apply_rotation: bool) -> np.ndarray:
    check_frame_size(frame)  # every frame anyone converts (worker, watermark sampling, verify)
    rgb = frame.to_ndarray(format="rgb24")
    if apply_rotation:
        turns = _quarter_turns(frame.rotation)
        if turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, turns))
    return rgb


def iter_frames(
    path: PathLike,
    *,
    max_frames: int | None = None,
    target_fps: Fraction | float | int | None = None,
    apply_rotation: bool = True,
) -> Iterator[np.ndarray]:
    """Yield RGB uint8 HxWx3 frames one at a time; at most one decoded frame is held.

    With ``target_fps`` the output is resampled in time: output frame ``k`` (at ``k / target_fps`` seconds
    after the first frame) is the source frame nearest in presentation time, so a lower rate drops frames
    and a higher one repeats them. Duplicates are copies, so callers may edit frames in place.
    """
    if max_frames is not None and max_frames < 1:
        raise MediaError(VIDEO_INVALID_ARGUMENT, f"max_frames must be >= 1, got {max_frames}")
    out_rate = _as_fraction(target_fps, what="target_fps") if target_fps is not None else None
    path_str = os.fspath(path)
    emitted = 0
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        # Frame threading: decoding is a small share of the worker's time, but it is free speed.
        stream.thread_type = "AUTO"
        source_step = 1.0 / float(_stream_fps(stream) or 25)
        try:
            if out_rate is None:
                for frame in container.decode(stream):
                    check_frame_size(frame, emitted)
                    yield _to_rgb(frame, apply_rotation)
                    emitted += 1
                    if max_frames is not None and emitted >= max_frames:
                        return
            else:
                for rgb in _resample(container.decode(stream), source_step, float(out_rate), apply_rotation):
                    yield rgb
                    emitted += 1
                    if max_frames is not None and emitted >= max_frames:
                        return
        except av.error.FFmpegError as exc:
            raise MediaError(
                VIDEO_UNREADABLE,
                f"decoding {Path(path_str).name} failed after {emitted} frames: {exc}",
                {"path": path_str, "frames_decoded": emitted},
            ) from exc
    if emitted == 0:
        raise MediaError(VIDEO_NO_FRAMES, f"{Path(path_str).name} decoded to no frames", {"path": path_str})


def _resample(
    frames: Iterable[av.VideoFrame], source_step: float, out_fps: float, apply_rotation: bool
) -> Iterator[np.ndarray]:
    """Nearest-in-time resampling; each source frame covers [midpoint to previous, midpoint to next)."""
    out_step = 1.0 / out_fps
    eps = 1e-6
    next_out = 0  # index of the next output frame
    start: float | None = None
    held: av.VideoFrame | None = None
    held_time = 0.0
    held_rgb: np.ndarray | None = None
    decoded = 0

    def emit_until(boundary: float) -> Iterator[np.ndarray]:
        nonlocal next_out, held_rgb
        while held is not None and next_out * out_step < boundary - eps:
            if held_rgb is None:
                held_rgb = _to_rgb(held, apply_rotation)
            # Always a copy: a caller editing one output in place must not alter the repeats that follow.
            yield held_rgb.copy()
            next_out += 1

    for frame in frames:
        check_frame_size(frame, decoded)  # every decoded frame, also those dropped by resampling
        time_s = frame.time if frame.time is not None else decoded * source_step
        decoded += 1
        if start is None:
            start = time_s
        relative = time_s - start
        if held is not None and relative <= held_time:
            # Broken or repeated timestamps: fall back to the nominal frame spacing.
            relative = held_time + source_step
        if held is not None:
            yield from emit_until((held_time + relative) / 2.0)
        held, held_time, held_rgb = frame, relative, None
    if held is not None:
        # The last frame is shown for its whole duration, so the output spans the same time as the source.
        yield from emit_until(held_time + source_step)


def iter_frame_chunks(
    path: PathLike,
    chunk_size: int,
    *,
    max_frames: int | None = None,
    target_fps: Fraction | float | int | None = None,
    apply_rotation: bool = True,
) -> Iterator[list[np.ndarray]]:
    """Yield lists of up to ``chunk_size`` RGB uint8 HxWx3 frames; memory is bounded by one chunk."""
    if chunk_size < 1:
        raise MediaError(VIDEO_INVALID_ARGUMENT, f"chunk_size must be >= 1, got {chunk_size}")
    chunk: list[np.ndarray] = []
    for frame in iter_frames(
        path, max_frames=max_frames, target_fps=target_fps, apply_rotation=apply_rotation
    ):
        chunk.append(frame)
        if len(chunk) == chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _AudioCopier:
    """Remuxes a source's audio packets into the output, as the video advances (no re-encoding)."""

    mode = "copy"

    def __init__(
        self,
        output: av.container.OutputContainer,
        source: av.container.InputContainer,
        in_stream: av.audio.stream.AudioStream,
        offset_s: float,
    ) -> None:
        self._output = output
        self._in_stream = in_stream
        self._out_stream = output.add_stream_from_template(in_stream)
        self._offset_s = offset_s
        self._packets = source.demux(in_stream)
        self._pending: av.Packet | None = None
        self._exhausted = False
        self.packets_written = 0

    def _next_packet(self) -> av.Packet | None:
        if self._pending is not None:
            packet, self._pending = self._pending, None
            return packet
        while not self._exhausted:
            try:
                packet = next(self._packets)
            except StopIteration:
                self._exhausted = True
                return None
            except av.error.FFmpegError:
                # A damaged tail in the audio must not cost the user the video: stop copying audio there.
                self._exhausted = True
                return None
            if packet.size and packet.pts is not None:
                return packet
        return None

    def pump(self, until_s: float) -> None:
        """Mux every audio packet that starts before ``until_s`` (output seconds)."""
        time_base = self._in_stream.time_base
        offset_ticks = int(round(self._offset_s / time_base))
        while True:
            packet = self._next_packet()
            if packet is None:
                return
            start_s = float((packet.pts - offset_ticks) * time_base)
            if start_s >= until_s:
                self._pending = packet
                return
            end_s = start_s + float((packet.duration or 0) * time_base)
            if end_s <= -AUDIO_PRIMING_TOLERANCE_S:
                continue  # audio from before the first video frame
            packet.pts -= offset_ticks
            if packet.dts is not None:
                packet.dts -= offset_ticks
            packet.stream = self._out_stream
            self._output.mux(packet)
            self.packets_written += 1

    def finish(self, end_s: float) -> None:
        self.pump(end_s)


class _AudioTranscoder:
    """Fallback for audio the MP4 muxer or browsers cannot take as-is (PCM, Vorbis...): re-encode to AAC."""

    mode = "transcode"
    _AAC_BITRATE = 128_000

    def __init__(
        self,
        output: av.container.OutputContainer,
        source: av.container.InputContainer,
        in_stream: av.audio.stream.AudioStream,
        offset_s: float,
    ) -> None:
        self._output = output
        self._in_stream = in_stream
        rate = in_stream.codec_context.sample_rate or 48_000
        layout = "mono" if (in_stream.codec_context.channels or 2) == 1 else "stereo"
        self._out_stream = output.add_stream("aac", rate=rate)
        self._out_stream.layout = layout
        self._out_stream.bit_rate = self._AAC_BITRATE
        self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        self._rate = rate
        self._offset_s = offset_s
        self._frames = source.decode(in_stream)
        self._pending: av.AudioFrame | None = None
        self._exhausted = False
        self._samples_out = 0
        self.packets_written = 0

    def _next_frame(self) -> av.AudioFrame | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        if self._exhausted:
            return None
        try:
            return next(self._frames)
        except (StopIteration, av.error.FFmpegError):
            self._exhausted = True
            return None

    def _encode(self, frame: av.AudioFrame | None) -> None:
        for packet in self._out_stream.encode(frame):
            self._output.mux(packet)
            self.packets_written += 1

    def pump(self, until_s: float) -> None:
        while True:
            frame = self._next_frame()
            if frame is None:
                return
            start_s = (frame.time if frame.time is not None else 0.0) - self._offset_s
            if start_s >= until_s:
                self._pending = frame
                return
            end_s = start_s + frame.samples / float(frame.sample_rate or self._rate)
            if end_s <= 0.0:
                continue
            for resampled in self._resampler.resample(frame):
                # Sample-counted timestamps keep the AAC track gapless whatever the source's stamps were.
                resampled.pts = self._samples_out
                resampled.time_base = Fraction(1, self._rate)
                self._samples_out += resampled.samples
                self._encode(resampled)

    def finish(self, end_s: float) -> None:
        self.pump(end_s)
        for resampled in self._resampler.resample(None):
            resampled.pts = self._samples_out
            resampled.time_base = Fraction(1, self._rate)
            self._samples_out += resampled.samples
            self._encode(resampled)
        self._encode(None)


class VideoWriter:
    """Context manager writing H.264/yuv420p MP4 (``+faststart``), frames given in chunks.

    With ``audio_source`` the first audio track of that file is carried over (packet remux, no re-encoding;
    codecs MP4 cannot hold are transcoded to AAC) and interleaved with the video as it is written. Audio is
    aligned so that source time ``t_v0`` (the source's first video frame) plays with output frame 0, and is
    cut at the written video's duration (packet precision, ~21 ms for AAC), so a clip cut short by a frame
    limit gets matching audio. On an exception inside the ``with`` block the partial file is deleted.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        fps: Fraction | float | int,
        width: int,
        height: int,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        audio_source: PathLike | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.fps = _as_fraction(fps)
        if width < 2 or height < 2 or width % 2 or height % 2:
            raise MediaError(
                VIDEO_INVALID_ARGUMENT,
                f"H.264 yuv420p needs even width and height >= 2, got {width}x{height}",
                {"width": width, "height": height},
            )
        if not 0 <= crf <= 51:
            raise MediaError(VIDEO_INVALID_ARGUMENT, f"crf must be in [0, 51], got {crf}")
        self.width = width
        self.height = height
        self.crf = crf
        self.preset = preset
        self.audio_source = os.fspath(audio_source) if audio_source is not None else None
        self._container: av.container.OutputContainer | None = None
        self._video: av.video.stream.VideoStream | None = None
        self._audio_in: av.container.InputContainer | None = None
        self._audio: _AudioCopier | _AudioTranscoder | None = None
        self._frames_written = 0
        self._result: WriteResult | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def open(self) -> VideoWriter:
        if self._container is not None:
            return self
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        audio_in, audio_stream, offset_s = self._open_audio_source()
        try:
            container = av.open(self.path, mode="w", format="mp4", options={"movflags": "+faststart"})
        except av.error.FFmpegError as exc:
            if audio_in is not None:
                audio_in.close()
            raise MediaError(VIDEO_INVALID_ARGUMENT, f"cannot create {self.path}: {exc}") from exc
        self._container = container
        video = container.add_stream("libx264", rate=self.fps)
        video.width = self.width
        video.height = self.height
        video.pix_fmt = "yuv420p"
        video.options = {"crf": str(self.crf), "preset": self.preset}
        self._video = video
        if audio_in is not None and audio_stream is not None:
            self._audio_in = audio_in
            helper = (
                _AudioCopier if _codec_name(audio_stream) in MP4_COPYABLE_AUDIO_CODECS else _AudioTranscoder
            )
            self._audio = helper(container, audio_in, audio_stream, offset_s)
        elif audio_in is not None:
            audio_in.close()
        return self

    def _open_audio_source(
        self,
    ) -> tuple[av.container.InputContainer | None, av.audio.stream.AudioStream | None, float]:
        if self.audio_source is None:
            return None, None, 0.0
        if not os.path.isfile(self.audio_source):
            raise MediaError(FILE_NOT_FOUND, f"audio source not found: {self.audio_source}")
        try:
            source = av.open(self.audio_source, mode="r")
        except av.error.FFmpegError as exc:
            raise MediaError(
                AUDIO_UNREADABLE, f"cannot open audio source {self.audio_source}: {exc}"
            ) from exc
        if not source.streams.audio:
            return source, None, 0.0
        audio_stream = source.streams.audio[0]
        # Output frame 0 is the source's first video frame; shift audio by the video track's start.
        offset_s = 0.0
        if source.streams.video:
            video_in = source.streams.video[0]
            if video_in.start_time is not None and video_in.time_base is not None:
                offset_s = float(video_in.start_time * video_in.time_base)
        return source, audio_stream, offset_s

    def __enter__(self) -> VideoWriter:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- writing ---------------------------------------------------------------------------------------
    @property
    def frames_written(self) -> int:
        return self._frames_written

    def write(self, frames: np.ndarray | Iterable[np.ndarray]) -> None:
        """Encode frames: one HxWx3 uint8 RGB array, an NxHxWx3 array, or an iterable of HxWx3 arrays."""
        if self._container is None or self._video is None:
            self.open()
        assert self._video is not None and self._container is not None
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = [frames]
        for frame in frames:
            self._check_frame(frame)
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = self._frames_written
            self._frames_written += 1
            for packet in self._video.encode(video_frame):
                self._mux_video(packet)

    def _check_frame(self, frame: Any) -> None:
        if (
            not isinstance(frame, np.ndarray)
            or frame.dtype != np.uint8
            or frame.ndim != 3
            or frame.shape[2] != 3
        ):
            raise MediaError(
                VIDEO_INVALID_FRAME,
                "frames must be HxWx3 uint8 RGB arrays, got "
                f"{getattr(frame, 'dtype', type(frame).__name__)} {getattr(frame, 'shape', '')}",
            )
        if frame.shape[0] != self.height or frame.shape[1] != self.width:
            raise MediaError(
                VIDEO_INVALID_FRAME,
                f"frame is {frame.shape[1]}x{frame.shape[0]}, writer was opened for {self.width}x{self.height}",
            )

    def _mux_video(self, packet: av.Packet) -> None:
        assert self._container is not None
        self._container.mux(packet)
        if self._audio is not None and packet.pts is not None and packet.time_base is not None:
            # Keep audio up to this video packet's time in the file next to it (progressive playback).
            self._audio.pump(float(packet.pts * packet.time_base))

    def close(self) -> WriteResult:
        """Flush the encoder, finish the audio at the video's end and finalise the MP4."""
        if self._result is not None:
            return self._result
        if self._container is None:
            self.open()
        assert self._container is not None and self._video is not None
        if self._frames_written == 0:
            self.abort()
            raise MediaError(VIDEO_NO_FRAMES, f"no frames were written to {self.path}")
        try:
            for packet in self._video.encode(None):
                self._mux_video(packet)
            duration_s = self._frames_written / float(self.fps)
            if self._audio is not None:
                self._audio.finish(duration_s)
            self._container.close()
        except BaseException:
            self.abort()
            raise
        finally:
            if self._audio_in is not None:
                self._audio_in.close()
                self._audio_in = None
        self._result = WriteResult(
            path=self.path,
            frames_written=self._frames_written,
            fps=self.fps,
            duration_s=self._frames_written / float(self.fps),
            audio_mode=self._audio.mode if self._audio is not None else "none",
            audio_packets=self._audio.packets_written if self._audio is not None else 0,
        )
        return self._result

    def abort(self) -> None:
        """Close everything and delete the partial output."""
        for closable in (self._container, self._audio_in):
            if closable is not None:
                try:
                    closable.close()
                except (av.error.FFmpegError, OSError, ValueError):
                    pass  # the file is being discarded; a failing trailer write does not matter
        self._container = None
        self._audio_in = None
        self._audio = None
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    @property
    def result(self) -> WriteResult | None:
        return self._result


def _even(value: float) -> int:
    return max(2, int(round(value / 2.0)) * 2)


def reencode(
    path_in: PathLike,
    path_out: PathLike,
    crf: int = 28,
    scale: float = 1.0,
    *,
    preset: str = "veryfast",
    keep_audio: bool = True,
) -> WriteResult:
    """Re-encode a clip to H.264 at ``crf``, resized by ``scale`` (sizes rounded to even), streaming.

    This is what a platform or a user does to a downloaded video; tests use it as the attack the invisible
    watermark must survive (CRF 28, 0.75x).
    """
    if not 0.0 < scale <= 8.0 or not math.isfinite(scale):
        raise MediaError(VIDEO_INVALID_ARGUMENT, f"scale must be in (0, 8], got {scale}")
    info = probe_video(path_in)
    width, height = _even(info.width * scale), _even(info.height * scale)
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    with VideoWriter(
        path_out,
        fps=info.fps,
        width=width,
        height=height,
        crf=crf,
        preset=preset,
        audio_source=path_in if keep_audio and info.has_audio else None,
    ) as writer:
        for chunk in iter_frame_chunks(path_in, 16):
            if (width, height) != (info.width, info.height):
                chunk = [cv2.resize(frame, (width, height), interpolation=interpolation) for frame in chunk]
            writer.write(chunk)
    assert writer.result is not None
    return writer.result
