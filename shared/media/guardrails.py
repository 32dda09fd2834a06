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
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from shared.media.label import DEFAULT_CORNER, DEFAULT_TEXT, Corner, LabelStyle, draw_label
from shared.media.watermark import DEFAULT_CONFIG, RivaGanWatermarker, WatermarkConfig, _model_dir

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
    """Label and watermark a chunk of RGB uint8 frames; returns new frames, in order.

    ``engine``: "torch" (the verified 2-D port of the encoder, default) or "onnx" (ONNX Runtime).
    ``workers`` > 1 marks that many frames at once on a process-wide pool whose threads each run torch on
    one intra-op thread: frames are independent, so this scales without the barrier waits of splitting
    one frame's convolutions over threads.
    """
    style = LabelStyle(corner=corner, text=label_text)
    watermarker = watermarker_for(watermark_config, engine)

    def mark(frame: np.ndarray) -> np.ndarray:
        return watermarker.embed_frame(draw_label(frame, style=style), payload)

    frames = list(frames_rgb)
    if workers <= 1 or len(frames) <= 1:
        return [mark(frame) for frame in frames]
    return list(_marking_pool(workers).map(mark, frames))


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
    EPSILON = 1e-5
    LAYERS = ("_attention.0", "_attention.3", "_conv.0", "_conv.3")

    def __init__(
        self, weights: dict[str, np.ndarray], modes: tuple[str, str, str, str] | None = None
    ) -> None:
        import torch

        modes = modes or DEFAULT_CONV_MODES

        def conv(name: str, mode: str) -> Conv11:
            weight = torch.from_numpy(weights[f"{name}.weight"][:, :, 0]).contiguous()  # drop time axis
            return Conv11(weight, torch.from_numpy(weights[f"{name}.bias"]), mode=mode)

        def norm(name: str) -> tuple[Any, Any]:
            # BN(tanh(x)) = s * tanh(x) + t = 2s * sigmoid(2x) + (t - s): kept as (2s, t - s), see _tanh_norm.
            scale = weights[f"{name}.weight"] / np.sqrt(weights[f"{name}.running_var"] + self.EPSILON)
            shift = weights[f"{name}.bias"] - weights[f"{name}.running_mean"] * scale
            return (
                torch.from_numpy((2.0 * scale).reshape(1, -1, 1, 1)),
                torch.from_numpy((shift - scale).reshape(1, -1, 1, 1)),
            )

        self.convs = tuple(conv(name, mode) for name, mode in zip(self.LAYERS, modes, strict=True))
        self.norms = (norm("_attention.2"), norm("_attention.5"), norm("_conv.2"))

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
