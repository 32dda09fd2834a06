"""Checkpoints: weights + the config that built them + a content hash = the model version.

File (``torch.save``, loaded with ``weights_only=True``)::

    {"format": "goha-checkpoint/1", "model_version": "goha-<profile>-<12 hex>",
     "config": {...}, "config_hash": "<12 hex>", "content_hash": "<64 hex>",
     "state_dict": {name: tensor}, "extra": {...}}

The content hash is SHA-256 over the canonical config JSON and every tensor's name, dtype,
shape and bytes (sorted by name), so two checkpoints share a model version exactly when they
would compute the same function. The version string is what provenance records and what
serialised avatars are tied to.

Mapping to the released checkpoint (for a future converter; nothing here reads it):
``template_net.`` → ``canonical.encoder.``, ``embedding2neutral.`` → ``canonical.embedding2plane.``,
``id_net.`` → ``appearance.encoder.``, ``id_upsampler.`` → ``appearance.upsampler.``,
``expr_net.`` → ``expression.encoder.``, ``embedding2expr.`` → ``expression.embedding2plane.``,
``decoder.`` → ``renderer.decoder.``, ``neural_layers.gfpgan.`` → ``superres.``. Inside the
SegFormer encoders, the released (transformers 4) names ``segformer.encoder.block.S.B.*`` map to
transformers 5's ``segformer.stages.S.blocks.B.*`` (``from_pretrained`` does that renaming for
HuggingFace directories, see encoders.load_pretrained_mit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from shared.model.config import ModelConfig, config_from_dict, config_hash, config_json, config_to_dict
from shared.model.errors import CheckpointError, ConfigError
from shared.model.network import GOHANetwork

CHECKPOINT_FORMAT = "goha-checkpoint/1"


def content_hash(config: ModelConfig, state_dict: Mapping[str, Tensor]) -> str:
    digest = hashlib.sha256()
    digest.update(config_json(config).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def version_string(config: ModelConfig, digest: str) -> str:
    return f"goha-{config.profile}-{digest[:12]}"


def compute_model_version(network: GOHANetwork) -> str:
    """The version string of the network's current weights (hashes every parameter)."""
    return version_string(network.config, content_hash(network.config, network.state_dict()))


def save_checkpoint(
    network: GOHANetwork, path: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None
) -> str:
    """Write atomically; sets and returns ``network.model_version``."""
    state = {k: v.detach().to("cpu").clone() for k, v in network.state_dict().items()}
    digest = content_hash(network.config, state)
    version = version_string(network.config, digest)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_version": version,
        "config": config_to_dict(network.config),
        "config_hash": config_hash(network.config),
        "content_hash": digest,
        "state_dict": state,
        "extra": dict(extra or {}),
    }
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)
    network.model_version = version
    return version


def read_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """The raw payload, after checking it is a GOHA checkpoint."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError("model.checkpoint_missing", f"no checkpoint at {path}") from None
    except Exception as exc:  # torch raises several types for foreign or truncated files
        raise CheckpointError(
            "model.checkpoint_unreadable", f"{path}: cannot be read as a checkpoint ({exc})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError("model.checkpoint_unreadable", f"{path}: not a {CHECKPOINT_FORMAT} file")
    return payload


def config_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Dotted field paths whose values differ ("renderer.resolution: 32 != 64")."""

    def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            out: dict[str, Any] = {}
            for k, v in d.items():
                out.update(flatten(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: d}

    fa, fb = flatten(config_to_dict(a)), flatten(config_to_dict(b))
    return [
        f"{k}: {fa.get(k)!r} != {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)
    ]


def checkpoint_config(payload: Mapping[str, Any]) -> ModelConfig:
    try:
        return config_from_dict(payload["config"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError("model.checkpoint_config", f"checkpoint config is not valid: {exc}") from exc


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    expected_config: ModelConfig | None = None,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
) -> GOHANetwork:
    """Build the network the checkpoint describes and load its weights.

    ``expected_config``: raise ``CheckpointError(code="model.config_mismatch")`` listing the
    differing fields if the checkpoint was made with another config. ``verify`` recomputes the
    content hash (``model.hash_mismatch`` on corruption).
    """
    payload = read_checkpoint(path, map_location=map_location)
    config = checkpoint_config(payload)
    if expected_config is not None and config != expected_config:
        diffs = config_differences(config, expected_config)
        raise CheckpointError(
            "model.config_mismatch",
            f"{path} was trained with a different config (checkpoint != expected): " + "; ".join(diffs[:12]),
        )
    network = GOHANetwork(config)
    load_weights(network, payload, verify=verify)
    return network.to(map_location)


def load_weights(network: GOHANetwork, payload: Mapping[str, Any], *, verify: bool = True) -> None:
    """Load a checkpoint payload into an existing network of the same config."""
    config = checkpoint_config(payload)
    if config != network.config:
        raise CheckpointError(
            "model.config_mismatch",
            "checkpoint config differs from the network's: "
            + "; ".join(config_differences(config, network.config)[:12]),
        )
    state = payload["state_dict"]
    if verify:
        digest = content_hash(config, state)
        if digest != payload.get("content_hash"):
            raise CheckpointError(
                "model.hash_mismatch", "checkpoint content does not match its hash (corrupt file?)"
            )
        if version_string(config, digest) != payload.get("model_version"):
            raise CheckpointError(
                "model.hash_mismatch", "checkpoint model version does not match its content"
            )
    result = network.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            "model.state_mismatch",
            f"weights do not fit the network: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}",
        )
    network.model_version = payload["model_version"]


def re_export(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    derive: Callable[[ModelConfig], ModelConfig],
) -> str:
    """Write ``source``'s weights under the config ``derive`` makes of its own, for switches without
    weights of their own: every tensor loads strictly. The new file is a new model version (its config
    differs); ``extra.derived_from`` names the source's. Returns the new version."""
    payload = read_checkpoint(source)
    network = GOHANetwork(derive(checkpoint_config(payload)))
    network.load_state_dict(payload["state_dict"], strict=True)
    extra = {**payload.get("extra", {}), "derived_from": payload["model_version"]}
    return save_checkpoint(network, destination, extra=extra)


def with_mouth_interior(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    enabled: bool = True,
    teeth: bool = False,
) -> str:
    """Re-export ``source`` (`re_export`) with ``ExpressionConfig.mouth_interior`` (and ``mouth_teeth``)
    set: the map has no weights and the decoder does not read its channels."""

    def derive(config: ModelConfig) -> ModelConfig:
        if config.expression.mode != "encoder" or not config.renderer.source_colour_blend:
            raise CheckpointError(
                "model.config_mismatch",
                "the mouth-interior map needs the encoder expression branch and the source-colour blend",
            )
        return dataclasses.replace(
            config,
            expression=dataclasses.replace(
                config.expression, mouth_interior=enabled, mouth_teeth=teeth and enabled
            ),
        )

    return re_export(source, destination, derive)


def with_superres_generator(
    source: str | os.PathLike[str], destination: str | os.PathLike[str], *, enabled: bool
) -> str:
    """Re-export ``source`` (`re_export`) with ``SuperResConfig.generator`` set: off, the served frame
    is the SR's starting image (the render's detail image) and the generator's weights, kept, go
    unused."""
    return re_export(
        source,
        destination,
        lambda config: dataclasses.replace(
            config, superres=dataclasses.replace(config.superres, generator=enabled)
        ),
    )
