from __future__ import annotations

import pickle
import struct
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from shared.media.errors import MediaError
from shared.media.video import (
    VideoWriter,
    iter_frame_chunks,
    iter_frames,
    probe_video,
    reencode,
)
from tests.media.conftest import FPS, gradient_frame, write_av_clip


def _means(frames: list[np.ndarray]) -> list[float]:
    return [float(frame.mean()) for frame in frames]


def _top_level_boxes(path: Path) -> list[str]:
    boxes = []
    with open(path, "rb") as handle:
        while header := handle.read(8):
            size, kind = struct.unpack(">I4s", header)
            if size == 1:
                size = struct.unpack(">Q", handle.read(8))[0]
                handle.seek(size - 16, 1)
            else:
                handle.seek(size - 8, 1)
            boxes.append(kind.decode("latin-1"))
    return boxes


def _packets(path: Path, kind: str) -> list[av.Packet]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0] if kind == "audio" else container.streams.video[0]
        return [packet for packet in container.demux(stream) if packet.size]


def test_probe_reports_clip_facts(source_clip: Path) -> None:
    info = probe_video(source_clip)
    assert (info.width, info.height) == (96, 64)
    assert info.fps == Fraction(FPS)
    assert info.frame_count == 50 and info.frame_count_exact
    assert info.duration_s == pytest.approx(2.0, abs=0.05)
    assert info.codec == "h264" and info.has_audio and info.audio_codec == "aac"
    assert info.rotation == 0


def test_chunks_stream_all_frames_in_order(source_clip: Path) -> None:
    chunks = list(iter_frame_chunks(source_clip, 16))
    assert [len(chunk) for chunk in chunks] == [16, 16, 16, 2]
    frames = [frame for chunk in chunks for frame in chunk]
    assert all(frame.shape == (64, 96, 3) and frame.dtype == np.uint8 for frame in frames)
    means = _means(frames)
    # Brightness was written as 20 + 3 * index: decode order and content survive the round trip.
    expected = _means([gradient_frame(i, 96, 64) for i in range(50)])
    assert np.allclose(means, expected, atol=2.5)


def test_max_frames_limits_output(source_clip: Path) -> None:
    chunks = list(iter_frame_chunks(source_clip, 4, max_frames=10))
    assert [len(chunk) for chunk in chunks] == [4, 4, 2]


def test_target_fps_drops_and_duplicates_by_time(source_clip: Path) -> None:
    half = list(iter_frames(source_clip, target_fps=12.5))
    assert len(half) == 25
    source = _means(list(iter_frames(source_clip)))
    # Output frame k at 12.5 fps is source frame 2k.
    assert np.allclose(_means(half), source[::2], atol=0.01)
    double = list(iter_frames(source_clip, target_fps=50))
    assert len(double) == 100
    assert np.allclose(_means(double)[::2], source, atol=0.01)
    # Repeated frames are copies: editing one in place (as labelling may) must not change its twin.
    streamed = iter_frames(source_clip, target_fps=50)
    first = next(streamed)
    first[:] = 0
    assert next(streamed).mean() > 10


def test_decoding_memory_is_bounded_by_a_chunk(tmp_path: Path) -> None:
    clip = write_av_clip(tmp_path / "long.mp4", 120, width=128, height=128, audio_codec=None)
    frame_bytes = 128 * 128 * 3
    tracemalloc.start()
    try:
        count = sum(len(chunk) for chunk in iter_frame_chunks(clip, 4))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 120
    # 120 frames would be ~5.9 MB; holding one chunk of 4 (+ a frame being converted) stays far below.
    assert peak < 12 * frame_bytes


def test_rotated_clip_is_decoded_as_displayed(tmp_path: Path) -> None:
    clip = write_av_clip(tmp_path / "rotated.mp4", 3, width=96, height=64, audio_codec=None, rotation=90)
    info = probe_video(clip)
    assert info.rotation == 90 and (info.width, info.height) == (64, 96)
    frame = next(iter_frames(clip))
    assert frame.shape == (96, 64, 3)
    # Stored gradient grows left->right; a 90 degree counter-clockwise turn makes it grow top->bottom.
    unrotated = next(iter_frames(clip, apply_rotation=False))
    assert np.array_equal(frame, np.rot90(unrotated, 1))


@pytest.mark.parametrize(
    ("content", "code"),
    [(b"", "video_unreadable"), (b"this is not a video at all" * 50, "video_unreadable")],
)
def test_unreadable_inputs_raise_typed_errors(tmp_path: Path, content: bytes, code: str) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(MediaError) as excinfo:
        probe_video(path)
    assert excinfo.value.code == code
    with pytest.raises(MediaError) as excinfo:
        list(iter_frame_chunks(path, 4))
    assert excinfo.value.code == code


def test_missing_file_and_audio_only_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as excinfo:
        probe_video(tmp_path / "absent.mp4")
    assert excinfo.value.code == "file_not_found"
    audio_only = tmp_path / "tone.m4a"
    with av.open(str(audio_only), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44_100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44_100, 0
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            container.mux(packet)
    with pytest.raises(MediaError) as excinfo:
        probe_video(audio_only)
    assert excinfo.value.code == "video_no_video_stream"


def test_truncated_clip_fails_with_code(tmp_path: Path, source_clip: Path) -> None:
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(source_clip.read_bytes()[:600])
    with pytest.raises(MediaError) as excinfo:
        list(iter_frames(truncated))
    assert excinfo.value.code in {"video_unreadable", "video_no_frames"}


def test_bad_arguments_are_rejected(source_clip: Path, tmp_path: Path) -> None:
    for call in (
        lambda: list(iter_frame_chunks(source_clip, 0)),
        lambda: list(iter_frames(source_clip, max_frames=0)),
        lambda: list(iter_frames(source_clip, target_fps=0)),
        lambda: VideoWriter(tmp_path / "odd.mp4", fps=25, width=95, height=64),
        lambda: VideoWriter(tmp_path / "crf.mp4", fps=25, width=96, height=64, crf=60),
        lambda: VideoWriter(tmp_path / "fps.mp4", fps=-1, width=96, height=64),
    ):
        with pytest.raises(MediaError) as excinfo:
            call()
        assert excinfo.value.code == "video_invalid_argument"


def test_error_pickles_with_code() -> None:
    error = MediaError("video_no_frames", "nothing decoded", {"path": "x.mp4"})
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.code, clone.message, clone.details) == (
        "video_no_frames",
        "nothing decoded",
        {"path": "x.mp4"},
    )


def test_writer_rejects_wrong_frames_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    with pytest.raises(MediaError) as excinfo:
        with VideoWriter(path, fps=25, width=96, height=64) as writer:
            writer.write(np.zeros((64, 96, 3), np.uint8))
            writer.write(np.zeros((64, 96, 3), np.float32))
    assert excinfo.value.code == "video_invalid_frame"
    assert not path.exists()  # partial output removed
    with pytest.raises(MediaError) as excinfo:
        with VideoWriter(path, fps=25, width=96, height=64) as writer:
            writer.write(np.zeros((32, 96, 3), np.uint8))
    assert excinfo.value.code == "video_invalid_frame"
    with pytest.raises(MediaError) as excinfo:
        with VideoWriter(path, fps=25, width=96, height=64):
            pass
    assert excinfo.value.code == "video_no_frames"
    assert not path.exists()


def test_writer_makes_browser_ready_h264_with_copied_audio(tmp_path: Path, source_clip: Path) -> None:
    out = tmp_path / "out.mp4"
    with VideoWriter(out, fps=FPS, width=96, height=64, audio_source=source_clip) as writer:
        for chunk in iter_frame_chunks(source_clip, 8):
            writer.write(chunk)
    result = writer.result
    assert result is not None and result.frames_written == 50 and result.audio_mode == "copy"
    info = probe_video(out)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p" and info.frame_count == 50
    assert info.has_audio and info.audio_codec == "aac"
    boxes = _top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat")  # +faststart
    # Remuxed, not re-encoded: the audio payload bytes are identical to the source's.
    source_audio = [bytes(packet) for packet in _packets(source_clip, "audio")]
    out_audio = [bytes(packet) for packet in _packets(out, "audio")]
    assert out_audio == source_audio
    # Interleaved: audio is spread through the file, not appended after all the video.
    audio_positions = [packet.pos for packet in _packets(out, "audio")]
    video_positions = [packet.pos for packet in _packets(out, "video")]
    assert min(audio_positions) < max(video_positions)
    assert sum(pos < np.median(video_positions) for pos in audio_positions) >= len(audio_positions) // 4


def test_audio_is_trimmed_to_a_frame_limit(tmp_path: Path, source_clip: Path) -> None:
    out = tmp_path / "short.mp4"
    with VideoWriter(out, fps=FPS, width=96, height=64, audio_source=source_clip) as writer:
        for chunk in iter_frame_chunks(source_clip, 8, max_frames=20):
            writer.write(chunk)
    video_duration = 20 / FPS
    audio = _packets(out, "audio")
    starts = [float(packet.pts * packet.time_base) for packet in audio]
    ends = [start + float(packet.duration * packet.time_base) for start, packet in zip(starts, audio)]
    assert max(starts) < video_duration
    assert max(ends) >= video_duration - 0.03  # audio covers the video up to one AAC packet
    assert len(audio) < len(_packets(source_clip, "audio"))


@pytest.mark.parametrize(
    ("codec", "mode", "out_codec"),
    [("pcm_s16le", "transcode", "aac"), ("mp3", "copy", "mp3")],  # MP4 cannot hold PCM; MP3 is remuxed
)
def test_audio_from_other_containers(tmp_path: Path, codec: str, mode: str, out_codec: str) -> None:
    source = write_av_clip(tmp_path / f"{codec}.mkv", 25, audio_codec=codec, container_format="matroska")
    out = tmp_path / f"from_{codec}.mp4"
    with VideoWriter(out, fps=FPS, width=96, height=64, audio_source=source) as writer:
        for chunk in iter_frame_chunks(source, 8):
            writer.write(chunk)
    assert writer.result is not None and writer.result.audio_mode == mode
    assert probe_video(out).audio_codec == out_codec
    audio = _packets(out, "audio")
    total = sum(float(packet.duration * packet.time_base) for packet in audio)
    assert total == pytest.approx(1.0, abs=0.08)


def test_source_without_audio_gives_silent_output(tmp_path: Path) -> None:
    source = write_av_clip(tmp_path / "mute.mp4", 5, audio_codec=None)
    out = tmp_path / "mute_out.mp4"
    with VideoWriter(out, fps=FPS, width=96, height=64, audio_source=source) as writer:
        writer.write(np.stack(list(iter_frames(source))))
    assert writer.result is not None and writer.result.audio_mode == "none"
    assert not probe_video(out).has_audio


def test_reencode_resizes_and_keeps_audio(tmp_path: Path, source_clip: Path) -> None:
    out = tmp_path / "small.mp4"
    result = reencode(source_clip, out, crf=28, scale=0.75)
    info = probe_video(out)
    assert (info.width, info.height) == (72, 48)
    assert result.frames_written == 50 and info.has_audio
    with pytest.raises(MediaError):
        reencode(source_clip, tmp_path / "bad.mp4", scale=0)
