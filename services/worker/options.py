"""Job options as the worker reads them: one typed view over the JSON the gateway stored.

The gateway validates requests; this view only supplies defaults and refuses values the pipeline
cannot honour, so an old or hand-written row still fails with a code instead of a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from services.worker.errors import JobFailure
from shared.platform.jobs import OUTPUT_FPS_MAX, OUTPUT_FPS_MIN

Corner = Literal["bottom-right", "bottom-left", "top-right", "top-left"]
CORNERS: tuple[str, ...] = ("bottom-right", "bottom-left", "top-right", "top-left")

DEFAULT_ORBIT_FRAMES = 48
DEFAULT_OUTPUT_SIZE = 512
DEFAULT_ORBIT_FPS = 25.0


@dataclass(frozen=True)
class JobOptions:
    job_type: Literal["reenact", "orbit"] = "reenact"
    motion_mode: Literal["relative", "absolute"] = "relative"
    expression_scale: float = 1.0
    smoothing: float = 0.5  # 0 = none; 0.5 = the face stack's default One-Euro filter; 1 = strongest
    output_size: int | None = None  # None: the model's output size
    output_fps: float | None = None  # None: the driver's frame rate
    frame_limit: int | None = None
    label_corner: str = "bottom-right"
    # True: the head is composited back into the portrait's own framing (shared/face/pasteback.py);
    # False: the aligned square crop, output_size pixels a side (the output before paste-back).
    paste_back: bool = True

    @classmethod
    def from_job(cls, job_type: str, options: dict[str, Any] | None) -> JobOptions:
        raw = dict(options or {})

        def pick(*names: str, default: Any = None) -> Any:
            for name in names:
                if raw.get(name) is not None:
                    return raw[name]
            return default

        smoothing = pick("smoothing", default=0.5)
        if isinstance(smoothing, bool):
            smoothing = 0.5 if smoothing else 0.0
        try:
            parsed = cls(
                job_type="orbit" if job_type == "orbit" else "reenact",
                motion_mode=str(pick("motion_mode", "motion", default="relative")),  # type: ignore[arg-type]
                expression_scale=float(pick("expression_scale", default=1.0)),
                smoothing=float(smoothing),
                output_size=_optional_int(pick("output_size")),
                output_fps=_optional_float(pick("output_fps", "fps")),
                frame_limit=_optional_int(pick("frame_limit", "max_frames")),
                label_corner=str(pick("label_corner", "label_position", default="bottom-right")),
                paste_back=_boolean(pick("paste_back", default=True)),
            )
        except (TypeError, ValueError) as exc:
            raise JobFailure("invalid_options", f"job options cannot be read: {exc}") from exc
        if parsed.motion_mode not in ("relative", "absolute"):
            raise JobFailure(
                "invalid_options", f"motion_mode must be relative or absolute, not {parsed.motion_mode}"
            )
        if not 0.0 <= parsed.smoothing <= 1.0:
            raise JobFailure("invalid_options", "smoothing must be between 0 and 1")
        if parsed.label_corner not in CORNERS:
            raise JobFailure("invalid_options", f"label corner must be one of {', '.join(CORNERS)}")
        if parsed.output_size is not None and (parsed.output_size < 64 or parsed.output_size % 2):
            raise JobFailure("invalid_options", "output_size must be an even number of pixels >= 64")
        if parsed.frame_limit is not None and parsed.frame_limit < 1:
            raise JobFailure("invalid_options", "frame_limit must be >= 1")
        if parsed.output_fps is not None and not OUTPUT_FPS_MIN <= parsed.output_fps <= OUTPUT_FPS_MAX:
            raise JobFailure(
                "invalid_options", f"output_fps must be between {OUTPUT_FPS_MIN:g} and {OUTPUT_FPS_MAX:g}"
            )
        return parsed


def _boolean(value: Any) -> bool:
    """JSON booleans as the gateway stores them; the strings a hand-written row might hold."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"paste_back must be true or false, not {value!r}")


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
