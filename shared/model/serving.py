"""Serving orchestration of the GOHA network: `reconstruct` once per portrait, `animate` per frame.

The computation splits at the tri-plane sum: `reconstruct` runs everything that depends on the
source only (E_c, depth render, E_p, rasterisation, upsampler) once per portrait and returns a
`SourceAvatar` (avatar.py) holding T_c + T_p; `animate` adds each frame's T_e to it, renders and
super-resolves many frames per call. This is exact because the lifting depth comes from T_c (the
paper's formulation). With ``appearance.depth_source = "canonical_expression"`` (the released
code) T_p depends on the frame, so the avatar keeps T_c and the source inputs and `animate`
recomputes T_p per frame.

The functions take the network as their first argument and use only its public steps
(``canonical_planes``, ``appearance_planes``, ``expression_planes``, ``render``,
``super_resolve``); ``GOHANetwork.reconstruct`` / ``.animate`` call them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from shared.model.avatar import SourceAvatar
from shared.model.errors import CheckpointError, ModelInputError
from shared.model.triplane import sum_planes

if TYPE_CHECKING:  # annotations only: network.py imports this module
    from shared.model.network import GOHANetwork


@dataclass
class AnimationOutput:
    low_res: Tensor  # (N, 3, r, r)
    frames: Tensor | None  # (N, 3, out, out) super-resolved (None when superres=False)
    depth: Tensor  # (N, 1, r, r)
    alpha: Tensor  # (N, 1, r, r) accumulated opacity of the render in [0, 1] (0 = background)


def reconstruct(
    network: GOHANetwork,
    portrait: Tensor,
    mask: Tensor,
    camera: Tensor,
    *,
    deterministic: bool = True,
    generator: torch.Generator | None = None,
) -> SourceAvatar:
    """Source-only work, once per portrait: T_c (+ T_p) → `SourceAvatar`.

    Runs under the caller's grad mode; wrap in ``torch.inference_mode()`` for serving.
    """
    network._check_source(portrait, mask, camera)
    t_c = network.canonical_planes(portrait, mask)
    common = {"model_version": network.version_label, "config_hash": network.config_hash}
    if network.appearance is None:
        return SourceAvatar(planes=t_c, **common)
    if network.lifting_is_cacheable:
        t_p, _ = network.appearance_planes(
            portrait, mask, camera, t_c, deterministic=deterministic, generator=generator
        )
        return SourceAvatar(planes=sum_planes(t_c, t_p), **common)
    features = None
    if network.config.appearance.input_mode == "masked_source":
        features = network.appearance.encode(portrait, mask)
    return SourceAvatar(
        canonical=t_c,
        source_image=portrait,
        source_mask=mask,
        source_camera=camera.to(torch.float32),
        appearance_features=features,
        **common,
    )


def animate(
    network: GOHANetwork,
    avatar: SourceAvatar,
    expression_renders: Tensor | None,
    cameras: Tensor,
    *,
    expression_coefficients: Tensor | None = None,
    deterministic: bool = True,
    generator: torch.Generator | None = None,
    superres: bool = True,
) -> AnimationOutput:
    """N frames from one avatar (batch 1, broadcast) or N avatars (batch N).

    ``expression_renders`` (N, 3, H, W) frontal 3DMM renders I_exp; ``cameras`` (N, 25).
    """
    if avatar.config_hash != network.config_hash:
        raise CheckpointError(
            "model.avatar_mismatch",
            f"avatar config {avatar.config_hash} != network config {network.config_hash}",
        )
    if network.model_version is not None and avatar.model_version != network.model_version:
        raise CheckpointError(
            "model.avatar_mismatch",
            f"avatar model {avatar.model_version} != network model {network.model_version}",
        )
    n = cameras.shape[0] if cameras.ndim == 2 else -1
    network._check_cameras(cameras, n, "cameras")
    if avatar.batch_size not in (1, n):
        raise ModelInputError("model.batch_mismatch", f"avatar batch {avatar.batch_size} must be 1 or N={n}")
    for name, t in (
        ("expression renders", expression_renders),
        ("coefficients", expression_coefficients),
    ):
        if t is not None and t.shape[0] != n:
            raise ModelInputError("model.batch_mismatch", f"{name} batch {t.shape[0]} != cameras N={n}")
    dtype = next(network.parameters()).dtype
    device = cameras.device
    avatar = avatar.to(device=device, dtype=dtype)
    low, high, depth, alpha = [], [], [], []
    step = max(1, network.max_frames_per_chunk)
    for start in range(0, n, step):
        sl = slice(start, start + step)
        count = len(range(n)[sl])

        def pick(t: Tensor | None, sl: slice = sl, count: int = count) -> Tensor | None:
            if t is None:
                return None
            return t[sl] if t.shape[0] == n and n != 1 else t.expand(count, *t.shape[1:])

        t_e = network.expression_planes(
            expression_renders[sl].to(dtype) if expression_renders is not None else None,
            expression_coefficients[sl] if expression_coefficients is not None else None,
        )
        if avatar.cacheable:
            source_planes = pick(avatar.planes)
        else:
            t_c = pick(avatar.canonical)
            assert t_c is not None
            if network.appearance is None:
                source_planes = t_c
            else:
                t_p, _ = network.appearance_planes(
                    pick(avatar.source_image),  # type: ignore[arg-type]
                    pick(avatar.source_mask),  # type: ignore[arg-type]
                    pick(avatar.source_camera),  # type: ignore[arg-type]
                    t_c + t_e,
                    deterministic=deterministic,
                    generator=generator,
                    features=pick(avatar.appearance_features),
                )
                source_planes = sum_planes(t_c, t_p)
        planes = sum_planes(source_planes, t_e)
        rendered = network.render(
            planes, cameras[sl], deterministic=deterministic, generator=generator, rgb_only=True
        )
        low.append(rendered.rgb)
        depth.append(rendered.depth)
        alpha.append(rendered.opacity.clamp(0.0, 1.0))
        if superres:
            high.append(
                network.super_resolve(
                    rendered.rgb, deterministic=deterministic, generator=generator, base=rendered.detail
                )
            )
    return AnimationOutput(
        low_res=torch.cat(low),
        frames=torch.cat(high) if superres else None,
        depth=torch.cat(depth),
        alpha=torch.cat(alpha),
    )
