"""Typed configuration of the GOHA network and its two profiles.

``paper`` reproduces the sizes of the paper / released code (official-code-notes.md §2–§6):
512² input, three SegFormer MiT-b0 encoders, 3×32×256² tri-planes, 48+48 samples on the ray range
[2.25, 3.3], a 224² render (128² for the lifting depth) and a 224² → 512² super-resolution.
``tiny`` is the same code at small sizes, for 2 CPU cores (tests, embedded mode, CPU training).

Every number that changes what the network computes lives here, so a checkpoint that stores its
config (and a hash of it) fully describes the network it holds. Pure performance knobs (chunk
sizes) are runtime attributes of the modules instead and never change results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.model.errors import ConfigError
from shared.model.superres import SuperResConfig, paper_superres_config, tiny_superres_config

__all__ = [
    "AppearanceConfig",
    "EncoderConfig",
    "ExpressionConfig",
    "ModelConfig",
    "PlaneConfig",
    "RendererConfig",
    "SuperResConfig",
    "config_from_dict",
    "config_hash",
    "config_to_dict",
    "get_profile",
    "paper_config",
    "tiny_config",
    "PROFILES",
]


# Channels the colour lifting writes into T_p's XY plane: the source RGB, then the keep-mask.
COLOUR_CHANNELS = 4


@dataclass(frozen=True)
class EncoderConfig:
    """A SegFormer Mix-Transformer encoder plus its all-MLP fuse (no BN/ReLU/classifier).

    Defaults are MiT-b0 (``nvidia/segformer-b0-finetuned-ade-512-512``).
    """

    in_channels: int = 3
    hidden_sizes: tuple[int, ...] = (32, 64, 160, 256)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_attention_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)
    decoder_hidden_size: int = 256
    drop_path_rate: float = 0.1

    def validate(self, name: str) -> None:
        lengths = {
            len(self.hidden_sizes),
            len(self.depths),
            len(self.num_attention_heads),
            len(self.sr_ratios),
            len(self.patch_sizes),
            len(self.strides),
            len(self.mlp_ratios),
        }
        if len(lengths) != 1:
            raise ConfigError("config.encoder", f"{name}: per-stage tuples must all have the same length")
        for width, heads in zip(self.hidden_sizes, self.num_attention_heads):
            if width % heads:
                raise ConfigError("config.encoder", f"{name}: width {width} not divisible by {heads} heads")
        if self.in_channels < 1 or self.decoder_hidden_size < 1:
            raise ConfigError("config.encoder", f"{name}: channel counts must be positive")

    @property
    def output_stride(self) -> int:
        """The fused feature map has the resolution of the first stage."""
        return self.strides[0]


@dataclass(frozen=True)
class PlaneConfig:
    """Tri-plane size and the Embed2Plane-style head that produces T_c and T_e."""

    channels: int = 32
    resolution: int = 256
    box_warp: float = 1.0  # side of the cube the planes cover, centred at the origin
    # Embed2Plane widths: conv in->head[0], conv head[0]->head[1], then head[1] through upsampling.
    head_channels: tuple[int, int] = (256, 128)


@dataclass(frozen=True)
class AppearanceConfig:
    """The appearance branch (E_p, lifting, rasterisation, upsampler → T_p)."""

    enabled: bool = True
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # "masked_source": E_p sees source × keep-mask (the paper). "composite": the released code's
    # 6-channel input [source·M + canonical·(1-M), canonical] with M the eroded keep mask.
    input_mode: Literal["masked_source", "composite"] = "masked_source"
    # "canonical": lift with the depth of T_c (the paper; T_c + T_p is then cacheable per source).
    # "canonical_expression": depth of T_c + T_e (the released code; T_p then changes per frame).
    depth_source: Literal["canonical", "canonical_expression"] = "canonical"
    upsampler_hidden: int = 128
    mask_erosion: int = 7  # kernel of the keep-mask erosion in "composite" mode
    # Colour lifting (§3.2: "mapping pixel values from the input image"): the source RGB and the
    # keep-mask are lifted at this resolution (depth rendered there) and rasterised into four channels
    # of T_p's XY plane of their own (``ModelConfig.plane_channels``), so T_p holds the portrait's real
    # colour at a finer grid than E_p's features. 0 = off (features only, as the released code).
    colour_resolution: int = 0
    # Fixed scale of the lifted colour (× a learned per-channel gain starting at 1): the planes'
    # values are O(10) in the trained tiny model (T_c per-channel std 3-23), and colour in [-1, 1]
    # added at scale 1 moved its renders by 0.003 on average: the gain, learning at Adam's
    # ~lr per step, would take tens of thousands of steps to matter.
    colour_scale: float = 1.0
    # Resolution of the lifted colour's XY plane (0 = ``plane.resolution``). Above it, T_p and the sums
    # T_c + T_p (+ T_e) the decoder reads are at this resolution: the branch planes are bilinearly
    # upsampled to it (triplane.sum_planes), the colour is rasterised at it.
    colour_plane_resolution: int = 0
    # The source depth for the colour lift is rendered at this resolution and bilinearly upsampled to
    # ``colour_resolution`` (0 = rendered at ``colour_resolution``): depth is smooth, the render is not
    # cheap (once per portrait, and every training step).
    colour_depth_resolution: int = 0
    # Only source pixels whose render from the source camera is at least this opaque are lifted into
    # the colour plane, at the depth of the visible mass alone (renderer.surface_depth) instead of the
    # far-end-weighted expected depth; 0 = every pixel, at the expected depth (as features are).
    colour_min_opacity: float = 0.0


@dataclass(frozen=True)
class ExpressionConfig:
    """The expression branch: E_e on the frontal 3DMM render, or the linear-basis ablation."""

    # "encoder": E_e + plane head on I_exp (the paper). "linear": T_e = Σ_k β_k E_k with learnable
    # tri-plane bases E_k mixed by 3DMM expression coefficients β (the paper's ablation, §4.5).
    mode: Literal["encoder", "linear"] = "encoder"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    num_bases: int = 64
    # Source-colour gate (a deliberate addition; needs the renderer's source_colour_blend): a small
    # head on E_e's features predicts where the driver's face has moved from its neutral (trained
    # against `shared.face.render.render_expression_change`), warped into T_e's XY plane as one
    # channel of its own; the decoder's blend weight m is scaled by (1 − gate), so where the driver
    # opens the mouth or closes the eyes the lifted source colour (closed lips, open eyes) gives way
    # to the decoded colour. Off = the blend alone decides (the source's lips stayed on the output).
    colour_gate: bool = False
    # World z of the face plane the I_exp → XY-plane warp projects through (the procedural head's
    # mouth is at z ≈ 0.20; at the frontal camera 2.7 away a ±0.05 error moves a point by < 2 %).
    gate_depth: float = 0.2
    # Mouth interior (a deliberate addition; needs the renderer's source_colour_blend): where I_exp
    # shows the open mouth's cavity (its cavity shading, darker than any lit skin), the expression
    # branch writes a map of it into T_e's XY plane as a channel of its own (warped like the gate),
    # and the decoder shows the mouth-interior colour there instead of the lifted source colour
    # (renderer.TriPlaneDecoder). No weights: the 3DMM already knows where the open mouth is.
    mouth_interior: bool = False
    # With the mouth interior: the top rows of the open mouth (``TEETH_HEIGHT`` of I_exp's height)
    # show the upper teeth's colour, a second channel of T_e's XY plane (expression.py). No weights.
    mouth_teeth: bool = False


@dataclass(frozen=True)
class RendererConfig:
    """EG3D-style decoder and volume renderer."""

    resolution: int = 224  # main low-res render
    depth_resolution: int = 128  # source-view render whose depth lifts E_p's features
    num_coarse: int = 48
    num_fine: int = 48
    ray_start: float = 2.25
    ray_end: float = 3.3
    decoder_hidden: int = 64
    feature_channels: int = 32  # composited features; the first 3 are RGB
    decoder_lr_multiplier: float = 1.0
    density_bias: float = -1.0  # density = softplus(σ + bias)
    # Inference only (deterministic, no grad): rays whose coarse opacity is below this skip the
    # importance pass. Their colour then differs by at most ~2× this value from the full render.
    empty_ray_opacity: float = 1e-3
    # The decoder predicts a blend weight m; each ray's RGB gets M·c(P), the lifted source colour
    # read from the planes at the ray's surface point (renderer.TriPlaneDecoder). Needs colour lifting.
    source_colour_blend: bool = False
    # With the blend: the render's lifted colour is also re-read at this resolution on the upsampled
    # surface (RenderOutput.detail, renderer.VolumeRenderer.surface_detail), and the SR starts from
    # that image instead of the bilinearly upsampled render. 0 = off; else the SR's out_size.
    surface_colour_resolution: int = 0


@dataclass(frozen=True)
class ModelConfig:
    profile: str
    image_size: int = 512
    canonical_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    plane: PlaneConfig = field(default_factory=PlaneConfig)
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    expression: ExpressionConfig = field(default_factory=ExpressionConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    superres: SuperResConfig = field(default_factory=paper_superres_config)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def feature_resolution(self) -> int:
        """Resolution of every encoder's fused feature map (128 for a 512² input)."""
        return self.image_size // self.canonical_encoder.output_stride

    @property
    def plane_channels(self) -> int:
        """Channels of the summed tri-planes the decoder reads: ``plane.channels``, plus the lifted
        colour's own ``COLOUR_CHANNELS`` when colour lifting is on. Only T_p writes those (T_c and T_e
        are zero there), so the decoder reads the source's colour without other planes' values mixed
        into the same channels."""
        colour = self.appearance.enabled and self.appearance.colour_resolution > 0
        extra = (1 if self.colour_gate else 0) + self.mouth_channels
        return self.plane.channels + (COLOUR_CHANNELS if colour else 0) + extra

    @property
    def colour_gate(self) -> bool:
        """Whether T_e carries the source-colour gate (``ExpressionConfig.colour_gate``)."""
        return self.expression.mode == "encoder" and self.expression.colour_gate

    @property
    def mouth_interior(self) -> bool:
        """Whether T_e carries the mouth-interior map (``ExpressionConfig.mouth_interior``)."""
        return self.expression.mode == "encoder" and self.expression.mouth_interior

    @property
    def mouth_teeth(self) -> bool:
        """Whether the mouth-interior map has its teeth channel (``ExpressionConfig.mouth_teeth``)."""
        return self.mouth_interior and self.expression.mouth_teeth

    @property
    def mouth_channels(self) -> int:
        """Channels of the mouth-interior map at the planes' end: 0, 1 (interior) or 2 (+ teeth)."""
        return (1 if self.mouth_interior else 0) + (1 if self.mouth_teeth else 0)

    @property
    def gate_channel(self) -> int | None:
        """Index of the gate's channel in the summed planes (last but the mouth map), or None."""
        if not self.colour_gate:
            return None
        return self.plane_channels - 1 - self.mouth_channels

    @property
    def mouth_channel(self) -> int | None:
        """Index of the mouth-interior map's channel in the summed planes (after the gate), or None."""
        return self.plane_channels - self.mouth_channels if self.mouth_interior else None

    @property
    def colour_plane_resolution(self) -> int:
        """Resolution of the lifted colour's plane (0 when colour lifting is off)."""
        if not (self.appearance.enabled and self.appearance.colour_resolution):
            return 0
        return self.appearance.colour_plane_resolution or self.plane.resolution

    @property
    def source_plane_resolution(self) -> int:
        """Resolution of T_c + T_p as an avatar stores them (and of every sum that includes T_p)."""
        return max(self.plane.resolution, self.colour_plane_resolution)

    @property
    def colour_depth_resolution(self) -> int:
        """Resolution at which the source depth for the colour lift is rendered."""
        return self.appearance.colour_depth_resolution or self.appearance.colour_resolution

    @property
    def head_upsamples(self) -> int:
        """Stride-2 transposed convolutions from the feature map to the plane resolution."""
        return int(round(math.log2(self.plane.resolution / self.feature_resolution)))

    def validate(self) -> None:
        encoders = {"canonical_encoder": self.canonical_encoder}
        if self.appearance.enabled:
            encoders["appearance.encoder"] = self.appearance.encoder
        if self.expression.mode == "encoder":
            encoders["expression.encoder"] = self.expression.encoder
        for name, enc in encoders.items():
            enc.validate(name)
            if (
                self.image_size % enc.output_stride
                or enc.output_stride != self.canonical_encoder.output_stride
            ):
                raise ConfigError("config.encoder", f"{name}: all encoders need the same output stride")
        feat = self.feature_resolution
        ratio = self.plane.resolution / feat
        if ratio < 1 or 2**self.head_upsamples != ratio:
            raise ConfigError(
                "config.plane",
                f"plane resolution {self.plane.resolution} must be feature resolution {feat} times a power of 2",
            )
        if self.plane.channels < 1 or self.plane.box_warp <= 0:
            raise ConfigError("config.plane", "plane channels and box_warp must be positive")
        r = self.renderer
        if not 0 < r.ray_start < r.ray_end:
            raise ConfigError("config.renderer", "need 0 < ray_start < ray_end")
        if r.num_coarse < 2 or r.num_fine < 0:
            raise ConfigError("config.renderer", "need num_coarse >= 2 and num_fine >= 0")
        if r.feature_channels < 3:
            raise ConfigError("config.renderer", "feature_channels must hold at least RGB (3)")
        if self.appearance.enabled:
            # Every feature pixel is lifted along its own ray: one depth sample per feature pixel.
            if r.depth_resolution != feat:
                raise ConfigError(
                    "config.renderer",
                    f"depth_resolution ({r.depth_resolution}) must equal the encoder feature resolution ({feat})",
                )
            colour = self.appearance.colour_resolution
            if colour and (colour % feat or colour > self.image_size):
                raise ConfigError(
                    "config.appearance",
                    f"colour_resolution ({colour}) must be a multiple of the feature resolution ({feat}) "
                    "and at most image_size",
                )
            plane_res, depth_res = (
                self.appearance.colour_plane_resolution,
                self.appearance.colour_depth_resolution,
            )
            if plane_res and (plane_res < self.plane.resolution or plane_res % self.plane.resolution):
                raise ConfigError(
                    "config.appearance",
                    f"colour_plane_resolution ({plane_res}) must be a multiple of the plane resolution "
                    f"({self.plane.resolution})",
                )
            if depth_res and (not colour or colour % depth_res or depth_res % feat):
                raise ConfigError(
                    "config.appearance",
                    f"colour_depth_resolution ({depth_res}) must divide colour_resolution ({colour}) and be "
                    f"a multiple of the feature resolution ({feat})",
                )
            want = 6 if self.appearance.input_mode == "composite" else 3
            if self.appearance.encoder.in_channels != want:
                raise ConfigError(
                    "config.appearance",
                    f"input_mode {self.appearance.input_mode!r} needs an E_p with {want} input channels",
                )
        if r.source_colour_blend and not (self.appearance.enabled and self.appearance.colour_resolution):
            raise ConfigError(
                "config.renderer", "source_colour_blend needs the appearance branch's colour lifting"
            )
        if r.surface_colour_resolution and not (
            r.source_colour_blend and r.surface_colour_resolution == self.superres.out_size
        ):
            raise ConfigError(
                "config.renderer",
                f"surface_colour_resolution ({r.surface_colour_resolution}) needs source_colour_blend "
                f"and must equal superres.out_size ({self.superres.out_size})",
            )
        if self.colour_gate and not r.source_colour_blend:  # the linear ablation has no gate head
            raise ConfigError("config.expression", "colour_gate needs the renderer's source_colour_blend")
        if self.mouth_interior and not r.source_colour_blend:
            raise ConfigError("config.expression", "mouth_interior needs the renderer's source_colour_blend")
        if self.expression.mouth_teeth and not self.expression.mouth_interior:
            raise ConfigError("config.expression", "mouth_teeth needs mouth_interior")
        if self.expression.mode == "linear" and self.expression.num_bases < 1:
            raise ConfigError("config.expression", "the linear expression ablation needs num_bases >= 1")
        if self.expression.mode not in ("encoder", "linear"):
            raise ConfigError("config.expression", f"unknown expression mode {self.expression.mode!r}")
        if self.superres.in_size != r.resolution:
            raise ConfigError(
                "config.superres",
                f"superres.in_size ({self.superres.in_size}) must equal the render resolution ({r.resolution})",
            )


def paper_config() -> ModelConfig:
    """The paper / released-code sizes (official-code-notes.md §2–§6)."""
    return ModelConfig(profile="paper")


def tiny_config() -> ModelConfig:
    """Same network at small sizes: 128² input, MiT at half width, 3×16×64² planes, 64² renders with
    24+24 samples, SR 64² → 128². Sized so `animate` stays under 150 ms per frame and training
    fits 2 CPU cores.

    T_p also carries the source's colour lifted at 64² (``colour_resolution``), the planes'
    resolution: E_p's features are 32² only. The decoder outputs RGB only (``feature_channels`` 3):
    the SR reads RGB, so further feature channels would never be trained. The SR is
    `tiny_superres_config` (narrow 1/16) with a 64² input and 32-d styles instead of 64, residual on
    the upsampled render (``SuperResConfig.residual``: the plain SR lost to its own input), and its
    generator is off (``SuperResConfig.generator``): the served 128² frame is the render's detail
    image, which scored higher than the trained generator's correction on every bench metric. T_e
    carries the mouth-interior map with its teeth band (``ExpressionConfig.mouth_interior`` and
    ``mouth_teeth``); the source-colour gate is off (train ``--variant colour_gate`` for it). This is
    the shipped checkpoint's config.
    """
    encoder = EncoderConfig(
        hidden_sizes=(16, 32, 64, 128), num_attention_heads=(1, 2, 4, 8), decoder_hidden_size=64
    )
    return ModelConfig(
        profile="tiny",
        image_size=128,
        canonical_encoder=encoder,
        plane=PlaneConfig(channels=16, resolution=64, head_channels=(64, 32)),
        appearance=AppearanceConfig(
            encoder=encoder,
            upsampler_hidden=32,
            colour_resolution=128,
            colour_scale=16.0,
            colour_plane_resolution=128,
            colour_depth_resolution=64,
            colour_min_opacity=0.5,
        ),
        expression=ExpressionConfig(encoder=encoder, mouth_interior=True, mouth_teeth=True),
        renderer=RendererConfig(
            resolution=64,
            depth_resolution=32,
            num_coarse=24,
            num_fine=24,
            decoder_hidden=32,
            feature_channels=3,
            source_colour_blend=True,
            surface_colour_resolution=128,
        ),
        superres=dataclasses.replace(
            tiny_superres_config(),
            in_size=64,
            out_size=128,
            narrow=0.0625,
            num_style_feat=32,
            residual=True,
            generator=False,  # served = the detail image (superres.py: measured)
        ),
    )


PROFILES = {"paper": paper_config, "tiny": tiny_config}


def get_profile(name: str) -> ModelConfig:
    try:
        return PROFILES[name]()
    except KeyError:
        raise ConfigError(
            "config.unknown_profile", f"unknown profile {name!r}; known: {sorted(PROFILES)}"
        ) from None


# --- serialisation -------------------------------------------------------------------------------


def _plain(value: Any, hint: Any = None) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        hints = typing.get_type_hints(type(value))
        return {f.name: _plain(getattr(value, f.name), hints.get(f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        args = typing.get_args(hint)
        return [_plain(v, args[0] if args else None) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # 2 and 2.0 are the same config: one canonical form for the hash
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-able dict (tuples become lists, float fields always floats) of a config dataclass."""
    return json.loads(json.dumps(_plain(config)))


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, where)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError("config.bad_value", f"{where}: expected a list, got {value!r}")
        inner = args[0]
        return tuple(_coerce(inner, v, where) for v in value)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError("config.bad_value", f"{where}: {value!r} not one of {typing.get_args(hint)}")
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError("config.bad_value", f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError("config.unknown_field", f"{where}: unknown fields {sorted(unknown)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError("config.bad_value", f"{where}: {exc}") from exc


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Inverse of `config_to_dict` (validates the result)."""
    return _from_dict(ModelConfig, data, "config")


# Fields added after checkpoints were shipped, with the value that reproduces the older network. The
# canonical JSON (hence config_hash, content hashes and model versions) leaves them out at that value,
# so every checkpoint written before a field existed still verifies and keeps its model version.
LATER_FIELDS: dict[tuple[str, ...], Any] = {
    ("renderer", "source_colour_blend"): False,
    ("appearance", "colour_plane_resolution"): 0,
    ("appearance", "colour_depth_resolution"): 0,
    ("appearance", "colour_min_opacity"): 0.0,
    ("renderer", "surface_colour_resolution"): 0,
    ("expression", "colour_gate"): False,
    ("expression", "gate_depth"): 0.2,
    ("expression", "mouth_interior"): False,
    ("expression", "mouth_teeth"): False,
    ("superres", "generator"): True,
}


def config_json(config: ModelConfig) -> str:
    """The canonical JSON of a config (what its hashes are over)."""
    data = config_to_dict(config)
    for path, old_value in LATER_FIELDS.items():
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if parent.get(path[-1]) == old_value:
            del parent[path[-1]]
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def config_hash(config: ModelConfig) -> str:
    """12-hex digest of the canonical JSON of a config."""
    return hashlib.sha256(config_json(config).encode()).hexdigest()[:12]
