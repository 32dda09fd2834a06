from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import SegformerForSemanticSegmentation

from shared.model.config import EncoderConfig
from shared.model.encoders import SegFormerEncoder, load_pretrained_mit, segformer_config
from shared.model.errors import CheckpointError
from tests.model.conftest import MICRO_ENCODER


def test_mit_b0_at_512_gives_256_channels_at_quarter_resolution() -> None:
    encoder = SegFormerEncoder(EncoderConfig()).eval()
    n_params = sum(p.numel() for p in encoder.parameters())
    # MiT-b0 encoder + decode head without BN/classifier: 3,713,632 (official-code-notes §10).
    assert n_params == 3_713_632
    with torch.no_grad():
        out = encoder(torch.zeros(1, 3, 512, 512))
    assert out.shape == (1, 256, 128, 128)


def test_folded_decode_head_equals_the_reference_head() -> None:
    torch.manual_seed(0)
    encoder = SegFormerEncoder(MICRO_ENCODER).eval()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        stages = encoder.stage_features(images)
        torch.testing.assert_close(
            encoder.decode_head(stages), encoder.decode_head.forward_reference(stages), atol=1e-5, rtol=1e-4
        )
    # Parameter names follow HF SegFormer and the released checkpoint.
    names = set(dict(encoder.named_parameters()))
    assert "decode_head.linear_c.0.proj.weight" in names and "decode_head.linear_fuse.weight" in names
    assert "segformer.stages.0.patch_embeddings.proj.weight" in names


def test_keep_mask_zeroes_the_normalised_input() -> None:
    torch.manual_seed(0)
    encoder = SegFormerEncoder(MICRO_ENCODER).eval()
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    mask = torch.ones(1, 1, 64, 64)
    mask[..., 20:40, 10:50] = 0
    other = images.clone()
    other[..., 20:40, 10:50] = torch.rand(1, 3, 20, 40)  # different content only where masked
    with torch.no_grad():
        torch.testing.assert_close(encoder(images, keep_mask=mask), encoder(other, keep_mask=mask))
        assert not torch.allclose(encoder(images), encoder(other))


def test_load_pretrained_from_a_local_huggingface_directory(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = SegformerForSemanticSegmentation(segformer_config(MICRO_ENCODER))
    reference.save_pretrained(tmp_path / "mit")
    torch.manual_seed(2)
    encoder = SegFormerEncoder(MICRO_ENCODER)
    loaded = load_pretrained_mit(encoder, tmp_path / "mit")
    ref_state = reference.state_dict()
    ours = encoder.state_dict()
    assert "decode_head.linear_fuse.weight" in loaded
    for name in loaded:
        ref_name = name.replace("decode_head.linear_c.", "decode_head.linear_projections.")
        torch.testing.assert_close(ours[name], ref_state[ref_name])
    # Every encoder tensor came from the file.
    assert all(k in loaded for k in ours if k.startswith("segformer."))

    # A 6-channel E_p keeps its fresh first patch embedding; the rest loads.
    six = SegFormerEncoder(dataclasses.replace(MICRO_ENCODER, in_channels=6))
    before = six.segformer.stages[0].patch_embeddings.proj.weight.detach().clone()
    loaded6 = load_pretrained_mit(six, tmp_path / "mit")
    assert "segformer.stages.0.patch_embeddings.proj.weight" not in loaded6
    assert torch.equal(six.segformer.stages[0].patch_embeddings.proj.weight, before)
    assert "segformer.stages.1.patch_embeddings.proj.weight" in loaded6


def test_load_pretrained_without_a_model_directory_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_pretrained_mit(SegFormerEncoder(MICRO_ENCODER), tmp_path)
    assert info.value.code == "model.pretrained_missing"
