"""The worker's fast watermark path (``shared.media.guardrails``): the RivaGAN encoder run as 2-D torch
convolutions must reproduce ONNX Runtime on the shipped model, give the same marked frames, carry the
same payload, and fall back to ONNX Runtime when it would not."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from shared.media import guardrails
from shared.media.guardrails import (
    Conv11,
    TorchRivaGanEncoder,
    apply_guardrails,
    onnx_float_initializers,
)
from shared.media.label import draw_label, label_box
from shared.media.watermark import RivaGanWatermarker, _model_dir, detect_frame, payload_to_bits

PAYLOAD = 0x5EC0FFEE


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return onnx_float_initializers(_model_dir() / "rivagan_encoder.onnx")


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    image = data.astronaut()
    return [cv2.resize(np.roll(image, 9 * i, axis=1), (512, 512)) for i in range(3)]


def test_the_reader_finds_every_layer_of_the_shipped_encoder(weights: dict[str, np.ndarray]) -> None:
    assert weights["_attention.0.weight"].shape == (32, 3, 1, 11, 11)
    assert weights["_attention.3.weight"].shape == (32, 32, 1, 11, 11)
    assert weights["_conv.0.weight"].shape == (32, 4, 1, 11, 11)
    assert weights["_conv.3.weight"].shape == (3, 32, 1, 11, 11)
    assert weights["_attention.2.running_var"].shape == (32,)
    assert all(value.dtype == np.float32 and np.isfinite(value).all() for value in weights.values())


@pytest.mark.parametrize("size", [(37, 50), (192, 192), (192, 341)])
def test_fft_convolution_equals_the_direct_one(size: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 5, 11, 11, generator=generator) * 0.05
    bias = torch.randn(8, generator=generator)
    x = torch.randn(2, 5, *size, generator=generator)
    direct = Conv11(weight, bias, mode="direct")(x)
    fft = Conv11(weight, bias, mode="fft")(x)
    assert fft.shape == direct.shape == (2, 8, *size)
    assert torch.allclose(fft, direct, atol=1e-4, rtol=0)


@pytest.mark.parametrize("modes", [("direct",) * 4, ("fft",) * 4, guardrails.DEFAULT_CONV_MODES])
def test_the_torch_encoder_reproduces_onnx_runtime(weights: dict[str, np.ndarray], frames, modes) -> None:
    onnx_encoder, _ = RivaGanWatermarker._load(1)
    work = RivaGanWatermarker()._to_work(frames[0])  # the real working image: (1, 3, 1, 192, 192)
    bits = payload_to_bits(PAYLOAD).astype(np.float32)[None]
    expected = onnx_encoder.run(None, {"frame": work, "data": bits})[0]
    got = TorchRivaGanEncoder(weights, modes)(work, bits)
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= guardrails.PORT_TOLERANCE
    # The mark itself (output - input) is what matters, and it is ~0.016 in size: compare relative to it.
    residual = expected - work
    assert float(np.abs((got - work) - residual).max()) < 1e-3 * float(np.abs(residual).max())


def test_marked_frames_match_the_onnx_path_and_carry_the_payload(frames) -> None:
    fast = apply_guardrails(frames, PAYLOAD, engine="torch")
    reference = apply_guardrails(frames, PAYLOAD, engine="onnx")
    for got, expected, original in zip(fast, reference, frames, strict=True):
        difference = np.abs(got.astype(np.int16) - expected.astype(np.int16))
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3  # float rounding at .5 only
        assert np.abs(got.astype(np.int16) - original.astype(np.int16)).mean() > 0.5  # it is marked
        np.testing.assert_array_equal(detect_frame(got), payload_to_bits(PAYLOAD))
    # Labelled too: inside the label's box the output is the labelled picture (plus the faint mark).
    box = label_box(512, 512)
    region = (slice(box.y0, box.y1), slice(box.x0, box.x1))
    labelled = draw_label(frames[0]).astype(np.int16)[region]
    assert np.abs(labelled - frames[0].astype(np.int16)[region]).mean() > 10
    assert np.abs(fast[0].astype(np.int16)[region] - labelled).mean() < 3


def test_a_port_that_disagrees_with_onnx_runtime_is_not_used(monkeypatch, weights) -> None:
    broken = dict(weights)
    broken["_conv.3.bias"] = weights["_conv.3.bias"] + 0.5
    monkeypatch.setattr(guardrails, "onnx_float_initializers", lambda _path: broken)
    onnx_encoder, _ = RivaGanWatermarker._load(1)
    assert guardrails._verified_port(onnx_encoder) is onnx_encoder
    monkeypatch.setattr(guardrails, "onnx_float_initializers", lambda _path: weights)
    assert guardrails._verified_port(onnx_encoder) is not onnx_encoder


def test_unknown_engine_is_refused(frames) -> None:
    with pytest.raises(ValueError, match="engine"):
        apply_guardrails(frames[:1], PAYLOAD, engine="fast")
