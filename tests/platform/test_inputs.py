"""Admission checks: type from bytes, bounded images, probed videos, truncation."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.media.synthetic import make_image_bytes, make_video_bytes, make_video_file
from shared.platform import errors
from shared.platform.errors import InputRejected
from shared.platform.inputs import InputLimits, inspect_media, sniff
from shared.platform.settings import Settings
from tests.support.factories import make_png_bomb

LIMITS = InputLimits.from_settings(
    Settings(
        max_video_seconds=2.0,
        max_video_width=320,
        max_video_height=240,
        max_video_frames=40,
        max_image_pixels=1_000_000,
    )
)


def _reject(path: Path, kind: str | None = None) -> InputRejected:
    with pytest.raises(InputRejected) as caught:
        inspect_media(path, LIMITS, kind)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize(
    "fmt,media_type", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_images_are_accepted_and_measured(tmp_path: Path, fmt: str, media_type: str) -> None:
    path = tmp_path / "portrait.bin"  # the name says nothing: the bytes decide
    path.write_bytes(make_image_bytes((96, 80), fmt))
    info = inspect_media(path, LIMITS, "image")
    assert (info.kind, info.media_type, info.width, info.height) == ("image", media_type, 96, 80)


@pytest.mark.parametrize(
    "suffix,codec,media_type",
    [
        (".mp4", "libx264", "video/mp4"),
        (".mov", "libx264", "video/quicktime"),
        (".mkv", "libx264", "video/x-matroska"),
        (".webm", "libvpx-vp9", "video/webm"),
        (".avi", "mpeg4", "video/x-msvideo"),
    ],
)
def test_videos_are_probed(tmp_path: Path, suffix: str, codec: str, media_type: str) -> None:
    path = make_video_file(tmp_path / f"clip{suffix}", frames=6, fps=6, size=(64, 48), codec=codec)
    info = inspect_media(path, LIMITS, "video")
    assert info.media_type == media_type
    assert (info.width, info.height, info.frame_count) == (64, 48, 6)
    assert info.fps == pytest.approx(6.0)
    assert info.duration_s == pytest.approx(1.0, abs=0.01)


def test_sniffing_ignores_names_and_refuses_other_types(tmp_path: Path) -> None:
    assert sniff(make_image_bytes(fmt="PNG")[:64]).media_type == "image/png"
    text = tmp_path / "portrait.png"
    text.write_bytes(b"<html>not an image</html>")
    refused = _reject(text)
    assert (refused.code, refused.status) == (errors.UNSUPPORTED_MEDIA_TYPE, 415)
    gif = tmp_path / "a.gif"
    gif.write_bytes(b"GIF89a" + b"\0" * 64)
    assert _reject(gif).code == errors.UNSUPPORTED_MEDIA_TYPE
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert _reject(empty).code == errors.EMPTY_UPLOAD


def test_wrong_kind_is_refused(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_video_bytes(frames=2))
    assert _reject(clip, "image").code == errors.WRONG_MEDIA_KIND
    image = tmp_path / "image.png"
    image.write_bytes(make_image_bytes())
    assert _reject(image, "video").code == errors.WRONG_MEDIA_KIND


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(make_png_bomb(50_000, 50_000))
    assert bomb.stat().st_size < 1000
    refused = _reject(bomb)
    assert refused.code == errors.IMAGE_TOO_LARGE
    # Over our limit but under Pillow's own: our check (from the header) must catch it.
    modest = tmp_path / "modest.png"
    modest.write_bytes(make_png_bomb(2000, 2000))
    refused = _reject(modest)
    assert refused.code == errors.IMAGE_TOO_LARGE and refused.details["width"] == 2000


def test_truncated_and_corrupt_images_are_refused(tmp_path: Path) -> None:
    for fmt in ("PNG", "JPEG"):
        data = make_image_bytes((128, 128), fmt)
        path = tmp_path / f"cut.{fmt.lower()}"
        path.write_bytes(data[: len(data) // 2])
        assert _reject(path).code == errors.CORRUPT_MEDIA
    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(make_image_bytes((16, 16)))
    assert _reject(tiny).code == errors.IMAGE_TOO_SMALL


def test_truncated_videos_are_refused(tmp_path: Path) -> None:
    # moov atom at the end: cutting the file loses the index.
    whole = make_video_bytes(".mp4", frames=16)
    (tmp_path / "a.mp4").write_bytes(whole[: len(whole) // 2])
    assert _reject(tmp_path / "a.mp4").code == errors.CORRUPT_MEDIA
    # faststart: the index survives, the frames do not.
    faststart = make_video_bytes(".mp4", frames=16, faststart=True)
    (tmp_path / "b.mp4").write_bytes(faststart[: len(faststart) * 2 // 3])
    refused = _reject(tmp_path / "b.mp4")
    assert refused.code == errors.CORRUPT_MEDIA and "truncated" in refused.message
    # Matroska: no frame count in the header; the declared duration gives it away.
    mkv = make_video_bytes(".mkv", frames=16)
    (tmp_path / "c.mkv").write_bytes(mkv[: len(mkv) // 2])
    assert _reject(tmp_path / "c.mkv").code == errors.CORRUPT_MEDIA
    (tmp_path / "d.mp4").write_bytes(b"\0\0\0\x18ftypisom" + bytes(range(256)) * 8)
    assert _reject(tmp_path / "d.mp4").code == errors.CORRUPT_MEDIA


def test_video_limits(tmp_path: Path) -> None:
    too_long = make_video_file(tmp_path / "long.mp4", frames=24, fps=8)  # 3 s > 2 s
    refused = _reject(too_long)
    assert refused.code == errors.VIDEO_TOO_LONG and refused.details["duration_s"] == pytest.approx(3.0)
    too_large = make_video_file(tmp_path / "large.mp4", frames=2, size=(352, 288))
    assert _reject(too_large).code == errors.VIDEO_TOO_LARGE
    too_fast = make_video_file(tmp_path / "fast.mp4", frames=4, fps=120)
    assert _reject(too_fast).code == errors.VIDEO_FPS_TOO_HIGH
    many = make_video_file(tmp_path / "many.mp4", frames=48, fps=30)  # 1.6 s but 48 > 40 frames
    assert _reject(many).code == errors.VIDEO_TOO_MANY_FRAMES
    vp9 = make_video_file(tmp_path / "clip.webm", frames=2, codec="libvpx-vp9")
    strict = InputLimits.from_settings(Settings(allowed_video_codecs=["h264"]))
    with pytest.raises(InputRejected) as caught:
        inspect_media(vp9, strict)
    assert (caught.value.code, caught.value.status) == (errors.VIDEO_CODEC_NOT_ALLOWED, 415)


def _write_clip(path: Path, extra: list[tuple[str, str]]) -> Path:
    """An H.264 clip (64x48, 6 frames at 6 fps) plus extra streams: ("video", codec) / ("audio", codec)."""
    import av
    import numpy as np

    with av.open(str(path), mode="w") as container:
        main = container.add_stream("libx264", rate=6)
        main.width, main.height, main.pix_fmt = 64, 48, "yuv420p"
        streams: list[tuple[str, object]] = []
        for kind, codec in extra:
            if kind == "video":
                other = container.add_stream(codec, rate=6)
                other.width, other.height = 64, 48
                other.pix_fmt = "yuv420p"
            else:
                other = container.add_stream(codec, rate=16000)
                other.layout = "mono"
            streams.append((kind, other))
        for index in range(6):
            image = np.full((48, 64, 3), 40 * index, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in main.encode(frame):
                container.mux(packet)
            for kind, other in streams:
                if kind == "video":
                    packets = other.encode(frame)  # type: ignore[attr-defined]
                else:
                    fmt = other.codec_context.format.name  # type: ignore[attr-defined]
                    samples = np.zeros((1, 16000 // 6), np.int16 if fmt.startswith("s16") else np.float32)
                    audio = av.AudioFrame.from_ndarray(samples, format=fmt, layout="mono")
                    audio.sample_rate, audio.pts = 16000, index * (16000 // 6)
                    packets = other.encode(audio)  # type: ignore[attr-defined]
                for packet in packets:
                    container.mux(packet)
        for stream in [main] + [s for _, s in streams]:
            for packet in stream.encode():  # type: ignore[attr-defined]
                container.mux(packet)
    return path


def test_every_video_stream_is_held_to_the_codec_allow_list(tmp_path: Path) -> None:
    # The first stream is H.264 (allowed); a second video track in FFV1 is a decoder all the same.
    clip = _write_clip(tmp_path / "two.mkv", [("video", "ffv1")])
    refused = _reject(clip)
    assert (refused.code, refused.status) == (errors.VIDEO_CODEC_NOT_ALLOWED, 415)
    assert refused.details["codec"] == "ffv1" and refused.details["stream"] == 1


def test_unknown_audio_codecs_are_refused_and_known_ones_pass(tmp_path: Path) -> None:
    odd = _write_clip(tmp_path / "odd-audio.avi", [("audio", "adpcm_ima_wav")])
    refused = _reject(odd)
    assert (refused.code, refused.status) == (errors.AUDIO_CODEC_NOT_ALLOWED, 415)
    assert refused.details["codec"] == "adpcm_ima_wav" and "adpcm_ima_wav" in refused.message
    fine = _write_clip(tmp_path / "aac.mp4", [("audio", "aac")])
    info = inspect_media(fine, LIMITS, "video")
    assert info.has_audio and info.codec == "h264"
    # The list is a setting: an operator may allow the odd codec.
    wider = InputLimits.from_settings(
        Settings(max_video_width=320, max_video_height=240, allowed_audio_codecs=["adpcm_ima_wav"])
    )
    assert inspect_media(odd, wider, "video").has_audio


def test_a_decompression_bomb_refusal_names_the_platform_limit(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(make_png_bomb(50_000, 50_000))  # beyond Pillow's own limit: refused at open
    refused = _reject(bomb)
    assert refused.code == errors.IMAGE_TOO_LARGE
    assert "1,000,000 pixels (1 MP)" in refused.message
    assert "178956970" not in refused.message and "178,956,970" not in refused.message
    assert refused.details["max_pixels"] == 1_000_000
