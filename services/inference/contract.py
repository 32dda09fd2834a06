"""The tensor contract between the worker and the hosted branch models (numpy only, no torch).

One place owns the model names, tensor names, Triton datatypes and shapes. The PyTriton launcher binds
from it, the Triton-container model repository is generated from it (``services.inference.repository``),
and the client checks requests against it, so the three cannot drift apart silently.

Models::

    goha_reconstruct   batched (dim 0 = portraits), dynamic batching
        in  portrait  [3, H, W]        float   RGB in [-1, 1]
        in  mask      [1, H, W]        float   keep-mask in [0, 1]
        in  camera    [25]             FP32    EG3D 25-vector (shared.model.cameras)
        out planes    [3, C, R, R]     float   summed source tri-planes T_c + T_p
    goha_animate       not batched: one avatar's tri-planes once, then N frames
        in  planes        [3, C, R, R]     float
        in  expr_renders  [-1, 3, E, E]    float   frontal 3DMM expression renders in [-1, 1]
        in  cameras       [-1, 25]         FP32
        out low_res       [-1, 3, L, L]    float   volume-rendered RGB in [-1, 1]
        out frames        [-1, 3, S, S]    float   super-resolved RGB in [-1, 1]
        out alpha         [-1, 1, L, L]    float   accumulated opacity of the render in [0, 1]
    goha_info          no inputs
        out model_version [1] BYTES   checkpoint version (config + content hash)
        out profile       [1] BYTES   profile name of the served checkpoint

"float" is the deployment's compute dtype: FP32 for CPU serving (exact comparison with in-process
inference), FP16 on GPUs (half the bytes for the 12-25 MB tri-planes). Cameras always stay FP32: an
fp16 camera would move rays by whole pixels at 512^2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from services.inference.errors import InferenceInputError

RECONSTRUCT_MODEL = "goha_reconstruct"
ANIMATE_MODEL = "goha_animate"
INFO_MODEL = "goha_info"
MODEL_NAMES = (RECONSTRUCT_MODEL, ANIMATE_MODEL, INFO_MODEL)

PORTRAIT = "portrait"
MASK = "mask"
CAMERA = "camera"
PLANES = "planes"
EXPR_RENDERS = "expr_renders"
CAMERAS = "cameras"
LOW_RES = "low_res"
FRAMES = "frames"
ALPHA = "alpha"
MODEL_VERSION = "model_version"
PROFILE = "profile"

CAMERA_DIM = 25

# Triton datatype <-> numpy. Only the types this contract uses.
_NUMPY_BY_TRITON: dict[str, Any] = {"FP32": np.float32, "FP16": np.float16, "BYTES": np.object_}
FLOAT_DATATYPES = ("FP32", "FP16")


def numpy_dtype(triton_datatype: str) -> np.dtype:
    try:
        return np.dtype(_NUMPY_BY_TRITON[triton_datatype])
    except KeyError:
        raise ValueError(f"unsupported Triton datatype {triton_datatype!r}") from None


def triton_datatype(dtype: str | np.dtype | type) -> str:
    """Triton datatype of a float dtype name (``float16``/``fp16``/``float32``/``fp32``) or numpy dtype."""
    if isinstance(dtype, str):
        normalised = dtype.lower().replace("torch.", "")
        aliases = {"fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
        normalised = aliases.get(normalised, normalised)
        dtype = np.dtype(normalised)
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return "FP32"
    if dtype == np.float16:
        return "FP16"
    raise ValueError(f"serving dtype must be float32 or float16, got {dtype}")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One model input/output. ``dims`` exclude the batch dimension of batched models; -1 = any size."""

    name: str
    datatype: str
    dims: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return numpy_dtype(self.datatype)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # 0 = Triton sees full shapes (no implicit batch dimension).
    max_batch_size: int

    def input(self, name: str) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(spec for spec in self.outputs if spec.name == name)


@dataclasses.dataclass(frozen=True)
class ServingShapes:
    """The sizes of one checkpoint's profile that fix the tensor shapes, plus the serving dtype."""

    image_size: int
    expr_size: int
    plane_channels: int
    plane_resolution: int
    low_res_size: int
    output_size: int
    float_datatype: str = "FP32"

    def __post_init__(self) -> None:
        if self.float_datatype not in FLOAT_DATATYPES:
            raise ValueError(f"float_datatype must be one of {FLOAT_DATATYPES}, got {self.float_datatype!r}")

    @property
    def planes_dims(self) -> tuple[int, int, int, int]:
        return (3, self.plane_channels, self.plane_resolution, self.plane_resolution)

    def with_datatype(self, float_datatype: str) -> ServingShapes:
        return dataclasses.replace(self, float_datatype=float_datatype)


@dataclasses.dataclass(frozen=True)
class ServingContract:
    shapes: ServingShapes
    reconstruct_max_batch_size: int = 4

    @property
    def reconstruct(self) -> ModelSpec:
        s = self.shapes
        f = s.float_datatype
        return ModelSpec(
            name=RECONSTRUCT_MODEL,
            inputs=(
                TensorSpec(PORTRAIT, f, (3, s.image_size, s.image_size)),
                TensorSpec(MASK, f, (1, s.image_size, s.image_size)),
                TensorSpec(CAMERA, "FP32", (CAMERA_DIM,)),
            ),
            outputs=(TensorSpec(PLANES, f, s.planes_dims),),
            max_batch_size=self.reconstruct_max_batch_size,
        )

    @property
    def animate(self) -> ModelSpec:
        s = self.shapes
        f = s.float_datatype
        return ModelSpec(
            name=ANIMATE_MODEL,
            inputs=(
                TensorSpec(PLANES, f, s.planes_dims),
                TensorSpec(EXPR_RENDERS, f, (-1, 3, s.expr_size, s.expr_size)),
                TensorSpec(CAMERAS, "FP32", (-1, CAMERA_DIM)),
            ),
            outputs=(
                TensorSpec(LOW_RES, f, (-1, 3, s.low_res_size, s.low_res_size)),
                TensorSpec(FRAMES, f, (-1, 3, s.output_size, s.output_size)),
                # The head's opacity at the low-res render's pixels: the worker composites with it.
                TensorSpec(ALPHA, f, (-1, 1, s.low_res_size, s.low_res_size)),
            ),
            max_batch_size=0,
        )

    @property
    def info(self) -> ModelSpec:
        return ModelSpec(
            name=INFO_MODEL,
            inputs=(),
            outputs=(TensorSpec(MODEL_VERSION, "BYTES", (1,)), TensorSpec(PROFILE, "BYTES", (1,))),
            max_batch_size=0,
        )

    @property
    def models(self) -> tuple[ModelSpec, ModelSpec, ModelSpec]:
        return (self.reconstruct, self.animate, self.info)

    def model(self, name: str) -> ModelSpec:
        return next(spec for spec in self.models if spec.name == name)

    # --- the contract read back from a running server (what the client trusts) -------------------

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, Mapping[str, Any]], reconstruct_max_batch_size: int
    ) -> ServingContract:
        """Rebuild the contract from Triton model metadata (``get_model_metadata(..., as_json=True)``)."""
        try:
            recon_inputs = {t["name"]: t for t in metadata[RECONSTRUCT_MODEL]["inputs"]}
            recon_outputs = {t["name"]: t for t in metadata[RECONSTRUCT_MODEL]["outputs"]}
            anim_inputs = {t["name"]: t for t in metadata[ANIMATE_MODEL]["inputs"]}
            anim_outputs = {t["name"]: t for t in metadata[ANIMATE_MODEL]["outputs"]}
            # Metadata shapes of a batched model start with the -1 batch dimension.
            portrait = [int(d) for d in recon_inputs[PORTRAIT]["shape"]][-3:]
            planes = [int(d) for d in recon_outputs[PLANES]["shape"]][-4:]
            expr = [int(d) for d in anim_inputs[EXPR_RENDERS]["shape"]]
            low_res = [int(d) for d in anim_outputs[LOW_RES]["shape"]]
            frames = [int(d) for d in anim_outputs[FRAMES]["shape"]]
            shapes = ServingShapes(
                image_size=portrait[-1],
                expr_size=expr[-1],
                plane_channels=planes[1],
                plane_resolution=planes[-1],
                low_res_size=low_res[-1],
                output_size=frames[-1],
                float_datatype=recon_outputs[PLANES]["datatype"],
            )
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"server model metadata does not follow the GOHA serving contract: {exc!r}"
            ) from exc
        contract = cls(shapes=shapes, reconstruct_max_batch_size=reconstruct_max_batch_size)
        # A server whose tensors differ from what this code would bind is refused early, not at frame 1000.
        for spec in (contract.reconstruct, contract.animate):
            served = metadata[spec.name]
            for kind, tensors in (("inputs", spec.inputs), ("outputs", spec.outputs)):
                got = {t["name"]: t["datatype"] for t in served[kind]}
                want = {t.name: t.datatype for t in tensors}
                if got != want:
                    raise ValueError(f"{spec.name} {kind} are {got}, the client expects {want}")
        return contract


def check_array(
    value: Any,
    spec: TensorSpec,
    *,
    leading: Sequence[int | None] = (),
    what: str | None = None,
) -> np.ndarray:
    """Validate ``value`` against ``spec`` (with optional leading dims; None = any) and cast to its dtype.

    Raises InferenceInputError with the expected and received shapes; a wrong dtype that converts
    losslessly enough (float64 -> float32/16) is cast rather than refused.
    """
    label = what or spec.name
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise InferenceInputError(
            f"{label} must be a numeric array, got dtype {array.dtype}", code="invalid_dtype"
        )
    expected: list[int | None] = [*leading, *(None if d == -1 else d for d in spec.dims)]
    if array.ndim != len(expected) or any(e is not None and e != a for e, a in zip(expected, array.shape)):
        shown = "(" + ", ".join("N" if e is None else str(e) for e in expected) + ")"
        raise InferenceInputError(
            f"{label} must have shape {shown}, got {tuple(array.shape)}", code="invalid_shape"
        )
    if not np.all(np.isfinite(array)):
        raise InferenceInputError(f"{label} contains NaN or infinite values", code="invalid_value")
    return np.ascontiguousarray(array, dtype=spec.dtype)


def shapes_from_config(config: Any, float_datatype: str = "FP32") -> ServingShapes:
    """Serving shapes of a ``shared.model.config.ModelConfig`` (duck-typed: this module stays torch-free)."""
    return ServingShapes(
        image_size=int(config.image_size),
        # E_e reads the frontal 3DMM render at the portrait's resolution.
        expr_size=int(config.image_size),
        plane_channels=int(config.plane_channels),
        # T_c + T_p as the avatar stores them: finer than the branch planes with a colour plane.
        plane_resolution=int(getattr(config, "source_plane_resolution", config.plane.resolution)),
        low_res_size=int(config.renderer.resolution),
        output_size=int(config.superres.out_size),
        float_datatype=float_datatype,
    )
