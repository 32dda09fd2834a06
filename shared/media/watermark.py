"""Invisible 32-bit watermark identifying the job that produced a video (RivaGAN, via ``invisible-watermark``).

Payload
    ``payload_for_job(job_id, secret)`` = the first 32 bits of HMAC-SHA256(secret, job id). It is not
    invertible: a detected payload is mapped to a job by looking it up among stored job payloads (the
    worker stores it in the provenance record). Without the secret nobody can forge a given job's payload.

Embedding
    We run the RivaGAN ONNX encoder/decoder shipped in ``imwatermark`` directly (its wrapper only accepts
    >= 256x256 frames and re-creates objects per call). The networks are fully convolutional and take any
    size; we run them at a fixed working size, ``work_short_side`` (192 px on the short side), and upsample
    the encoder's residual to the full frame, amplified by ``strength``. Why:

    - H.264 stores chroma at half resolution and RivaGAN's signal lives mostly in chroma (a luma-only
      residual is not detected at all). Upsampling a 192-px residual to 512 px makes the pattern coarse
      enough to survive yuv420p at CRF 28 after a 0.75x resize; embedding at full 512 px does not.
    - Detection resizes any frame to the same working size, so a uniformly resized copy is decoded at the
      scale it was embedded at: the scheme is scale-invariant by construction.
    - Cost is fixed per frame whatever the output size (~0.11 s embed, ~0.2 s detect on 2 cores).

    Size constraints: frames must be at least ``MIN_SHORT_SIDE`` px on the short side. Robustness to
    re-encoding + resizing was measured for outputs whose short side is >= 2.5x the working size (the
    platform's 512 px output); smaller frames get a weaker, finer pattern. Dark or flat content (a colour
    wheel, a fundus photo, the tiny model's output) carries the watermark poorly: RivaGAN hides its signal
    in texture, and on such frames some bits of some payloads read back near zero. ``embed_frame`` is
    plain RivaGAN; the worker marks through ``shared.media.guardrails.Guardrails``, which checks each
    chunk with the decoder and corrects the mark until every bit clears a margin (docs/media.md).
    Frames are fed to the networks in BGR order, as ``imwatermark`` does with OpenCV images.

Detection
    Sampled frames are decoded to 32 logits each. Per bit we take the majority over frames, the fraction of
    frames agreeing with it, and the mean logit. A bit is *confident* when at least ``min_bit_agreement`` of
    the frames agree and the mean logit points the majority's way with magnitude >= ``min_bit_logit``.
    ``found`` = confident bits >= ``threshold`` (default 28 of 32). Calibration (docs/media.md): watermarked
    512 px clips of six natural images re-encoded at CRF 28 after a 0.75x resize gave 29-32 confident bits;
    the same clips unwatermarked gave 4-19, and 22-24 for the highest unmarked pictures measured since
    (scikit-image's logo, hubble, retina): the margin on that side is 4 bits, so the threshold stays at 28
    and weak marks are fixed at embedding. ``WatermarkResult.matches(expected)`` separately checks that
    at least ``threshold`` of the majority bits equal an expected payload (chance of a random match:
    sum(C(32, k), k <= 4) / 2**32 ~ 1e-5 per compared payload).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, ClassVar

import av
import av.error
import cv2
import numpy as np

from shared.media.errors import MODEL_UNAVAILABLE, VIDEO_UNREADABLE, WATERMARK_INVALID_ARGUMENT, MediaError
from shared.media.video import PathLike, _open_input, _to_rgb, _video_stream, probe_video

PAYLOAD_BITS = 32
DEFAULT_THRESHOLD = 28
DEFAULT_MAX_SAMPLES = 8
MIN_SHORT_SIDE = 64
# Clips longer than this are sampled by seeking to keyframes instead of decoding every frame.
SEQUENTIAL_SAMPLING_MAX_FRAMES = 600
_PAYLOAD_DOMAIN = b"goha-watermark-v1\x00"


@dataclass(frozen=True)
class WatermarkConfig:
    """Knobs of the RivaGAN scheme. Embedding and detection must use the same ``work_short_side``."""

    work_short_side: int = 192
    strength: float = 2.0  # residual gain: 2.0 ~ 37 dB PSNR; needed for CRF 28 + 0.75x robustness
    min_bit_agreement: float = 0.75
    min_bit_logit: float = 2.0
    num_threads: int = 2
    # Embedding only (``shared.media.guardrails.Guardrails``): when a bit of a chunk's probe frame reads
    # back below ``refine_margin`` (decoder logit, signed towards the payload), a small correction is added
    # to the mark until every bit reaches ``refine_margin + refine_headroom`` (at most ``refine_max_steps``
    # gradient steps, at most ``refine_max_delta`` grey levels per pixel). 0 turns the correction off.
    # Target 12 so the mark also survives CRF 28 + 0.75x on the tiny model's dark output (target 7 missed
    # 4 of 20 payloads there, 12 none); trigger 5, not higher, so natural pictures are rarely corrected
    # (margin 8 with the same target took 20-40 % more steps for the same result). docs/media.md.
    refine_margin: float = 5.0
    refine_headroom: float = 7.0
    refine_max_steps: int = 12
    refine_max_delta: float = 12.0
    # Embedding only: the encoder runs on one key frame and its residual marks the following frames too,
    # until a chunk's middle frame differs from the key frame by more than ``key_refresh_mad`` grey levels
    # (mean absolute difference at the working size): a steady shot then costs one encoder pass and a few
    # read-backs in total instead of one encoder pass per frame. 0 runs the encoder on every frame (plain
    # per-frame RivaGAN). ``probe_interval``: after a read-back that met the margin, this many chunks
    # are marked without reading back (a new key frame is always read back). docs/media.md.
    key_refresh_mad: float = 8.0
    probe_interval: int = 3
    # Embedding only: correction steps a video may take, at most ``refine_budget_initial`` plus
    # ``refine_budget_per_chunk`` per chunk marked so far (a step is a decoder forward + backward, ~0.25 s
    # on one core): the worst content costs a bounded share of the job; a correction cut short by the
    # budget goes on in the next chunks (it carries over).
    refine_budget_initial: int = 6
    refine_budget_per_chunk: float = 0.5
    # Correction steps in bfloat16 where the CPU has native bfloat16 convolutions: ~2x faster per step,
    # the step's direction within cos 0.998 of float32's and the logits within ~0.2 (the target is 12).
    refine_bf16: bool = True


DEFAULT_CONFIG = WatermarkConfig()


# -- payload ---------------------------------------------------------------------------------------------
def payload_for_job(job_id: str, secret: bytes) -> int:
    """32-bit keyed hash of a job id: HMAC-SHA256(secret, domain || job_id), first 4 bytes big-endian."""
    if not isinstance(secret, bytes | bytearray) or len(secret) < 16:
        raise MediaError(WATERMARK_INVALID_ARGUMENT, "watermark secret must be at least 16 bytes")
    if not job_id:
        raise MediaError(WATERMARK_INVALID_ARGUMENT, "job_id must be a non-empty string")
    digest = hmac.new(bytes(secret), _PAYLOAD_DOMAIN + job_id.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:4], "big")


def _check_payload(payload: int) -> int:
    if (
        isinstance(payload, bool)
        or not isinstance(payload, int | np.integer)
        or not 0 <= payload < 2**PAYLOAD_BITS
    ):
        raise MediaError(WATERMARK_INVALID_ARGUMENT, f"payload must be an int in [0, 2**32), got {payload!r}")
    return int(payload)


def payload_to_bits(payload: int) -> np.ndarray:
    """32 bits, most significant first, as uint8 0/1."""
    value = _check_payload(payload)
    return np.array([(value >> (PAYLOAD_BITS - 1 - i)) & 1 for i in range(PAYLOAD_BITS)], dtype=np.uint8)


def bits_to_payload(bits: Sequence[int] | np.ndarray) -> int:
    array = np.asarray(bits).astype(np.uint8).ravel()
    if array.size != PAYLOAD_BITS:
        raise MediaError(WATERMARK_INVALID_ARGUMENT, f"expected {PAYLOAD_BITS} bits, got {array.size}")
    value = 0
    for bit in array:
        value = (value << 1) | int(bit & 1)
    return value


def agreeing_bits(payload_a: int, payload_b: int) -> int:
    """Number of equal bits between two 32-bit payloads."""
    return PAYLOAD_BITS - int(bin(_check_payload(payload_a) ^ _check_payload(payload_b)).count("1"))


# -- model -----------------------------------------------------------------------------------------------
def _model_dir() -> Path:
    spec = find_spec("imwatermark")
    if spec is None or not spec.submodule_search_locations:
        raise MediaError(MODEL_UNAVAILABLE, "invisible-watermark (imwatermark) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


class RivaGanWatermarker:
    """Embeds and reads 32-bit payloads; the ONNX sessions are loaded once per process and thread count."""

    # Keyed by process id too: ONNX Runtime thread pools do not survive fork (Celery prefork children).
    _sessions: ClassVar[dict[tuple[int, int], tuple[Any, Any]]] = {}
    _load_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, config: WatermarkConfig = DEFAULT_CONFIG) -> None:
        if config.work_short_side < MIN_SHORT_SIDE:
            raise MediaError(WATERMARK_INVALID_ARGUMENT, f"work_short_side must be >= {MIN_SHORT_SIDE}")
        if not config.strength > 0:
            raise MediaError(WATERMARK_INVALID_ARGUMENT, "strength must be > 0")
        self.config = config
        self._encoder, self._decoder = self._load(config.num_threads)

    @classmethod
    def _load(cls, num_threads: int) -> tuple[Any, Any]:
        key = (os.getpid(), num_threads)
        with cls._load_lock:
            if key not in cls._sessions:
                import onnxruntime  # imported lazily: ~0.3 s and only the watermark needs it

                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = max(1, num_threads)
                options.inter_op_num_threads = 1
                model_dir = _model_dir()
                sessions = []
                for name in ("rivagan_encoder.onnx", "rivagan_decoder.onnx"):
                    path = model_dir / name
                    if not path.is_file():
                        raise MediaError(MODEL_UNAVAILABLE, f"RivaGAN model missing: {path}")
                    sessions.append(
                        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    )
                cls._sessions[key] = (sessions[0], sessions[1])
            return cls._sessions[key]

    # -- geometry ----------------------------------------------------------------------------------------
    def _work_size(self, height: int, width: int) -> tuple[int, int]:
        """(width, height) of the working image: short side = work_short_side, aspect kept."""
        factor = self.config.work_short_side / min(height, width)
        return max(1, int(round(width * factor))), max(1, int(round(height * factor)))

    def _to_work(self, frame_rgb: np.ndarray) -> np.ndarray:
        """BGR float32 working image in the network's [-1, 1] range, shape (1, 3, 1, h, w)."""
        height, width = frame_rgb.shape[:2]
        size = self._work_size(height, width)
        interpolation = cv2.INTER_AREA if size[0] < width else cv2.INTER_LINEAR
        small = (
            cv2.resize(frame_rgb, size, interpolation=interpolation) if size != (width, height) else frame_rgb
        )
        bgr = small[:, :, ::-1].astype(np.float32)
        return (bgr / 127.5 - 1.0).transpose(2, 0, 1)[None, :, None]

    @staticmethod
    def _check_frame(frame: Any) -> np.ndarray:
        if (
            not isinstance(frame, np.ndarray)
            or frame.dtype != np.uint8
            or frame.ndim != 3
            or frame.shape[2] != 3
        ):
            raise MediaError(
                WATERMARK_INVALID_ARGUMENT,
                f"frames must be HxWx3 uint8 RGB, got {getattr(frame, 'dtype', type(frame).__name__)} "
                f"{getattr(frame, 'shape', '')}",
            )
        if min(frame.shape[:2]) < MIN_SHORT_SIDE:
            raise MediaError(
                WATERMARK_INVALID_ARGUMENT,
                f"frame {frame.shape[1]}x{frame.shape[0]} is too small to watermark (short side < {MIN_SHORT_SIDE})",
            )
        return frame

    # -- embed -------------------------------------------------------------------------------------------
    def embed_frame(self, frame_rgb: np.ndarray, payload: int) -> np.ndarray:
        return self.apply_residual(frame_rgb, self.residual(frame_rgb, payload))

    def residual(self, frame_rgb: np.ndarray, payload: int) -> np.ndarray:
        """The encoder's mark for this frame at working size: (h, w, 3) float32 RGB grey levels, amplified
        by ``strength``; ``apply_residual`` upsamples and adds it."""
        frame = self._check_frame(frame_rgb)
        data = payload_to_bits(payload).astype(np.float32)[None]
        work = self._to_work(frame)
        marked = np.clip(self._encoder.run(None, {"frame": work, "data": data})[0], -1.0, 1.0)
        # Residual in pixel units at working size, BGR -> RGB, amplified.
        return ((marked - work)[0, :, 0] * 127.5 * self.config.strength).transpose(1, 2, 0)[:, :, ::-1]

    def apply_residual(self, frame_rgb: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """The frame plus a working-size residual upsampled to it, rounded to uint8."""
        frame = self._check_frame(frame_rgb)
        height, width = frame.shape[:2]
        if residual.shape[:2] != (height, width):
            residual = cv2.resize(
                np.ascontiguousarray(residual, dtype=np.float32),
                (width, height),
                interpolation=cv2.INTER_LINEAR,
            )
        return np.clip(np.rint(frame.astype(np.float32) + residual), 0, 255).astype(np.uint8)

    def embed(self, frames_rgb: Iterable[np.ndarray], payload: int) -> list[np.ndarray]:
        _check_payload(payload)
        return [self.embed_frame(frame, payload) for frame in frames_rgb]

    # -- detect ------------------------------------------------------------------------------------------
    def frame_logits(self, frame_rgb: np.ndarray) -> np.ndarray:
        """The decoder's 32 raw logits (> 0 means bit 1)."""
        frame = self._check_frame(frame_rgb)
        return np.asarray(self._decoder.run(None, {"frame": self._to_work(frame)})[0][0], dtype=np.float32)

    def detect_frame(self, frame_rgb: np.ndarray) -> np.ndarray:
        return (self.frame_logits(frame_rgb) > 0).astype(np.uint8)

    def vote(self, logits: np.ndarray, threshold: int = DEFAULT_THRESHOLD) -> WatermarkResult:
        """Combine per-frame logits (N x 32) into a :class:`WatermarkResult`."""
        return vote_logits(logits, threshold=threshold, config=self.config)


@dataclass(frozen=True)
class WatermarkResult:
    """Outcome of reading a watermark from several frames."""

    found: bool
    payload: int | None  # the per-bit majority, also when not found (None only when nothing was sampled)
    confident_bits: int
    threshold: int
    frames_sampled: int
    bit_agreement: tuple[float, ...] = field(default=())  # fraction of frames agreeing with the majority
    mean_logits: tuple[float, ...] = field(default=())

    @property
    def score(self) -> float:
        """Confident bits / 32."""
        return self.confident_bits / PAYLOAD_BITS

    def agreeing_bits(self, expected_payload: int) -> int:
        if self.payload is None:
            return 0
        return agreeing_bits(self.payload, expected_payload)

    def matches(self, expected_payload: int, min_bits: int | None = None) -> bool:
        """True when at least ``min_bits`` (default: ``threshold``) majority bits equal the expected payload."""
        return self.payload is not None and self.agreeing_bits(expected_payload) >= (
            min_bits or self.threshold
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["score"] = self.score
        data["bit_agreement"] = [round(value, 4) for value in self.bit_agreement]
        data["mean_logits"] = [round(value, 3) for value in self.mean_logits]
        return data


def vote_logits(
    logits: np.ndarray, *, threshold: int = DEFAULT_THRESHOLD, config: WatermarkConfig = DEFAULT_CONFIG
) -> WatermarkResult:
    """Per-bit majority vote over frames and the confident-bit count (see the module docstring)."""
    if not 1 <= threshold <= PAYLOAD_BITS:
        raise MediaError(
            WATERMARK_INVALID_ARGUMENT, f"threshold must be in [1, {PAYLOAD_BITS}], got {threshold}"
        )
    matrix = np.asarray(logits, dtype=np.float32).reshape(-1, PAYLOAD_BITS) if np.size(logits) else None
    if matrix is None or matrix.shape[0] == 0:
        return WatermarkResult(
            found=False, payload=None, confident_bits=0, threshold=threshold, frames_sampled=0
        )
    ones = (matrix > 0).mean(axis=0)
    mean = matrix.mean(axis=0)
    # Majority per bit; an exact tie (even frame count) is broken by the mean logit.
    majority = np.where(ones == 0.5, mean > 0, ones > 0.5).astype(np.uint8)
    agreement = np.where(majority == 1, ones, 1.0 - ones)
    signed_mean = np.where(majority == 1, mean, -mean)
    confident = (agreement >= config.min_bit_agreement) & (signed_mean >= config.min_bit_logit)
    confident_bits = int(confident.sum())
    return WatermarkResult(
        found=confident_bits >= threshold,
        payload=bits_to_payload(majority),
        confident_bits=confident_bits,
        threshold=threshold,
        frames_sampled=int(matrix.shape[0]),
        bit_agreement=tuple(float(value) for value in agreement),
        mean_logits=tuple(float(value) for value in mean),
    )


# -- module-level convenience ----------------------------------------------------------------------------
def embed(
    frames_rgb: Iterable[np.ndarray], payload: int, config: WatermarkConfig = DEFAULT_CONFIG
) -> list[np.ndarray]:
    """Watermark RGB uint8 frames with a 32-bit payload; returns new frames."""
    return RivaGanWatermarker(config).embed(frames_rgb, payload)


def detect_frame(frame_rgb: np.ndarray, config: WatermarkConfig = DEFAULT_CONFIG) -> np.ndarray:
    """The 32 bits (uint8 0/1, MSB first) read from one frame."""
    return RivaGanWatermarker(config).detect_frame(frame_rgb)


def _sample_indices(frame_count: int, max_samples: int) -> list[int]:
    count = min(max_samples, max(frame_count, 1))
    return sorted({int(round(value)) for value in np.linspace(0, max(frame_count - 1, 0), count)})


def sample_frames(
    path: PathLike,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    *,
    sequential_max_frames: int = SEQUENTIAL_SAMPLING_MAX_FRAMES,
) -> Iterator[np.ndarray]:
    """Up to ``max_samples`` RGB frames spread over the clip, decoded without holding the clip.

    Short clips are decoded in order and the chosen indices kept; long ones are sampled by seeking, which
    lands on keyframes (the best-quality frames of an H.264 stream), de-duplicated by timestamp.
    """
    if max_samples < 1:
        raise MediaError(WATERMARK_INVALID_ARGUMENT, f"max_samples must be >= 1, got {max_samples}")
    info = probe_video(path)
    if info.frame_count <= sequential_max_frames:
        wanted = set(_sample_indices(info.frame_count, max_samples))
        last = max(wanted)
        with _open_input(path) as container:
            stream = _video_stream(container, path)
            try:
                for index, frame in enumerate(container.decode(stream)):
                    if index in wanted:
                        yield _to_rgb(frame, True)
                    if index >= last:
                        return
            except av.error.FFmpegError as exc:
                raise MediaError(VIDEO_UNREADABLE, f"decoding failed while sampling: {exc}") from exc
        return
    seen: set[int] = set()
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        start = stream.start_time or 0
        for index in _sample_indices(info.frame_count, max_samples):
            target = start + int(index / float(info.fps) / stream.time_base)
            try:
                container.seek(target, stream=stream, backward=True, any_frame=False)
                frame = next(container.decode(stream), None)
            except av.error.FFmpegError:
                continue  # an unseekable spot; the other samples still vote
            if frame is None or frame.pts in seen:
                continue
            seen.add(frame.pts)
            yield _to_rgb(frame, True)


def vote_decided(
    logits: np.ndarray,
    planned: int,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    config: WatermarkConfig = DEFAULT_CONFIG,
) -> bool:
    """Can the frames still to read (``planned`` in all) no longer change ``found``?

    Not found is certain once more than ``32 - threshold`` bits cannot reach ``min_bit_agreement`` even
    if every remaining frame agreed with their majority. Found is taken as settled once ``threshold``
    bits would keep both the agreement and ``min_bit_logit`` even if every remaining frame voted against
    them with the largest logit seen for that bit so far (the decoder's logits are bounded in practice,
    but not by construction: this side is a bound on what was seen, not a proof).
    """
    matrix = np.asarray(logits, dtype=np.float32).reshape(-1, PAYLOAD_BITS)
    read = matrix.shape[0]
    remaining = max(planned - read, 0)
    if read == 0:
        return False
    if remaining == 0:
        return True
    ones = (matrix > 0).sum(axis=0)
    majority_count = np.maximum(ones, read - ones)
    needed = config.min_bit_agreement * planned
    hopeless = int(((majority_count + remaining) < needed - 1e-9).sum())
    if hopeless > PAYLOAD_BITS - threshold:
        return True
    signs = np.where(ones * 2 >= read, 1.0, -1.0)
    signed_sum = (matrix * signs).sum(axis=0)
    worst = signed_sum - remaining * np.abs(matrix).max(axis=0)
    safe = (majority_count >= needed - 1e-9) & (worst / planned >= config.min_bit_logit)
    return int(safe.sum()) >= threshold


def detect_video(
    path: PathLike,
    *,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    threshold: int = DEFAULT_THRESHOLD,
    config: WatermarkConfig = DEFAULT_CONFIG,
    early_stop: bool = True,
) -> WatermarkResult:
    """Read the watermark of a video by a per-bit majority vote over sampled frames.

    ``early_stop``: stop decoding once the frames read decide the vote (``vote_decided``); the result
    is then the vote over the frames read (``frames_sampled`` says how many).
    """
    watermarker = RivaGanWatermarker(config)
    info_frames = probe_video(path).frame_count
    planned = len(_sample_indices(info_frames, max_samples))
    logits: list[np.ndarray] = []
    for frame in sample_frames(path, max_samples):
        if min(frame.shape[:2]) < MIN_SHORT_SIDE:
            break  # a thumbnail-sized video cannot carry the mark: report not found rather than fail
        logits.append(watermarker.frame_logits(frame))
        if early_stop and vote_decided(np.array(logits), planned, threshold=threshold, config=config):
            break
    return vote_logits(np.array(logits, dtype=np.float32), threshold=threshold, config=config)


__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_THRESHOLD",
    "MIN_SHORT_SIDE",
    "PAYLOAD_BITS",
    "RivaGanWatermarker",
    "WatermarkConfig",
    "WatermarkResult",
    "agreeing_bits",
    "bits_to_payload",
    "detect_frame",
    "detect_video",
    "embed",
    "payload_for_job",
    "payload_to_bits",
    "sample_frames",
    "vote_decided",
    "vote_logits",
]
