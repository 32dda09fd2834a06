"""The GOHA network (paper §3): three branches, tri-plane sum, volume rendering, super-resolution.

    T_c = Embed2Plane(E_c(I_s · keep))                                    canonical.py   (§3.1)
    D_s = depth of R_V(T_c, C_s) at 128²;  P_ij = o + D_s^ij d           appearance.py  (§3.2)
    T_p = Upsampler(Rasterize(P, E_p(I_s · keep))) [+ lifted colour]     appearance.py  (§3.2)
    T_e = Embed2Plane(E_e(I_exp))                                         expression.py  (§3.3)
    I_{c+e+p} = R_V(T_c + T_p + T_e, C_t);  I_o = SR(I_{c+e+p})          renderer.py, superres.py

This module holds the network (its branches, the paper's steps and the training forward).
Serving splits the computation at the sum: `reconstruct` / `animate` live in serving.py (the
methods of the same names call them) and the per-portrait `SourceAvatar` with its file format in
avatar.py; both names are re-exported here for callers that import them from this module.

Inputs: images NCHW in [-1, 1] at ``config.image_size``; the keep-mask (B, 1, S, S) is 1 where
the portrait is kept and 0 on eyes/brows/mouth; cameras are EG3D 25-vectors (cameras.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.model import cameras as cams
from shared.model import serving
from shared.model.appearance import AppearanceBranch
from shared.model.avatar import AVATAR_FORMAT, SourceAvatar
from shared.model.canonical import CanonicalBranch, check_image
from shared.model.config import ModelConfig, config_hash
from shared.model.errors import ModelInputError
from shared.model.expression import ExpressionBranch, LinearExpressionBranch
from shared.model.renderer import RenderOutput, VolumeRenderer, surface_depth
from shared.model.serving import AnimationOutput
from shared.model.superres import SuperResolution
from shared.model.triplane import pad_channels, sum_planes

__all__ = [
    "AVATAR_FORMAT",
    "AnimationOutput",
    "GOHABatch",
    "GOHANetwork",
    "SourceAvatar",
    "TrainingOutput",
]


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
    # Training only (TrainConfig.gate_open_prob): (B,) bool, items whose source-colour gate is
    # forced open everywhere, so the decoder must draw the whole face itself.
    open_gate: Tensor | None = None

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
    # The source-colour gate on the XY plane (B, R, R) with its gradient (T_e holds it detached).
    expression_gate: Tensor | None = None

    @property
    def depth(self) -> Tensor:
        return self.final.depth


def open_gates(t_e: Tensor, items: Tensor, channel: int) -> Tensor:
    """T_e with the source-colour gate of ``items`` (B,) bool set to 1 on the whole XY plane."""
    opened = torch.where(
        items.to(t_e.device).view(-1, 1, 1), torch.ones_like(t_e[:, 0, channel]), t_e[:, 0, channel]
    )
    t_e = t_e.clone()
    t_e[:, 0, channel] = opened
    return t_e


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
        self.renderer = VolumeRenderer(
            config.renderer,
            config.plane,
            config.plane_channels,
            colour_scale=config.appearance.colour_scale,
            gate=config.colour_gate,
            mouth_interior=config.mouth_interior,
            mouth_teeth=config.mouth_teeth,
        )
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
        return self.expression_planes_and_gate(expression_render, expression_coefficients)[0]

    def expression_planes_and_gate(
        self, expression_render: Tensor | None = None, expression_coefficients: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """T_e and the source-colour gate (B, R, R) with its gradient (None without the gate)."""
        if isinstance(self.expression, LinearExpressionBranch):
            if expression_coefficients is None:
                raise ModelInputError(
                    "model.missing_coefficients", "the linear expression model needs coefficients"
                )
            return self.expression(expression_coefficients), None
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
        return self.expression.planes_and_gate(expression_render)

    @property
    def lifting_resolution(self) -> int:
        """Resolution of the source-view depth render: E_p's feature grid, or the finer colour grid."""
        return max(self.config.renderer.depth_resolution, self.config.colour_depth_resolution)

    def source_render(
        self,
        base_planes: Tensor,
        source_camera: Tensor,
        *,
        deterministic: bool,
        generator: torch.Generator | None,
    ) -> RenderOutput:
        """Render of the base planes from the source camera at the lifting resolution (no gradient:
        positions only select nearest neighbours, so always the renderer's inference computation)."""
        with torch.no_grad():
            return self.renderer(
                base_planes,
                source_camera,
                self.lifting_resolution,
                deterministic=deterministic,
                generator=generator,
                rgb_only=True,
                inference=True,
                detail=False,
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
        colour_resolution = self.config.appearance.colour_resolution
        if colour_resolution:
            colour_depth, visible = rendered.depth, None
            min_opacity = self.config.appearance.colour_min_opacity
            if min_opacity > 0:
                r = self.config.renderer
                colour_depth = surface_depth(rendered.depth, rendered.opacity, r.ray_start, r.ray_end)
            if colour_depth.shape[-1] != colour_resolution:  # rendered coarser: depth is smooth
                size = (colour_resolution,) * 2
                colour_depth = F.interpolate(colour_depth, size=size, mode="bilinear", align_corners=False)
                opacity = F.interpolate(rendered.opacity, size=size, mode="bilinear", align_corners=False)
            else:
                opacity = rendered.opacity
            if min_opacity > 0:
                visible = opacity >= min_opacity
            colour_rays = cams.generate_rays(source_camera.float(), colour_resolution)
            colour = self.appearance.colour_planes(
                source_image.to(t_p.dtype),
                source_mask.to(t_p.dtype),
                colour_depth,
                *colour_rays,
                visible=visible,
            )
            t_p = self.appearance.add_colour(t_p, colour)
        return pad_channels(t_p, self.config.plane_channels), rendered  # zero in the gate's channel

    def render(
        self,
        planes: Tensor,
        cameras: Tensor,
        *,
        resolution: int | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        rgb_only: bool = False,
        inference: bool | None = None,
        detail: bool = True,
    ) -> RenderOutput:
        """R_V(T, C) (low resolution). ``inference``: the renderer's serving computation (no
        autograd) or its training one; ``None`` = serving exactly when autograd is off
        (``VolumeRenderer.forward``). ``detail``: also the SR's detail image where the config makes
        one (`RenderOutput.detail`)."""
        self._check_cameras(cameras, planes.shape[0], "cameras")
        return self.renderer(
            planes,
            cameras,
            resolution,
            deterministic=deterministic,
            generator=generator,
            rgb_only=rgb_only,
            inference=inference,
            detail=detail,
        )

    def super_resolve(
        self,
        low_res: Tensor,
        *,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        base: Tensor | None = None,
    ) -> Tensor:
        """I_sr from the render; ``base``: the render's detail image (`RenderOutput.detail`)."""
        if self.superres_autocast is None:
            return self.superres(low_res, generator=generator, deterministic=deterministic, base=base)
        with torch.autocast(device_type=low_res.device.type, dtype=self.superres_autocast):
            image = self.superres(low_res, generator=generator, deterministic=deterministic, base=base)
        return image.to(low_res.dtype)

    def query(self, planes: Tensor, points: Tensor, *, inference: bool | None = None) -> Tensor:
        """Raw decoder output (B, N, 1 + F) at world points; channel 0 is σ (TV loss)."""
        return self.renderer.query(planes, points, inference=inference)

    # --- training ------------------------------------------------------------------------------------

    def forward(
        self,
        batch: GOHABatch,
        *,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        intermediate_renders: bool = True,
        return_features: bool = True,
        inference: bool | None = None,
    ) -> TrainingOutput:
        """All branches at once, renders at the target camera (paper Eq. 2).

        ``intermediate_renders=False`` renders only the final image (what inference needs);
        ``deterministic`` turns off all sampling noise (renderer jitter, SR noise); ``inference``
        picks the renderer's computation (see `render`; ``True`` only without autograd).
        """
        src, mask, src_cam = batch.source_image, batch.source_mask, batch.source_camera
        self._check_source(src, mask, src_cam)
        b = src.shape[0]
        self._check_cameras(batch.target_camera, b, "target camera")
        t_c = self.canonical_planes(src, mask)
        t_e = gate = None
        if batch.use_expression:
            t_e, gate = self.expression_planes_and_gate(
                batch.expression_render, batch.expression_coefficients
            )
            if batch.open_gate is not None and self.config.gate_channel is not None:
                t_e = open_gates(t_e, batch.open_gate, self.config.gate_channel)
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
        # The final render is I_c itself when neither T_e nor T_p is active.
        canonical_only = t_e is None and t_p is None

        def render(p: Tensor, rgb_only: bool = True, detail: bool = False) -> RenderOutput:
            return self.render(
                p,
                batch.target_camera,
                deterministic=deterministic,
                generator=generator,
                rgb_only=rgb_only,
                inference=inference,
                detail=detail,
            )

        final = render(planes, rgb_only=not return_features, detail=batch.use_superres)
        if canonical_only:
            canonical = final.rgb
        else:
            canonical = render(t_c).rgb if intermediate_renders else None
        canonical_expression = None
        if t_e is not None:
            if t_p is None:
                canonical_expression = final.rgb
            elif intermediate_renders:
                canonical_expression = render(t_c + t_e).rgb
        full = final.rgb if t_p is not None else None
        sr = None
        if batch.use_superres:
            sr = self.super_resolve(
                final.rgb, deterministic=deterministic, generator=generator, base=final.detail
            )
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
            expression_gate=gate,
        )

    # --- serving (shared/model/serving.py) ------------------------------------------------------

    def reconstruct(
        self,
        portrait: Tensor,
        mask: Tensor,
        camera: Tensor,
        *,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> SourceAvatar:
        """Source-only work, once per portrait: T_c (+ T_p) → `SourceAvatar` (``serving.reconstruct``).

        Runs under the caller's grad mode; wrap in ``torch.inference_mode()`` for serving.
        """
        return serving.reconstruct(
            self, portrait, mask, camera, deterministic=deterministic, generator=generator
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
        """N frames from one avatar (batch 1, broadcast) or N avatars (batch N) (``serving.animate``).

        ``expression_renders`` (N, 3, H, W) frontal 3DMM renders I_exp; ``cameras`` (N, 25).
        """
        return serving.animate(
            self,
            avatar,
            expression_renders,
            cameras,
            expression_coefficients=expression_coefficients,
            deterministic=deterministic,
            generator=generator,
            superres=superres,
        )
