"""The two marks every output frame gets, in the right order: visible label, then invisible watermark.

Labelling first means the watermark also covers the label's pixels, so no region of the frame is left
without the mark, and the watermark's small residual does not disturb the label's legibility.

Speed. The watermark is the worker's most expensive step after the model: RivaGAN's encoder is four
11x11 convolutions at the 192-px working size (~6 GMAC per frame). The shipped ONNX graph expresses
them as 3-D convolutions over a one-frame "video", which ONNX Runtime runs on its generic im2col path
(~180 ms per frame on one core here). ``TorchRivaGanWatermarker`` runs the *same* graph with the *same*
weights (read from the shipped ONNX file) as 2-D convolutions in torch (oneDNN), and everything around
the network (working-size resize, residual, upsampling, rounding) is ``RivaGanWatermarker``'s own
code. The port is checked against the ONNX session when it is built (random input, max abs difference
<= ``PORT_TOLERANCE``) and falls back to ONNX Runtime if they ever disagree, so a changed model file
can never silently change the mark. Detection stays on ONNX Runtime.

Key frames. Even ported, the encoder (~55 ms per frame on a quiet core) cost more than the model (~40 ms).
``Guardrails`` runs it on one *key frame* per chunk (the middle one), reuses a cached key frame while the
picture stays close to it (``WatermarkConfig.key_refresh_mad``), and gives every other frame the key's
mark moved along the dense optical flow from the key to that frame (``_follow_motion``): RivaGAN's mark
is tied to the picture's content, so a mark left in place on a moved picture is misread, a moved one is
not. Upsampling and adding the mark is the only work per frame that grows with the frame size.

Correction. ``Guardrails`` also reads the key frame back with a torch port of RivaGAN's *decoder*
(``TorchRivaGanDecoder``, checked against ONNX Runtime the same way) and, when a payload bit reads back
weakly, adds a small gradient-computed correction to the key's mark (``MarkRefiner``; bfloat16 where the
CPU has it natively; at most ``refine_budget_initial`` + ``refine_budget_per_chunk`` per chunk steps per
video). RivaGAN alone left one payload in ~15 undetectable after H.264 on the tiny model's dark output;
see docs/media.md for the numbers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from shared.media.label import DEFAULT_CORNER, DEFAULT_TEXT, Corner, LabelStyle, draw_label
from shared.media.watermark import (
    DEFAULT_CONFIG,
    RivaGanWatermarker,
    WatermarkConfig,
    _check_payload,
    _model_dir,
    payload_to_bits,
)

log = logging.getLogger("goha.media")

# Max abs difference (in the network's [-1, 1] units) between the torch port and ONNX Runtime on the
# self-check input. Measured ~1e-7: the output is frame + 0.016 * tanh(.), float32 rounding only. One
# unit of this tolerance is 255 * strength / 2 ~ 0.03 grey levels in the final frame.
PORT_TOLERANCE = 1e-4
# Per layer of the encoder (3->32, 32->32, 4->32, 32->3): FFT where it measured faster (see Conv11).
DEFAULT_CONV_MODES: tuple[str, str, str, str] = ("direct", "fft", "direct", "fft")


def apply_guardrails(
    frames_rgb: Iterable[np.ndarray],
    payload: int,
    *,
    corner: Corner = DEFAULT_CORNER,
    label_text: str = DEFAULT_TEXT,
    watermark_config: WatermarkConfig = DEFAULT_CONFIG,
    engine: str = "torch",
    workers: int = 1,
) -> list[np.ndarray]:
    """Label and watermark one chunk of RGB uint8 frames; returns new frames, in order.

    The chunks of one video should go through one ``Guardrails`` instead, which carries the mark's
    correction from chunk to chunk; this is ``Guardrails(...)(frames)`` for a single chunk.
    """
    marker = Guardrails(
        payload,
        corner=corner,
        label_text=label_text,
        watermark_config=watermark_config,
        engine=engine,
        workers=workers,
    )
    return marker(frames_rgb)


class Guardrails:
    """Labels and watermarks the chunks of one output video, in order (one instance per video).

    ``engine``: "torch" (the verified 2-D port of the encoder, default) or "onnx" (ONNX Runtime).
    ``workers`` > 1 marks that many frames at once on a process-wide pool whose threads each run torch on
    one intra-op thread: frames are independent, so this scales without the barrier waits of splitting
    one frame's convolutions over threads.

    Per chunk: label every frame; take the middle frame as the key (a cached key frame within
    ``key_refresh_mad`` of it, else one encoder pass); read the marked key back with the decoder (as the
    verifier will, at the working size) and, if any bit's logit is below ``refine_margin``, correct the
    key's mark (``MarkRefiner``); give every frame the key's mark + correction moved along the optical flow
    to it. A key's correction is kept with it, and a new key starts from the nearest one's; after a
    read-back that met the margin, that key's next ``probe_interval`` chunks are not read back (the
    verifier averages frames spread over the whole clip, so one weaker chunk does not decide it). Why the
    correction: RivaGAN's per-bit strength depends on the picture and the payload; on dark, flat frames
    (the tiny model's output) a few bits read back near zero and the verifier's vote missed the mark for
    ~7 % of payloads (docs/media.md). ``key_refresh_mad=0`` runs the encoder on every frame (the scheme
    before key frames). Not thread-safe: one caller at a time.
    """

    def __init__(
        self,
        payload: int,
        *,
        corner: Corner = DEFAULT_CORNER,
        label_text: str = DEFAULT_TEXT,
        watermark_config: WatermarkConfig = DEFAULT_CONFIG,
        engine: str = "torch",
        workers: int = 1,
    ) -> None:
        self.payload = _check_payload(payload)
        self.style = LabelStyle(corner=corner, text=label_text)
        self.config = watermark_config
        self.watermarker = watermarker_for(watermark_config, engine)
        self.workers = workers
        self._keys: list[_KeyFrame] = []  # recently used key frames, least recent first
        self.key_frames = 0  # encoder passes (key frames) so far
        self.refiner = MarkRefiner.create(payload, watermark_config)
        self.correction: np.ndarray | None = None  # working-size (h, w, 3) RGB grey levels
        self.chunks = 0
        self.probes = 0  # chunks read back with the decoder
        self.corrected_chunks = 0  # chunks whose correction had to change (gradient steps taken)
        self.unprobed = 0  # chunks still to mark without reading back (per-frame mode)
        self.refine_steps = 0
        self.probe_min_logit: float | None = None  # weakest bit of the last probe, after correction
        self.refine_s = 0.0  # wall seconds spent reading probes back and correcting
        # CPU seconds of every thread that marked (the caller's and the marking pool's). In the worker the
        # marking overlaps the model on the same cores, so its wall time also counts waiting for a core.
        self.cpu_s = 0.0
        self._cpu_lock = threading.Lock()

    def __call__(self, frames_rgb: Iterable[np.ndarray]) -> list[np.ndarray]:
        started = time.thread_time()
        try:
            return self._mark_chunk(list(frames_rgb))
        finally:
            self._add_cpu(time.thread_time() - started)

    def _add_cpu(self, seconds: float) -> None:
        with self._cpu_lock:
            self.cpu_s += seconds

    def _mark_chunk(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        if not frames:
            return []
        labelled = self._map(lambda frame: draw_label(frame, style=self.style), frames)
        self.chunks += 1
        if not self.config.key_refresh_mad > 0:
            return self._mark_every_frame(labelled)
        middle = len(labelled) // 2
        entry = self._key_for(labelled[middle])
        self.correction = entry.correction
        self._probe(labelled[middle], entry.residual, entry)
        entry.correction = self.correction
        mark = entry.residual if entry.correction is None else entry.residual + entry.correction

        def finish(item: tuple[int, np.ndarray]) -> np.ndarray:
            index, frame = item
            # The key frame gets its mark as is; the others get it moved with the picture (below).
            warped = mark if index == middle else _follow_motion(mark, entry.grey, self._work_grey(frame))
            return add_mark(frame, warped)

        return self._map(finish, list(enumerate(labelled)))

    def _work_grey(self, frame: np.ndarray) -> np.ndarray:
        """The frame at the working size, grey uint8 (what the optical flow compares)."""
        height, width = frame.shape[:2]
        size = self.watermarker._work_size(height, width)
        interpolation = cv2.INTER_AREA if size[0] < width else cv2.INTER_LINEAR
        # Grey first: the area resize (slow at a 2.67x ratio) then handles one channel instead of three.
        return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), size, interpolation=interpolation)

    def _key_for(self, key: np.ndarray) -> _KeyFrame:
        """The cached key frame nearest to ``key`` if it is within ``key_refresh_mad``, else a new one
        (one encoder pass) that starts from the nearest one's correction."""
        view = self.watermarker._to_work(key)
        nearest, distance = None, float("inf")
        for entry in self._keys:
            if entry.view.shape == view.shape:
                # Mean absolute difference in grey levels ([-1, 1] units are 127.5 grey levels each).
                drift = float(np.abs(view - entry.view).mean()) * 127.5
                if drift < distance:
                    nearest, distance = entry, drift
        if nearest is not None and distance <= self.config.key_refresh_mad:
            self._keys.remove(nearest)
            self._keys.append(nearest)  # most recently used last
            return nearest
        entry = _KeyFrame(
            view=view,
            grey=self._work_grey(key),
            residual=self.watermarker.residual(key, self.payload),
            correction=None if nearest is None else nearest.correction,
        )
        self.key_frames += 1
        self._keys.append(entry)
        del self._keys[:-KEY_CACHE]
        return entry

    def _probe(self, key: np.ndarray, residual: np.ndarray, entry: _KeyFrame | None = None) -> None:
        """Read the marked key frame back (as the verifier will) and correct weak bits, when due."""
        state: Any = entry if entry is not None else self
        if state.unprobed > 0:
            state.unprobed -= 1
            return
        if self.refiner is None:
            return
        started = time.perf_counter()
        self.probes += 1
        marked = self.watermarker.apply_residual(key, residual) if entry is None else add_mark(key, residual)
        view = self.watermarker._to_work(marked)
        budget = self.config.refine_budget_initial + self.config.refine_budget_per_chunk * self.chunks
        outcome = self.refiner.refine(
            view, self.correction, max_steps=max(0, int(budget) - self.refine_steps)
        )
        self.refine_s += time.perf_counter() - started
        self.correction, self.probe_min_logit = outcome.correction, outcome.min_logit
        if outcome.steps:
            self.corrected_chunks += 1
            self.refine_steps += outcome.steps
        else:
            state.unprobed = self.config.probe_interval

    def _mark_every_frame(self, labelled: list[np.ndarray]) -> list[np.ndarray]:
        """``key_refresh_mad`` = 0: the encoder on every frame, the middle frame read back (the scheme
        before key frames; kept to compare against and for plain per-frame RivaGAN)."""
        residuals = self._map(lambda frame: self.watermarker.residual(frame, self.payload), labelled)
        middle = len(labelled) // 2
        self._probe(labelled[middle], residuals[middle])
        correction = self.correction

        def finish(item: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
            frame, residual = item
            if correction is not None and correction.shape == residual.shape:
                residual = residual + correction
            return self.watermarker.apply_residual(frame, residual)

        return self._map(finish, list(zip(labelled, residuals, strict=True)))

    def _map(self, function: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        if self.workers <= 1 or len(items) <= 1:
            return [function(item) for item in items]  # the caller's thread: counted by __call__

        def timed(item: Any) -> Any:
            started = time.thread_time()
            try:
                return function(item)
            finally:
                self._add_cpu(time.thread_time() - started)

        return list(_marking_pool(self.workers).map(timed, items))


@dataclass
class _KeyFrame:
    """A frame the encoder ran on, its working-size mark and the correction that mark needed."""

    view: np.ndarray  # (1, 3, 1, h, w) working image, the network's BGR [-1, 1]
    grey: np.ndarray  # (h, w) uint8 working image, grey (optical flow)
    residual: np.ndarray  # (h, w, 3) RGB grey levels
    correction: np.ndarray | None
    unprobed: int = 0  # chunks still to mark with it without reading back


# Key frames kept per video: a talking head comes back to the same poses, and a returning pose reuses
# its mark and correction instead of paying the encoder and the read-back again. 8 x ~0.9 MB at 192 px.
KEY_CACHE = 8


def add_mark(frame: np.ndarray, mark: np.ndarray) -> np.ndarray:
    """``RivaGanWatermarker.apply_residual`` in one OpenCV pass: the working-size mark upsampled
    (bilinear, the same sample positions) and added with rounding and saturation to uint8. Equal up to
    exact .5 rounding ties (~4e-6 of the pixels, one grey level); ~10x faster (7 against 77 ms at 512²
    on the loaded 2-core machine, 19 against 102 ms at 1024x576): it is the marking's only per-frame
    work that grows with the frame size."""
    height, width = frame.shape[:2]
    mark = np.ascontiguousarray(mark, dtype=np.float32)
    if mark.shape[:2] != (height, width):
        mark = cv2.resize(mark, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.add(frame, mark, dtype=cv2.CV_8U)


_flows = threading.local()
_grids: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _follow_motion(mark: np.ndarray, key_grey: np.ndarray, frame_grey: np.ndarray) -> np.ndarray:
    """The key frame's working-size mark moved to where the key's content is in this frame.

    RivaGAN's mark is tied to the picture: its encoder writes, at each pixel, the payload bits that its
    content-driven attention picks there, and the decoder reads each pixel through the same attention.
    The key frame's mark left in place on a moved picture is read through the wrong channels: on the tiny
    model's swaying head (mean absolute difference 4.6 grey levels from the key frame) the weakest bit
    read -5.8 and 6 of 32 bits flipped; a scikit-image astronaut shifted by 18 px read 5 of 32 bits.
    Moved along the dense optical flow (DIS, ultrafast preset, at the working size: ~2 ms), the same
    marks read 32 of 32 with the key frame's margins (measured in docs/media.md).
    """
    flow_engine = getattr(_flows, "dis", None)
    if flow_engine is None:
        flow_engine = _flows.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    if frame_grey.shape != key_grey.shape:
        return mark
    flow = flow_engine.calc(frame_grey, key_grey, None)  # frame(x) ~ key(x + flow(x))
    height, width = frame_grey.shape
    if (height, width) not in _grids:  # a few working sizes per process; read-only once made
        _grids[(height, width)] = tuple(  # type: ignore[assignment]
            np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        )
    grid_x, grid_y = _grids[(height, width)]
    return cv2.remap(
        np.ascontiguousarray(mark, dtype=np.float32),
        grid_x + flow[..., 0],
        grid_y + flow[..., 1],
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _marking_pool(workers: int) -> ThreadPoolExecutor:
    """One pool per (process, size): a pool made before a fork has no threads in the child."""
    key = (os.getpid(), workers)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="goha-mark", initializer=_one_torch_thread
            )
        return _pools[key]


def watermarker_for(config: WatermarkConfig = DEFAULT_CONFIG, engine: str = "torch") -> RivaGanWatermarker:
    if engine == "onnx":
        return RivaGanWatermarker(config)
    if engine == "torch":
        return TorchRivaGanWatermarker(config)
    raise ValueError(f"engine must be 'torch' or 'onnx', got {engine!r}")


# -- ONNX initializers without the onnx package -----------------------------------------------------------
def _varint(buffer: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _fields(buffer: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message, in order."""
    position = 0
    while position < len(buffer):
        key, position = _varint(buffer, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(buffer, position)
        elif wire == 1:
            value, position = buffer[position : position + 8], position + 8
        elif wire == 2:
            length, position = _varint(buffer, position)
            value, position = buffer[position : position + length], position + length
        elif wire == 5:
            value, position = buffer[position : position + 4], position + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def onnx_float_initializers(path: Path) -> dict[str, np.ndarray]:
    """The float32 initializers (weights) of an ONNX model: ModelProto.graph(7).initializer(5), each a
    TensorProto with dims(1), data_type(2), float_data(4), name(8), raw_data(9)."""
    weights: dict[str, np.ndarray] = {}
    model = memoryview(path.read_bytes())
    for number, _, graph in _fields(model):
        if number != 7:
            continue
        for graph_number, _, tensor in _fields(graph):
            if graph_number != 5:
                continue
            dims: list[int] = []
            name, data_type, raw = "", 0, b""
            floats: list[bytes] = []
            for field, wire, value in _fields(tensor):
                if field == 1 and wire == 0:
                    dims.append(value)
                elif field == 1 and wire == 2:  # packed dims
                    position = 0
                    while position < len(value):
                        dim, position = _varint(value, position)
                        dims.append(dim)
                elif field == 2:
                    data_type = value
                elif field == 4:
                    floats.append(bytes(value))
                elif field == 8:
                    name = bytes(value).decode("utf-8")
                elif field == 9:
                    raw = bytes(value)
            if data_type != 1:  # FLOAT only: the int64 initializers are shape constants of the graph
                continue
            data = raw or b"".join(floats)
            weights[name] = np.frombuffer(data, dtype="<f4").reshape(dims).copy()
    return weights


# -- the encoder as 2-D torch ops ------------------------------------------------------------------------
KERNEL = 11
PAD = KERNEL // 2


# FFT sizes with small prime factors only (fast transforms); the tile is the size minus the kernel's 10.
FFT_SIZES = (48, 60, 64, 80, 96)


def fft_tile(height: int, width: int) -> int:
    """The tile (output square) that covers an image with the fewest frequency bins in total."""

    def bins(size: int) -> int:
        tile = size - KERNEL + 1
        return -(-height // tile) * -(-width // tile) * size * (size // 2 + 1)

    return min(FFT_SIZES, key=bins) - KERNEL + 1


class Conv11:
    """One 11x11 convolution (stride 1, zero padding 5), computed directly (oneDNN) or by FFT.

    FFT mode is overlap-save over tiles: the padded input is cut into ``tile + 10`` px squares that
    overlap by 10 px (60 px squares for the 192-px working image), each is transformed, multiplied per
    frequency by the kernel spectra (a batched ``tiles x C_in @ C_in x C_out`` complex product) and
    transformed back; the first ``tile`` px of each output square are exact (no wrap-around). An 11x11
    kernel costs 121 MACs per input/output channel pair and pixel directly, but under one complex
    multiply-add per pair and pixel through the spectra, and the transforms are shared by all channel
    pairs: the 32->32 layer drops from ~4.6 GMAC to ~0.25 G complex multiply-adds per frame. Float32
    rounding differs from the direct sum by ~1e-6 relative.
    """

    def __init__(self, weight: Any, bias: Any, *, mode: str = "fft", tile: int | None = None) -> None:
        if mode not in ("fft", "direct"):
            raise ValueError(f"mode must be 'fft' or 'direct', got {mode!r}")
        self.weight, self.bias, self.mode, self.tile = weight, bias, mode, tile
        self._spectra: dict[int, Any] = {}  # tile -> (S * (S // 2 + 1), C_in, C_out) complex64

    def spectrum(self, tile: int) -> Any:
        import torch

        if tile not in self._spectra:
            size = tile + KERNEL - 1
            out_channels, in_channels = self.weight.shape[:2]
            # conj: the network's "convolution" is a cross-correlation.
            spectrum = torch.fft.rfft2(self.weight, s=(size, size)).conj()
            self._spectra[tile] = (
                spectrum.permute(2, 3, 1, 0).reshape(-1, in_channels, out_channels).contiguous()
            )
        return self._spectra[tile]

    def __call__(self, x: Any) -> Any:
        import torch
        from torch.nn.functional import conv2d, pad

        if self.mode == "direct":
            return conv2d(x, self.weight, self.bias, padding=PAD)
        batch, channels, height, width = x.shape
        tile = self.tile or fft_tile(height, width)
        size = tile + KERNEL - 1
        rows, cols = -(-height // tile), -(-width // tile)
        padded = pad(x, (PAD, PAD + cols * tile - width, PAD, PAD + rows * tile - height))
        tiles = padded.unfold(2, size, tile).unfold(3, size, tile)  # (B, C, rows, cols, S, S) view
        spectra = torch.fft.rfft2(tiles)  # (B, C, rows, cols, S, S2)
        half = spectra.shape[-1]
        # One contiguous copy in (bin, tile, channel) order: a strided bmm operand is copied per bin.
        spectra = (
            spectra.permute(4, 5, 0, 2, 3, 1).contiguous().view(size * half, batch * rows * cols, channels)
        )
        product = torch.bmm(spectra, self.spectrum(tile))  # (bins, B * rows * cols, C_out)
        out_channels = product.shape[-1]
        product = product.view(size, half, batch, rows, cols, out_channels).permute(2, 5, 3, 4, 0, 1)
        out = torch.fft.irfft2(product.contiguous(), s=(size, size))[..., :tile, :tile]  # (B, O, r, c, T, T)
        out = out.permute(0, 1, 2, 4, 3, 5).reshape(batch, out_channels, rows * tile, cols * tile)
        return out[:, :, :height, :width] + self.bias.view(1, -1, 1, 1)


# -- the RivaGAN networks' layers, shared by the encoder and decoder ports ----------------------------------
# Both ONNX graphs (encoder and decoder) name their layers alike: four 11x11 convolutions, in order of
# use, and the three BatchNorms that follow the first three.
RIVAGAN_CONVS = ("_attention.0", "_attention.3", "_conv.0", "_conv.3")
RIVAGAN_NORMS = ("_attention.2", "_attention.5", "_conv.2")
BATCH_NORM_EPSILON = 1e-5  # the graphs' BatchNormalization epsilon


def _conv11_layers(weights: dict[str, np.ndarray], modes: tuple[str, ...]) -> tuple[Conv11, ...]:
    """The four 11x11 convolutions, the ONNX kernels' time axis (length 1) dropped."""
    import torch

    return tuple(
        Conv11(
            torch.from_numpy(weights[f"{name}.weight"][:, :, 0]).contiguous(),
            torch.from_numpy(weights[f"{name}.bias"]),
            mode=mode,
        )
        for name, mode in zip(RIVAGAN_CONVS, modes, strict=True)
    )


def _folded_norm(weights: dict[str, np.ndarray], name: str) -> tuple[Any, Any]:
    """Inference BatchNorm ``name`` as one per-channel (scale, shift), shaped (1, C, 1, 1)."""
    import torch

    scale = weights[f"{name}.weight"] / np.sqrt(weights[f"{name}.running_var"] + BATCH_NORM_EPSILON)
    shift = weights[f"{name}.bias"] - weights[f"{name}.running_mean"] * scale
    return torch.from_numpy(scale.reshape(1, -1, 1, 1)), torch.from_numpy(shift.reshape(1, -1, 1, 1))


class TorchRivaGanEncoder:
    """``rivagan_encoder.onnx`` (opset 10) as 2-D ops. The graph, read from the file:

        d = 2 * data - 1                                               (32 payload bits -> +-1)
        a = BN(tanh(conv11(frame, 3->32)));  a = BN(tanh(conv11(a, 32->32)))
        m = sum_c softmax_c(a)[c] * d[c]                               (1 channel)
        x = BN(tanh(conv11(concat(frame, m), 4->32)))
        out = frame + 0.016 * tanh(conv11(x, 32->3))

    every conv 11x11, stride 1, zero padding 5; BN in inference form (eps 1e-5). The ONNX graph
    carries a time axis of length 1 (kernel 1x11x11): dropping it is exact. ``modes`` picks direct or
    FFT convolution per layer (see ``Conv11``).
    """

    SCALE = 0.016

    def __init__(
        self, weights: dict[str, np.ndarray], modes: tuple[str, str, str, str] | None = None
    ) -> None:
        self.convs = _conv11_layers(weights, modes or DEFAULT_CONV_MODES)

        def norm(name: str) -> tuple[Any, Any]:
            # BN(tanh(x)) = s * tanh(x) + t = 2s * sigmoid(2x) + (t - s): kept as (2s, t - s), see _tanh_norm.
            scale, shift = _folded_norm(weights, name)
            return 2.0 * scale, shift - scale

        self.norms = tuple(norm(name) for name in RIVAGAN_NORMS)

    def __call__(self, frame: np.ndarray, data: np.ndarray) -> np.ndarray:
        """frame (B, 3, 1, H, W) in [-1, 1], data (B, 32) of 0/1 -> marked frame, same shape."""
        import torch

        conv0, conv1, conv2, conv3 = self.convs
        (s0, t0), (s1, t1), (s2, t2) = self.norms
        with torch.inference_mode():
            image = torch.from_numpy(np.ascontiguousarray(frame[:, :, 0], dtype=np.float32))
            bits = torch.from_numpy(np.asarray(data, dtype=np.float32)) * 2.0 - 1.0
            attention = _tanh_norm(conv0(image), s0, t0)
            attention = _tanh_norm(conv1(attention), s1, t1)
            weights = torch.softmax(attention, dim=1)
            message = (weights * bits[:, :, None, None]).sum(dim=1, keepdim=True)
            hidden = _tanh_norm(conv2(torch.cat([image, message], dim=1)), s2, t2)
            residual = conv3(hidden).mul_(2.0).sigmoid_().mul_(2.0 * self.SCALE).sub_(self.SCALE)
            return (image + residual).unsqueeze(2).numpy()


def _tanh_norm(x: Any, scale2: Any, offset: Any) -> Any:
    """BN(tanh(x)) in place on a fresh activation, as 2s * sigmoid(2x) + (t - s).

    tanh(x) = 2 sigmoid(2x) - 1 exactly; torch's CPU tanh is ~6x slower than its sigmoid here (3.0 vs
    0.5 ms per 32 x 192 x 192 activation, measured), and the identity's float32 error (~1e-7 absolute) is
    far below ``PORT_TOLERANCE``.
    """
    import torch

    return torch.addcmul(offset, x.mul_(2.0).sigmoid_(), scale2, out=x)


class _TorchSession:
    """Quacks like the ``onnxruntime.InferenceSession`` ``RivaGanWatermarker.embed_frame`` calls."""

    def __init__(self, encoder: TorchRivaGanEncoder) -> None:
        self.encoder = encoder

    def run(self, _output_names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [self.encoder(feeds["frame"], feeds["data"])]


class TorchRivaGanWatermarker(RivaGanWatermarker):
    """``RivaGanWatermarker`` whose embedding network runs as 2-D torch convolutions (see the module
    docstring); preprocessing, residual and detection are the base class's."""

    _torch_sessions: ClassVar[dict[tuple[int, int], tuple[Any, Any]]] = {}
    _torch_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def _load(cls, num_threads: int) -> tuple[Any, Any]:
        onnx_encoder, decoder = RivaGanWatermarker._load(num_threads)
        key = (os.getpid(), num_threads)
        with cls._torch_lock:
            if key not in cls._torch_sessions:
                cls._torch_sessions[key] = (_verified_port(onnx_encoder), decoder)
            return cls._torch_sessions[key]


def _verified_port(onnx_encoder: Any) -> Any:
    """The torch session if it reproduces ONNX Runtime on a random frame, else ONNX Runtime itself."""
    path = _model_dir() / "rivagan_encoder.onnx"
    try:
        encoder = TorchRivaGanEncoder(onnx_float_initializers(path))
    except (OSError, KeyError, ValueError) as exc:
        log.warning("RivaGAN torch port unavailable (%s): using ONNX Runtime", exc)
        return onnx_encoder
    rng = np.random.default_rng(0)
    frame = rng.uniform(-1, 1, (1, 3, 1, 48, 64)).astype(np.float32)
    data = rng.integers(0, 2, (1, 32)).astype(np.float32)
    expected = onnx_encoder.run(None, {"frame": frame, "data": data})[0]
    difference = float(np.abs(encoder(frame, data) - expected).max())
    if not difference <= PORT_TOLERANCE:
        log.warning("RivaGAN torch port differs from ONNX Runtime by %.2e: using ONNX Runtime", difference)
        return onnx_encoder
    return _TorchSession(encoder)


# -- the decoder as 2-D torch ops, for correcting the mark ---------------------------------------------------
# Max abs difference between the decoder port's logits and ONNX Runtime's on the self-check input
# (measured ~3e-5 on logits of magnitude ~1-30).
DECODER_TOLERANCE = 1e-3
OVERSHOOT = 2.0  # see MarkRefiner.refine
# Direct convolutions only: through FFT the 32-channel layers were ~25 % faster per correction step
# (0.18 vs 0.21-0.27 s) but held ~230 MB more at the peak (tile spectra kept for the backward pass, plus
# 54 MB of cached kernel spectra) against ~90 MB; the worker's memory is the scarcer resource.
DECODER_CONV_MODES: tuple[str, str, str, str] = ("direct", "direct", "direct", "direct")


class TorchRivaGanDecoder:
    """``rivagan_decoder.onnx`` as differentiable 2-D ops. The graph, read from the file:

        a = BN(tanh(conv11(frame, 3->32)));  a = BN(tanh(conv11(a, 32->32)))
        f = conv11(BN(tanh(conv11(frame, 3->32))), 32->32)
        logits = mean over pixels of softmax_c(a) * f                   (32 values, > 0 means bit 1)

    Same conventions as ``TorchRivaGanEncoder`` (BGR frame in [-1, 1], time axis dropped; convolution
    modes: ``DECODER_CONV_MODES``). Plain ``tanh`` and no in-place ops: the refiner differentiates
    through it.
    """

    def __init__(
        self, weights: dict[str, np.ndarray], modes: tuple[str, str, str, str] | None = None
    ) -> None:
        self.convs = _conv11_layers(weights, modes or DECODER_CONV_MODES)
        self.norms = tuple(_folded_norm(weights, name) for name in RIVAGAN_NORMS)

    def __call__(self, image: Any) -> Any:
        """image: (B, 3, H, W) torch tensor -> (B, 32) logits."""
        import torch

        conv0, conv1, conv2, conv3 = self.convs
        (s0, t0), (s1, t1), (s2, t2) = self.norms
        attention = torch.tanh(conv0(image)) * s0 + t0
        attention = torch.tanh(conv1(attention)) * s1 + t1
        features = conv3(torch.tanh(conv2(image)) * s2 + t2)
        return (torch.softmax(attention, dim=1) * features).mean(dim=(2, 3))


_decoders: dict[int, TorchRivaGanDecoder | None] = {}
_decoders_lock = threading.Lock()


def verified_decoder(num_threads: int = DEFAULT_CONFIG.num_threads) -> TorchRivaGanDecoder | None:
    """The decoder port if it reproduces ONNX Runtime's decoder on a random frame, else None (once per
    process; the mark is then not corrected, with a warning). ``num_threads`` picks the ONNX session to
    compare with (the watermarker's own, already loaded)."""
    key = os.getpid()
    with _decoders_lock:
        if key not in _decoders:
            _decoders[key] = _build_decoder(num_threads)
        return _decoders[key]


def _build_decoder(num_threads: int) -> TorchRivaGanDecoder | None:
    import torch

    path = _model_dir() / "rivagan_decoder.onnx"
    try:
        decoder = TorchRivaGanDecoder(onnx_float_initializers(path))
    except (OSError, KeyError, ValueError) as exc:
        log.warning("RivaGAN decoder port unavailable (%s): marks are not corrected", exc)
        return None
    _, onnx_decoder = RivaGanWatermarker._load(num_threads)
    rng = np.random.default_rng(0)
    frame = rng.uniform(-1, 1, (1, 3, 1, 48, 64)).astype(np.float32)
    expected = onnx_decoder.run(None, {"frame": frame})[0]
    with torch.no_grad():
        got = decoder(torch.from_numpy(frame[:, :, 0])).numpy()
    difference = float(np.abs(got - expected).max())
    if not difference <= DECODER_TOLERANCE:
        log.warning(
            "RivaGAN decoder port differs from ONNX Runtime by %.2e: marks are not corrected", difference
        )
        return None
    return decoder


def native_bf16() -> bool:
    """Does this CPU run bfloat16 convolutions natively (oneDNN, AVX-512 BF16 / AMX)? Elsewhere bfloat16
    is emulated and slower than float32, so the correction stays in float32 there."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class RefineOutcome:
    correction: np.ndarray | None  # working-size (h, w, 3) RGB grey levels, None when none was needed
    steps: int
    min_logit: float  # the probe's weakest bit (logit signed towards the payload), after correction


class MarkRefiner:
    """Makes every payload bit read back with a margin, by adding a small correction to the mark.

    RivaGAN's encoder writes some bits weakly on some pictures: on the tiny model's dark, blurry frames
    bit strengths (logit per unit of payload sign) range from ~2 to ~26 depending on the bit, and which
    bits end up near zero depends on the payload. The verifier needs ``min_bit_logit`` (2.0) on 28 bits
    after H.264, so ~7 % of payloads were missed on that content. Neither more ``strength`` nor larger
    per-bit inputs to the encoder fix it (both flip other bits: the encoder is not linear in them).

    This reads the marked frame as the verifier does (``view``: the marked uint8 frame at working size)
    with the decoder port. If a bit's logit signed towards the payload is below ``refine_margin``, it
    takes gradient steps on a working-size correction ``d`` that minimise sum(max(0, target - logit)),
    target = ``refine_margin + refine_headroom``, each twice Polyak's step size (the one that would zero
    the loss if the decoder were linear), clamped to ``refine_max_delta`` grey levels, until every bit
    reaches the target or ``refine_max_steps`` is spent; the best iterate is kept. The correction is
    upsampled and added like the residual, so it costs no extra work per frame; it is far fainter than
    the mark (corrected vs uncorrected > 45 dB PSNR; measured in docs/media.md).
    """

    def __init__(self, payload: int, config: WatermarkConfig, decoder: TorchRivaGanDecoder) -> None:
        import torch

        self.config = config
        self.decoder = decoder
        self.signs = torch.from_numpy(payload_to_bits(payload).astype(np.float32) * 2.0 - 1.0)
        self.bf16 = config.refine_bf16 and native_bf16()

    @classmethod
    def create(cls, payload: int, config: WatermarkConfig) -> MarkRefiner | None:
        if not config.refine_margin > 0 or config.refine_max_steps < 0:
            return None
        decoder = verified_decoder(config.num_threads)
        return None if decoder is None else cls(payload, config, decoder)

    def refine(
        self, view: np.ndarray, start: np.ndarray | None = None, *, max_steps: int | None = None
    ) -> RefineOutcome:
        """view: (1, 3, 1, h, w) working image of the marked frame (BGR, [-1, 1]); start: the previous
        chunk's correction ((h, w, 3) RGB grey levels), reused when the size matches; ``max_steps``: at
        most this many steps (and never more than ``refine_max_steps``)."""
        import torch

        image = torch.from_numpy(np.ascontiguousarray(view[:, :, 0], dtype=np.float32))
        height, width = image.shape[-2:]
        if start is not None and start.shape == (height, width, 3):
            # RGB grey levels -> the network's BGR [-1, 1] units.
            delta = torch.from_numpy(np.ascontiguousarray(start[:, :, ::-1].transpose(2, 0, 1))[None] / 127.5)
        else:
            start, delta = None, torch.zeros_like(image)
        with torch.inference_mode(False), torch.enable_grad():  # also when the caller disabled autograd
            return self._refine(image, delta, start, max_steps)

    def _refine(
        self, image: Any, delta: Any, start: np.ndarray | None, max_steps: int | None = None
    ) -> RefineOutcome:
        import torch

        margin = float(self.config.refine_margin)
        # Aim above the margin, so that the next chunk (slightly different picture) still clears it.
        target = margin + float(self.config.refine_headroom)
        limit = float(self.config.refine_max_delta) / 127.5
        steps = 0
        limit_steps = (
            self.config.refine_max_steps
            if max_steps is None
            else min(max_steps, self.config.refine_max_steps)
        )
        best: tuple[float, Any] | None = None  # (weakest logit, delta) of the best iterate
        while True:
            delta = delta.detach().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                signed = self.decoder(image + delta)[0].float() * self.signs
            weakest = float(signed.detach().min())
            if best is None or weakest > best[0]:
                best = (weakest, delta.detach())
            if weakest >= (margin if steps == 0 else target) or steps >= limit_steps:
                break
            deficit = torch.relu(target - signed).sum()
            (gradient,) = torch.autograd.grad(deficit, delta)
            norm = float(gradient.square().sum())
            if not norm > 0.0:
                break
            # Twice the step that would zero the deficit if the decoder were linear here (Polyak's step
            # size): the decoder's softmax attention makes the plain step undershoot (measured: 6-11
            # steps to the target instead of 4-6, for the same size of correction).
            delta = (delta.detach() - (OVERSHOOT * deficit.item() / norm) * gradient).clamp_(-limit, limit)
            steps += 1
        min_logit, delta = best
        if steps == 0:
            return RefineOutcome(correction=start, steps=0, min_logit=min_logit)
        correction = delta[0].numpy().transpose(1, 2, 0)[:, :, ::-1] * 127.5
        return RefineOutcome(
            correction=np.ascontiguousarray(correction, dtype=np.float32), steps=steps, min_logit=min_logit
        )
