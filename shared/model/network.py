"""The GOHA network (paper §3): three branches, tri-plane sum, volume rendering, super-resolution.

    T_c = Embed2Plane(E_c(I_s · keep))                                    canonical.py   (§3.1)
    D_s = depth of R_V(T_c, C_s) at 128²;  P_ij = o + D_s^ij d           appearance.py  (§3.2)
    T_p = Upsampler(Rasterize(P, E_p(I_s · keep))) [+ lifted colour]     appearance.py  (§3.2)
    T_e = Embed2Plane(E_e(I_exp))                                         expression.py  (§3.3)
    I_{c+e+p} = R_V(T_c + T_p + T_e, C_t);  I_o = SR(I_{c+e+p})          renderer.py, superres.py

Serving splits the computation at the sum: `reconstruct` runs everything that depends on the
source only (E_c, depth render, E_p, rasterisation, upsampler) once per portrait and returns a
`SourceAvatar` holding T_c + T_p; `animate` adds each frame's T_e to it, renders and
super-resolves many frames per call. This is exact because the lifting depth comes from T_c (the
paper's formulation). With ``appearance.depth_source = "canonical_expression"`` (the released
code) T_p depends on the frame, so the avatar keeps T_c and the source inputs and `animate`
recomputes T_p per frame.

Inputs: images NCHW in [-1, 1] at ``config.image_size``; the keep-mask (B, 1, S, S) is 1 where
the portrait is kept and 0 on eyes/brows/mouth; cameras are EG3D 25-vectors (cameras.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.model import cameras as cams
from shared.model.appearance import AppearanceBranch
from shared.model.canonical import CanonicalBranch, check_image
from shared.model.config import ModelConfig, config_hash
from shared.model.errors import CheckpointError, ModelInputError
from shared.model.expression import ExpressionBranch, LinearExpressionBranch
from shared.model.renderer import RenderOutput, VolumeRenderer
from shared.model.superres import SuperResolution
from shared.model.triplane import sum_planes

AVATAR_FORMAT = "goha-avatar/1"


@dataclass
class GOHABatch:
    """One training step's inputs (batch B)."""

    source_image: Tensor  # (B, 3, S, S) in [-1, 1]
    source_mask: Tensor  # (B, 1, S, S) keep-mask: 1 keep, 0 eyes/brows/mouth
    source_camera: Tensor  # (B, 25)
    target_camera: Tensor  # (B, 25)
    expression_render: Tensor | None = None  # I_exp (B, 3, H, W), resized to S if needed
    expression_coefficients: Tensor | None = None  # (B, K) for the linear-expression ablation
    use_expression: bool = True  # progressive schedule flags
    use_appearance: bool = True
    use_superres: bool = True

    def to(self, device: torch.device | str) -> GOHABatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device) for k, v in moved.items() if isinstance(v, Tensor)})


@dataclass
class TrainingOutput:
    """Renders at the target camera. Images (B, 3, r, r) in [-1, 1]."""

    canonical: Tensor | None  # I_c = R_V(T_c, C_t) (None when intermediate_renders=False)
    canonical_expression: Tensor | None  # I_{c+e} (None when the expression branch is off)
    full: Tensor | None  # I_{c+e+p} (None when the appearance branch is off)
    final: RenderOutput  # the render of all active planes (rgb, features, depth, opacity)
    superres: Tensor | None  # SR(final.rgb) (B, 3, out, out)
    source_depth: Tensor | None  # (B, 1, d, d) lifting depth, source camera
    canonical_planes: Tensor  # T_c
    expression_planes: Tensor | None  # T_e
    appearance_planes: Tensor | None  # T_p
    planes: Tensor  # sum of the active planes (for the TV loss: GOHANetwork.query)

    @property
    def depth(self) -> Tensor:
        return self.final.depth


@dataclass
class AnimationOutput:
    low_res: Tensor  # (N, 3, r, r)
    frames: Tensor | None  # (N, 3, out, out) super-resolved (None when superres=False)
    depth: Tensor  # (N, 1, r, r)
    alpha: Tensor  # (N, 1, r, r) accumulated opacity of the render in [0, 1] (0 = background)


@dataclass
class SourceAvatar:
    """Everything `animate` needs from one or more source portraits (batch B, usually 1).

    Cacheable (default): ``planes`` = T_c + T_p. Otherwise (lifting depth from T_c + T_e):
    ``canonical`` = T_c plus the source inputs to recompute T_p per frame.
    """

    model_version: str
    config_hash: str
    planes: Tensor | None = None
    canonical: Tensor | None = None
    source_image: Tensor | None = None
    source_mask: Tensor | None = None
    source_camera: Tensor | None = None
    appearance_features: Tensor | None = None

    _TENSORS = (
        "planes",
        "canonical",
        "source_image",
        "source_mask",
        "source_camera",
        "appearance_features",
    )

    @property
    def cacheable(self) -> bool:
        return self.planes is not None

    @property
    def batch_size(self) -> int:
        tensor = self.planes if self.planes is not None else self.canonical
        assert tensor is not None
        return tensor.shape[0]

    def tensors(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self._TENSORS if getattr(self, k) is not None}

    def _map(self, fn: Any) -> SourceAvatar:
        return replace(self, **{k: fn(k, v) for k, v in self.tensors().items()})

    def to(self, *args: Any, **kwargs: Any) -> SourceAvatar:
        """Like ``Tensor.to`` (dtype and/or device), e.g. ``avatar.to(torch.float16)`` for transport.
        Cameras always stay float32 (fp16 would shift rays by millimetres)."""

        def move(name: str, t: Tensor) -> Tensor:
            out = t.to(*args, **kwargs)
            return out.to(torch.float32) if name == "source_camera" else out

        return self._map(move)

    def detach(self) -> SourceAvatar:
        return self._map(lambda _, t: t.detach())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def save(self, path: str | os.PathLike[str]) -> None:
        payload = {
            "format": AVATAR_FORMAT,
            "model_version": self.model_version,
            "config_hash": self.config_hash,
            "tensors": {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()},
        }
        tmp = f"{os.fspath(path)}.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        map_location: str | torch.device = "cpu",
        expected_config_hash: str | None = None,
        expected_model_version: str | None = None,
    ) -> SourceAvatar:
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises several types for foreign/corrupt files
            raise CheckpointError(
                "model.avatar_unreadable", f"{path}: not a readable avatar file ({exc})"
            ) from exc
        if not isinstance(payload, dict) or payload.get("format") != AVATAR_FORMAT:
            raise CheckpointError("model.avatar_unreadable", f"{path}: not a {AVATAR_FORMAT} file")
        avatar = cls(
            model_version=payload["model_version"], config_hash=payload["config_hash"], **payload["tensors"]
        )
        if expected_config_hash is not None and avatar.config_hash != expected_config_hash:
            raise CheckpointError(
                "model.avatar_mismatch",
                f"avatar was made by config {avatar.config_hash}, this network is {expected_config_hash}",
            )
        if expected_model_version is not None and avatar.model_version != expected_model_version:
            raise CheckpointError(
                "model.avatar_mismatch",
                f"avatar was made by model {avatar.model_version}, this network is {expected_model_version}",
            )
        return avatar


class GOHANetwork(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.canonical = CanonicalBranch(config)
        self.appearance = AppearanceBranch(config) if config.appearance.enabled else None
        self.expression: ExpressionBranch | LinearExpressionBranch = (
            ExpressionBranch(config)
            if config.expression.mode == "encoder"
            else LinearExpressionBranch(config)
        )
        self.renderer = VolumeRenderer(config.renderer, config.plane)
        self.superres = SuperResolution(config.superres)
        # Set by checkpoint.save_checkpoint / load_checkpoint: "goha-<profile>-<12 hex>".
        self.model_version: str | None = None
        self.max_frames_per_chunk = 8  # runtime knob for animate's memory; results do not depend on it
        # Opt-in approximation (runtime knob, off by default): run the SR under torch.autocast with
        # this dtype, e.g. torch.bfloat16 on CPUs with avx512_bf16/AMX, where its convolutions run
        # ~2x faster. Changes results: measured on the paper SR (random weights) 50 dB PSNR
        # against float32, max abs error 0.03 on [-1, 1] (docs/model.md).
        self.superres_autocast: torch.dtype | None = None
        self._config_hash = config_hash(config)

    @property
    def config_hash(self) -> str:
        return self._config_hash

    # --- frozen parts ----------------------------------------------------------------------------

    def freeze_in_eval(self, trained: set[str]) -> list[str]:
        """Hold every direct child not named in ``trained`` in eval mode, now and after any later
        ``train()``; returns the frozen children's names.

        Training stage 2 trains the SR only: the frozen branches must compute exactly what they
        compute when served (no SegFormer drop-path turning the SR's input into noise).
        """
        self._frozen_in_eval = [name for name, _ in self.named_children() if name not in trained]
        self.train(self.training)
        return list(self._frozen_in_eval)

    def train(self, mode: bool = True) -> GOHANetwork:
        super().train(mode)
        for name in getattr(self, "_frozen_in_eval", ()):
            getattr(self, name).train(False)
        return self

    @property
    def version_label(self) -> str:
        return self.model_version or f"goha-{self.config.profile}-unversioned"

    @property
    def lifting_is_cacheable(self) -> bool:
        return self.appearance is None or self.config.appearance.depth_source == "canonical"

    # --- input checks ----------------------------------------------------------------------------

    def _check_source(self, image: Tensor, mask: Tensor, camera: Tensor) -> None:
        size = self.config.image_size
        check_image(image, size, 3, "source image")
        check_image(mask, size, 1, "source mask")
        if image.shape[0] != mask.shape[0]:
            raise ModelInputError("model.batch_mismatch", "source image and mask batch sizes differ")
        self._check_cameras(camera, image.shape[0], "source camera")
        if image.detach().abs().max() > 1.05:
            raise ModelInputError("model.bad_range", "source image must be in [-1, 1]")
        if mask.detach().min() < 0 or mask.detach().max() > 1:
            raise ModelInputError("model.bad_range", "source mask must be in [0, 1] (1 = keep)")

    @staticmethod
    def _check_cameras(cameras: Tensor, batch: int, name: str) -> None:
        if cameras.ndim != 2 or cameras.shape != (batch, 25):
            raise ModelInputError(
                "model.bad_camera", f"{name} must be ({batch}, 25) EG3D vectors, got {tuple(cameras.shape)}"
            )
        if not torch.isfinite(cameras).all():
            raise ModelInputError("model.bad_camera", f"{name} contains non-finite values")

    # --- the paper's steps -----------------------------------------------------------------------

    def canonical_planes(self, source_image: Tensor, source_mask: Tensor) -> Tensor:
        """T_c from the masked source (§3.1)."""
        return self.canonical(source_image, source_mask)

    def expression_planes(
        self, expression_render: Tensor | None = None, expression_coefficients: Tensor | None = None
    ) -> Tensor:
        """T_e from the frontal 3DMM render (§3.3) or, in the linear ablation, from coefficients."""
        if isinstance(self.expression, LinearExpressionBranch):
            if expression_coefficients is None:
                raise ModelInputError(
                    "model.missing_coefficients", "the linear expression model needs coefficients"
                )
            return self.expression(expression_coefficients)
        if expression_render is None:
            raise ModelInputError(
                "model.missing_expression", "the expression branch needs the 3DMM render I_exp"
            )
        if expression_render.ndim != 4 or expression_render.shape[1] != 3:
            raise ModelInputError(
                "model.bad_image", f"I_exp must be (N, 3, H, W), got {tuple(expression_render.shape)}"
            )
        size = self.config.image_size
        if expression_render.shape[-2:] != (size, size):
            # The 3DMM is rendered at its own size (224² like Deep3D); the encoder sees image_size.
            expression_render = F.interpolate(
                expression_render, size=(size, size), mode="bilinear", align_corners=False
            )
        return self.expression(expression_render)

    @property
    def lifting_resolution(self) -> int:
        """Resolution of the source-view depth render: E_p's feature grid, or the finer colour grid."""
        return max(self.config.renderer.depth_resolution, self.config.appearance.colour_resolution)

    def source_render(
        self,
        base_planes: Tensor,
        source_camera: Tensor,
        *,
        deterministic: bool,
        generator: torch.Generator | None,
    ) -> RenderOutput:
        """Render of the base planes from the source camera at the lifting resolution (no gradient:
        positions only select nearest neighbours)."""
        with torch.no_grad():
            return self.renderer(
                base_planes,
                source_camera,
                self.lifting_resolution,
                deterministic=deterministic,
                generator=generator,
                rgb_only=True,
            )

    def appearance_planes(
        self,
        source_image: Tensor,
        source_mask: Tensor,
        source_camera: Tensor,
        base_planes: Tensor,
        *,
        deterministic: bool,
        generator: torch.Generator | None = None,
        features: Tensor | None = None,
    ) -> tuple[Tensor, RenderOutput]:
        """T_p (§3.2): depth of the base planes → lifting → rasterisation → upsampler (+ the lifted
        colour when ``appearance.colour_resolution`` is set)."""
        assert self.appearance is not None
        rendered = self.source_render(
            base_planes, source_camera, deterministic=deterministic, generator=generator
        )
        if features is None:
            features = self.appearance.encode(source_image, source_mask, rendered.rgb)
        size = features.shape[-1]
        depth = rendered.depth
        if depth.shape[-1] != size:  # rendered at the finer colour grid: average down per feature pixel
            depth = F.avg_pool2d(depth, depth.shape[-1] // size)
        # Rays stay float32 even for half-precision networks (fp16 would shift points by millimetres).
        origins, directions = cams.generate_rays(source_camera.float(), size)
        t_p = self.appearance(features, depth, origins, directions)
        if self.config.appearance.colour_resolution:
            colour_rays = cams.generate_rays(source_camera.float(), rendered.depth.shape[-1])
            colour = self.appearance.colour_planes(
                source_image.to(t_p.dtype), source_mask.to(t_p.dtype), rendered.depth, *colour_rays
            )
            t_p = self.appearance.add_colour(t_p, colour)
        return t_p, rendered

    def render(
        self,
        planes: Tensor,
        cameras: Tensor,
        *,
        resolution: int | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        rgb_only: bool = False,
    ) -> RenderOutput:
        """R_V(T, C) (low resolution)."""
        self._check_cameras(cameras, planes.shape[0], "cameras")
        return self.renderer(
            planes, cameras, resolution, deterministic=deterministic, generator=generator, rgb_only=rgb_only
        )

    def super_resolve(
        self, low_res: Tensor, *, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        if self.superres_autocast is None:
            return self.superres(low_res, generator=generator, deterministic=deterministic)
        with torch.autocast(device_type=low_res.device.type, dtype=self.superres_autocast):
            image = self.superres(low_res, generator=generator, deterministic=deterministic)
        return image.to(low_res.dtype)

    def query(self, planes: Tensor, points: Tensor) -> Tensor:
        """Raw decoder output (B, N, 1 + F) at world points; channel 0 is σ (TV loss)."""
        return self.renderer.query(planes, points)

    # --- training ------------------------------------------------------------------------------------

    def forward(
        self,
        batch: GOHABatch,
        *,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        intermediate_renders: bool = True,
        return_features: bool = True,
    ) -> TrainingOutput:
        """All branches at once, renders at the target camera (paper Eq. 2).

        ``intermediate_renders=False`` renders only the final image (what inference needs);
        ``deterministic`` turns off all sampling noise (renderer jitter, SR noise).
        """
        src, mask, src_cam = batch.source_image, batch.source_mask, batch.source_camera
        self._check_source(src, mask, src_cam)
        b = src.shape[0]
        self._check_cameras(batch.target_camera, b, "target camera")
        t_c = self.canonical_planes(src, mask)
        t_e = None
        if batch.use_expression:
            t_e = self.expression_planes(batch.expression_render, batch.expression_coefficients)
            if t_e.shape[0] != b:
                raise ModelInputError(
                    "model.batch_mismatch", "expression input batch differs from the source batch"
                )
        t_p = None
        source_depth = None
        if self.appearance is not None and batch.use_appearance:
            base = t_c
            if self.config.appearance.depth_source == "canonical_expression" and t_e is not None:
                base = t_c + t_e
            t_p, rendered = self.appearance_planes(
                src, mask, src_cam, base, deterministic=deterministic, generator=generator
            )
            source_depth = rendered.depth
        source_planes = sum_planes(t_c, t_p)
        planes = sum_planes(source_planes, t_e)

        def render(p: Tensor, rgb_only: bool = True) -> RenderOutput:
            return self.render(
                p, batch.target_camera, deterministic=deterministic, generator=generator, rgb_only=rgb_only
            )

        final = render(planes, rgb_only=not return_features)
        canonical = final.rgb if planes is t_c else (render(t_c).rgb if intermediate_renders else None)
        canonical_expression = None
        if t_e is not None:
            if t_p is None:
                canonical_expression = final.rgb
            elif intermediate_renders:
                canonical_expression = render(t_c + t_e).rgb
        full = final.rgb if t_p is not None else None
        sr = None
        if batch.use_superres:
            sr = self.super_resolve(final.rgb, deterministic=deterministic, generator=generator)
        return TrainingOutput(
            canonical=canonical,
            canonical_expression=canonical_expression,
            full=full,
            final=final,
            superres=sr,
            source_depth=source_depth,
            canonical_planes=t_c,
            expression_planes=t_e,
            appearance_planes=t_p,
            planes=planes,
        )

    # --- serving ---------------------------------------------------------------------------------

    def reconstruct(
        self,
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
        self._check_source(portrait, mask, camera)
        t_c = self.canonical_planes(portrait, mask)
        common = {"model_version": self.version_label, "config_hash": self.config_hash}
        if self.appearance is None:
            return SourceAvatar(planes=t_c, **common)
        if self.lifting_is_cacheable:
            t_p, _ = self.appearance_planes(
                portrait, mask, camera, t_c, deterministic=deterministic, generator=generator
            )
            return SourceAvatar(planes=sum_planes(t_c, t_p), **common)
        features = None
        if self.config.appearance.input_mode == "masked_source":
            features = self.appearance.encode(portrait, mask)
        return SourceAvatar(
            canonical=t_c,
            source_image=portrait,
            source_mask=mask,
            source_camera=camera.to(torch.float32),
            appearance_features=features,
            **common,
        )

    def animate(
        self,
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
        if avatar.config_hash != self.config_hash:
            raise CheckpointError(
                "model.avatar_mismatch",
                f"avatar config {avatar.config_hash} != network config {self.config_hash}",
            )
        if self.model_version is not None and avatar.model_version != self.model_version:
            raise CheckpointError(
                "model.avatar_mismatch",
                f"avatar model {avatar.model_version} != network model {self.model_version}",
            )
        n = cameras.shape[0] if cameras.ndim == 2 else -1
        self._check_cameras(cameras, n, "cameras")
        if avatar.batch_size not in (1, n):
            raise ModelInputError(
                "model.batch_mismatch", f"avatar batch {avatar.batch_size} must be 1 or N={n}"
            )
        for name, t in (
            ("expression renders", expression_renders),
            ("coefficients", expression_coefficients),
        ):
            if t is not None and t.shape[0] != n:
                raise ModelInputError("model.batch_mismatch", f"{name} batch {t.shape[0]} != cameras N={n}")
        dtype = next(self.parameters()).dtype
        device = cameras.device
        avatar = avatar.to(device=device, dtype=dtype)
        low, high, depth, alpha = [], [], [], []
        step = max(1, self.max_frames_per_chunk)
        for start in range(0, n, step):
            sl = slice(start, start + step)
            count = len(range(n)[sl])

            def pick(t: Tensor | None, sl: slice = sl, count: int = count) -> Tensor | None:
                if t is None:
                    return None
                return t[sl] if t.shape[0] == n and n != 1 else t.expand(count, *t.shape[1:])

            t_e = self.expression_planes(
                expression_renders[sl].to(dtype) if expression_renders is not None else None,
                expression_coefficients[sl] if expression_coefficients is not None else None,
            )
            if avatar.cacheable:
                source_planes = pick(avatar.planes)
            else:
                t_c = pick(avatar.canonical)
                assert t_c is not None
                if self.appearance is None:
                    source_planes = t_c
                else:
                    t_p, _ = self.appearance_planes(
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
            rendered = self.render(
                planes, cameras[sl], deterministic=deterministic, generator=generator, rgb_only=True
            )
            low.append(rendered.rgb)
            depth.append(rendered.depth)
            alpha.append(rendered.opacity.clamp(0.0, 1.0))
            if superres:
                high.append(
                    self.super_resolve(rendered.rgb, deterministic=deterministic, generator=generator)
                )
        return AnimationOutput(
            low_res=torch.cat(low),
            frames=torch.cat(high) if superres else None,
            depth=torch.cat(depth),
            alpha=torch.cat(alpha),
        )
