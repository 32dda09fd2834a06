"""SegFormer (Mix-Transformer) image encoders E_c, E_p and E_e (paper §3, notes §2–§4).

Each encoder is HuggingFace's ``SegformerModel`` built from a ``SegformerConfig`` (random init, no
download) plus the SegFormer all-MLP decode head *up to the classifier*: its BatchNorm, ReLU,
dropout and classifier are removed, as in the released code, so the output is the bias-free 1×1
``linear_fuse`` of the four per-stage projections, upsampled to 1/4 resolution and concatenated
in stage order 4, 3, 2, 1. For a 512² input: (B, 256, 128, 128).

Inputs are images in [-1, 1]; they are mapped to [0, 1] and ImageNet-normalised inside
(per 3-channel group, so the 6-channel E_p input of the released code is normalised as two
images).

Speed: ``linear_fuse`` is linear and bilinear upsampling is linear with weights summing to one,
so fuse(concat(up(proj_s(x_s)))) = Σ_s up(W_s·proj_s(x_s)) with W_s the fuse block of stage s.
`SegFormerFuseHead` evaluates the right-hand side: it folds each stage's projection into its fuse
block and upsamples 256-channel maps instead of running a 1024→256 convolution at 1/4 resolution.
Same parameters, same function (up to float rounding), ~4 GMACs less per 512² image.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import SegformerConfig, SegformerModel
from transformers.models.segformer.modeling_segformer import SegformerMLP

from shared.model.config import EncoderConfig
from shared.model.constants import IMAGENET_MEAN, IMAGENET_STD
from shared.model.errors import CheckpointError, ModelInputError


def segformer_config(config: EncoderConfig) -> SegformerConfig:
    return SegformerConfig(
        num_channels=config.in_channels,
        num_encoder_blocks=len(config.hidden_sizes),
        depths=list(config.depths),
        sr_ratios=list(config.sr_ratios),
        hidden_sizes=list(config.hidden_sizes),
        patch_sizes=list(config.patch_sizes),
        strides=list(config.strides),
        num_attention_heads=list(config.num_attention_heads),
        mlp_ratios=list(config.mlp_ratios),
        decoder_hidden_size=config.decoder_hidden_size,
        drop_path_rate=config.drop_path_rate,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
    )


class SegFormerFuseHead(nn.Module):
    """SegFormer decode head without BN/ReLU/dropout/classifier. Names follow the released code
    (``linear_c.N.proj``, ``linear_fuse``)."""

    def __init__(self, hf_config: SegformerConfig) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(
            SegformerMLP(hf_config, input_dim=width) for width in hf_config.hidden_sizes
        )
        self.linear_fuse = nn.Conv2d(
            hf_config.decoder_hidden_size * len(hf_config.hidden_sizes),
            hf_config.decoder_hidden_size,
            1,
            bias=False,
        )

    def forward(self, stage_features: list[Tensor]) -> Tensor:
        size = stage_features[0].shape[-2:]
        hidden = self.linear_fuse.out_channels
        fuse = self.linear_fuse.weight.flatten(1)  # (D, D * stages), input blocks in order 4, 3, 2, 1
        stages = len(stage_features)
        out: Tensor | None = None
        for s, (x, mlp) in enumerate(zip(stage_features, self.linear_c)):
            block = fuse[:, (stages - 1 - s) * hidden : (stages - s) * hidden]
            weight = block @ mlp.proj.weight  # (D, C_s): projection folded into its fuse block
            bias = block @ mlp.proj.bias
            y = F.conv2d(x, weight[:, :, None, None], bias)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        assert out is not None
        return out

    def forward_reference(self, stage_features: list[Tensor]) -> Tensor:
        """The head exactly as HuggingFace/released code evaluate it (for tests)."""
        size = stage_features[0].shape[-2:]
        ups = []
        for x, mlp in zip(stage_features, self.linear_c):
            b, _, h, w = x.shape
            y = mlp(x).transpose(1, 2).reshape(b, -1, h, w)
            ups.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return self.linear_fuse(torch.cat(ups[::-1], dim=1))


class SegFormerEncoder(nn.Module):
    """Image (B, in_channels, H, W) in [-1, 1] → features (B, decoder_hidden_size, H/4, W/4)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        hf_config = segformer_config(config)
        self.segformer = SegformerModel(hf_config)
        self.decode_head = SegFormerFuseHead(hf_config)
        groups = max(1, config.in_channels // 3)
        mean = (
            torch.tensor(IMAGENET_MEAN * groups)[: config.in_channels]
            if config.in_channels % 3 == 0
            else None
        )
        std = (
            torch.tensor(IMAGENET_STD * groups)[: config.in_channels] if config.in_channels % 3 == 0 else None
        )
        # Not persistent: constants, not weights (keeps checkpoints to learned tensors).
        self.register_buffer(
            "image_mean", mean.view(1, -1, 1, 1) if mean is not None else None, persistent=False
        )
        self.register_buffer(
            "image_std", std.view(1, -1, 1, 1) if std is not None else None, persistent=False
        )

    def normalise(self, images: Tensor) -> Tensor:
        x = (images + 1) * 0.5
        if self.image_mean is not None:
            x = (x - self.image_mean) / self.image_std
        return x

    def stage_features(self, images: Tensor, keep_mask: Tensor | None = None) -> list[Tensor]:
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ModelInputError(
                "model.bad_image",
                f"encoder expects (B, {self.config.in_channels}, H, W) images, got {tuple(images.shape)}",
            )
        hidden = self.normalise(images)
        if keep_mask is not None:  # masked pixels become 0 after normalisation, as in the released code
            hidden = hidden * keep_mask
        features = []
        for stage in self.segformer.stages:
            hidden = stage(hidden)
            features.append(hidden)
        return features

    def forward(self, images: Tensor, keep_mask: Tensor | None = None) -> Tensor:
        """``keep_mask`` (B, 1, H, W): 1 keep, 0 masked (applied to the normalised image)."""
        return self.decode_head(self.stage_features(images, keep_mask))


def reinitialise_patch_embedding(encoder: SegFormerEncoder) -> None:
    """Fresh random first patch embedding (the released code does this for E_p and E_e)."""
    proj = encoder.segformer.stages[0].patch_embeddings.proj
    nn.init.trunc_normal_(proj.weight, std=encoder.segformer.config.initializer_range)
    nn.init.zeros_(proj.bias)


def load_pretrained_mit(
    encoder: SegFormerEncoder, path: str | os.PathLike[str], *, keep_patch_embedding: bool = True
) -> list[str]:
    """Load pretrained MiT (and, when present, decode-head projection/fuse) weights from a LOCAL
    HuggingFace directory (``save_pretrained`` layout, e.g. a copy of
    ``nvidia/segformer-b0-finetuned-ade-512-512`` or ``nvidia/mit-b0``). Nothing is downloaded.

    ``keep_patch_embedding=False`` (or a channel-count mismatch, e.g. the 6-channel E_p) leaves the
    first patch embedding freshly initialised. Returns the names of tensors that were loaded.
    """
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise CheckpointError("model.pretrained_missing", f"{directory} is not a HuggingFace model directory")
    # Lazy import: only this optional path needs the semantic-segmentation class.
    from transformers import SegformerForSemanticSegmentation

    source_state: dict[str, Tensor]
    try:
        full = SegformerForSemanticSegmentation.from_pretrained(str(directory), local_files_only=True)
        source_state = full.state_dict()
    except (OSError, ValueError):
        base = SegformerModel.from_pretrained(str(directory), local_files_only=True)
        source_state = {f"segformer.{k}": v for k, v in base.state_dict().items()}
    ours = encoder.state_dict()
    mapped: dict[str, Tensor] = {}
    for key, value in source_state.items():
        name = key
        if key.startswith("decode_head.linear_projections."):
            name = key.replace("decode_head.linear_projections.", "decode_head.linear_c.")
        elif key.startswith("decode_head.") and not key.startswith("decode_head.linear_fuse."):
            continue  # batch norm / classifier: removed in this network
        if name not in ours:
            continue
        if not keep_patch_embedding and name.startswith("segformer.stages.0.patch_embeddings.proj."):
            continue
        if ours[name].shape != value.shape:
            if name.startswith("segformer.stages.0.patch_embeddings.proj."):
                continue  # different input channels: keep the fresh embedding
            raise CheckpointError(
                "model.pretrained_shape",
                f"{name}: pretrained shape {tuple(value.shape)} does not fit {tuple(ours[name].shape)}",
            )
        mapped[name] = value
    if not any(k.startswith("segformer.") for k in mapped):
        raise CheckpointError("model.pretrained_empty", f"no MiT encoder weights found in {directory}")
    encoder.load_state_dict(mapped, strict=False)
    return sorted(mapped)
