"""Decode untrusted video in a separate, bounded process before anything else decodes it.

``check_video(path, limits)`` runs ``python -m shared.platform.mediasandbox PATH`` with an address-space
limit (``RLIMIT_AS``), a CPU-time limit and a wall-clock timeout. The child decodes every frame of the
first video stream, holding each to the decode limits (``shared.media.video.DecodeLimits``), and reports
one JSON line. Whatever the file does to the decoder (a native crash, memory exhaustion, a hang) ends
the child, not the worker or gateway process: the caller gets an ``InputRejected`` with a code.

Codes: ``video_frame_too_large`` (a frame over the limits), ``video_unreadable`` (the decoder gave up),
``media_decoder_crashed`` (the child died from a signal or ran out of memory), ``media_decode_timeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.platform.errors import InputRejected

MEDIA_DECODER_CRASHED = "media_decoder_crashed"
MEDIA_DECODE_TIMEOUT = "media_decode_timeout"


@dataclass(frozen=True)
class SandboxLimits:
    max_width: int
    max_height: int
    memory_bytes: int = 2 << 30
    timeout_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: object) -> SandboxLimits:
        return cls(
            max_width=int(getattr(settings, "max_video_width", 1920)),
            max_height=int(getattr(settings, "max_video_height", 1920)),
            memory_bytes=int(getattr(settings, "decode_sandbox_memory_mb", 2048)) << 20,
            timeout_s=float(getattr(settings, "decode_sandbox_timeout_s", 300.0)),
        )


def _limit_child(memory_bytes: int, cpu_s: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file of user media


def run_sandboxed(argv: Sequence[str], limits: SandboxLimits) -> dict[str, object]:
    """Run ``argv`` under the sandbox's limits; returns its JSON report, or raises ``InputRejected``."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            timeout=limits.timeout_s,
            preexec_fn=lambda: _limit_child(limits.memory_bytes, int(limits.timeout_s) + 1),  # noqa: PLW1509
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise InputRejected(
            MEDIA_DECODE_TIMEOUT,
            f"decoding the video took longer than {limits.timeout_s:g} s",
            details={"timeout_s": limits.timeout_s},
        ) from exc
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    report: dict[str, object] = {}
    if lines:
        try:
            report = json.loads(lines[-1])
        except ValueError:
            report = {}
    if done.returncode == 0 and report.get("ok"):
        return report
    if done.returncode > 0 and isinstance(report.get("code"), str):
        raise InputRejected(str(report["code"]), str(report.get("message", "")), details=dict(report))
    died = (
        f"signal {signal.Signals(-done.returncode).name}"
        if done.returncode < 0
        else f"exit status {done.returncode}"
    )
    raise InputRejected(
        MEDIA_DECODER_CRASHED,
        f"the video decoder crashed on this file ({died}); the file is refused",
        details={"returncode": done.returncode},
    )


def check_video(path: str | os.PathLike[str], limits: SandboxLimits) -> dict[str, object]:
    """Decode every frame of ``path`` in the sandbox; returns ``{"ok": True, "frames": n}``."""
    argv = [
        sys.executable,
        "-m",
        "shared.platform.mediasandbox",
        os.fspath(path),
        "--max-width",
        str(limits.max_width),
        "--max-height",
        str(limits.max_height),
    ]
    return run_sandboxed(argv, limits)


def _decode_all(path: Path, max_width: int, max_height: int) -> dict[str, object]:
    import av

    from shared.media.errors import MediaError
    from shared.media.video import DecodeLimits, check_frame_size, set_decode_limits

    set_decode_limits(DecodeLimits(max_width=max_width, max_height=max_height))
    frames = 0
    try:
        with av.open(str(path), mode="r", metadata_errors="ignore") as container:
            if not container.streams.video:
                return {"ok": False, "code": "video_unreadable", "message": "no video stream"}
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                check_frame_size(frame, frames)
                frames += 1
    except MediaError as exc:
        return {"ok": False, "code": exc.code, "message": exc.message, "frames": frames}
    except (av.FFmpegError, OSError, ValueError) as exc:
        return {
            "ok": False,
            "code": "video_unreadable",
            "message": f"decoding failed after {frames} frames: {exc}",
            "frames": frames,
        }
    except MemoryError:
        return {"ok": False, "code": MEDIA_DECODER_CRASHED, "message": "the decoder ran out of memory"}
    return {"ok": True, "frames": frames}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.platform.mediasandbox")
    parser.add_argument("path", type=Path)
    parser.add_argument("--max-width", type=int, required=True)
    parser.add_argument("--max-height", type=int, required=True)
    args = parser.parse_args(argv)
    report = _decode_all(args.path, args.max_width, args.max_height)
    print(json.dumps(report), flush=True)
    return 0 if report.get("ok") else 3


if __name__ == "__main__":
    raise SystemExit(main())
