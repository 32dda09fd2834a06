"""In-process inference: the one piece of code that turns numpy requests into `GOHANetwork` calls.

The PyTriton server, the Triton-container model repository (``deploy/triton``) and the embedded
mode's fallback all run `InProcessInference`, which is why Triton output can be compared with
in-process output bit for bit (fp32) in the tests.

Precision: the network's weights stay fp32. A float16 deployment runs under CUDA autocast (the
matrix products in half, softplus/compositing in fp32) and returns fp16 arrays; the request and
response tensors are then half the bytes. CPU serving is fp32.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from services.inference.contract import (
    CAMERA,
    CAMERAS,
    EXPR_RENDERS,
    MASK,
    PLANES,
    PORTRAIT,
    ServingContract,
    check_array,
    shapes_from_config,
    triton_datatype,
)
from services.inference.errors import InferenceInputError, InferenceServerError
from services.inference.interface import AnimateOutput

LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_FRAMES_PER_FORWARD = 8
DEFAULT_RECONSTRUCT_MAX_BATCH = 4


def configure_determinism(threads: int | None = None) -> None:
    """Same inputs, same outputs: fixed thread count and deterministic kernels where torch has them."""
    import torch

    if threads is not None:
        torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    # cuBLAS needs this for deterministic GEMMs; harmless on CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class InProcessInference:
    """`InferenceBackend` that calls the network directly (tests, embedded mode, Triton models).

    Args:
        network: a ``shared.model.network.GOHANetwork`` (eval mode is enforced here).
        model_version: version string of the checkpoint (config + content hash); defaults to the
            network's own ``version_label``.
        device: torch device to run on.
        dtype: serving dtype of the float tensors ("float32" or "float16"); default fp16 on CUDA,
            fp32 elsewhere.
        max_frames_per_forward: frames rendered per network call; bounds activation memory
            independently of how many frames a request carries.
        reconstruct_max_batch_size: advertised batch limit (Triton's max_batch_size).
    """

    def __init__(
        self,
        network: Any,
        *,
        model_version: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        max_frames_per_forward: int = DEFAULT_MAX_FRAMES_PER_FORWARD,
        reconstruct_max_batch_size: int = DEFAULT_RECONSTRUCT_MAX_BATCH,
    ) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        if dtype is None:
            dtype = "float16" if self.device.type == "cuda" else "float32"
        datatype = triton_datatype(dtype)
        check_servable(network)
        self.network = network.to(self.device).eval()
        # Our own chunk loop bounds memory; the network's matches so it never splits further.
        self.network.max_frames_per_chunk = max(1, int(max_frames_per_forward))
        self.config = network.config
        self.profile = str(self.config.profile)
        self._version = model_version or network.version_label
        self.max_frames_per_forward = max(1, int(max_frames_per_forward))
        self.contract = ServingContract(
            shapes=shapes_from_config(self.config, datatype),
            reconstruct_max_batch_size=reconstruct_max_batch_size,
        )
        # One forward at a time: Triton may call from several threads, and the network keeps
        # per-call scratch state (and CPU threads are the bottleneck anyway).
        self._lock = threading.Lock()

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        profile: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        max_frames_per_forward: int = DEFAULT_MAX_FRAMES_PER_FORWARD,
        reconstruct_max_batch_size: int = DEFAULT_RECONSTRUCT_MAX_BATCH,
    ) -> InProcessInference:
        """Load a checkpoint; ``profile`` (if given) must match the checkpoint's own profile."""
        network, version = load_network(path, profile=profile)
        return cls(
            network,
            model_version=version,
            device=device,
            dtype=dtype,
            max_frames_per_forward=max_frames_per_forward,
            reconstruct_max_batch_size=reconstruct_max_batch_size,
        )

    # --- InferenceBackend -----------------------------------------------------------------------------

    def model_version(self) -> str:
        return self._version

    @property
    def planes_dtype(self) -> np.dtype:
        return self.contract.reconstruct.output(PLANES).dtype

    def reconstruct(self, portrait: np.ndarray, mask: np.ndarray, camera: np.ndarray) -> np.ndarray:
        spec = self.contract.reconstruct
        portrait = check_array(portrait, spec.input(PORTRAIT), leading=(None,))
        batch = portrait.shape[0]
        if batch == 0:
            raise InferenceInputError("reconstruct needs at least one portrait", code="invalid_shape")
        mask = check_array(mask, spec.input(MASK), leading=(batch,))
        camera = check_array(camera, spec.input(CAMERA), leading=(batch,))
        with self._lock, self._inference():
            avatar = self._call_network(
                "reconstruct",
                self.network.reconstruct,
                self._tensor(portrait),
                self._tensor(mask),
                self._tensor(camera),
            )
            planes = avatar_planes(avatar)
            return self._numpy(planes)

    def animate(self, planes: np.ndarray, expr_renders: np.ndarray, cameras: np.ndarray) -> AnimateOutput:
        spec = self.contract.animate
        planes = np.asarray(planes)
        if planes.ndim == 5 and planes.shape[0] == 1:
            planes = planes[0]
        planes = check_array(planes, spec.input(PLANES))
        expr_renders = check_array(expr_renders, spec.input(EXPR_RENDERS))
        cameras = check_array(cameras, spec.input(CAMERAS))
        count = expr_renders.shape[0]
        if cameras.shape[0] != count:
            raise InferenceInputError(
                f"got {count} expression renders but {cameras.shape[0]} cameras", code="invalid_shape"
            )
        if count == 0:
            raise InferenceInputError("animate needs at least one frame", code="invalid_shape")
        low_res = np.empty((count, *spec.output("low_res").dims[1:]), dtype=spec.output("low_res").dtype)
        frames = np.empty((count, *spec.output("frames").dims[1:]), dtype=spec.output("frames").dtype)
        alpha = np.empty((count, *spec.output("alpha").dims[1:]), dtype=spec.output("alpha").dtype)
        with self._lock, self._inference():
            avatar = make_avatar(self.network, self._tensor(planes)[None])
            for start in range(0, count, self.max_frames_per_forward):
                stop = min(start + self.max_frames_per_forward, count)
                output = self._call_network(
                    "animate",
                    self.network.animate,
                    avatar,
                    self._tensor(expr_renders[start:stop]),
                    self._tensor(cameras[start:stop]),
                )
                chunk_low, chunk_frames, chunk_alpha = animate_images(output)
                low_res[start:stop] = self._numpy(chunk_low)
                frames[start:stop] = self._numpy(chunk_frames)
                alpha[start:stop] = self._numpy(chunk_alpha)
        return AnimateOutput(low_res, frames, alpha)

    def close(self) -> None:
        """Nothing to release; the network is garbage collected with this object."""

    # --- helpers ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        torch = self._torch
        with torch.inference_mode():
            if self.device.type == "cuda" and self.planes_dtype == np.float16:
                with torch.autocast("cuda", dtype=torch.float16):
                    yield
            else:
                yield

    def _tensor(self, array: np.ndarray) -> Any:
        # fp32 into the network always; autocast decides where half precision is safe.
        return self._torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)

    def _numpy(self, tensor: Any) -> np.ndarray:
        return tensor.detach().to("cpu", self._torch.float32).numpy().astype(self.planes_dtype, copy=False)

    @staticmethod
    def _call_network(what: str, fn: Any, *args: Any) -> Any:
        from shared.model.errors import CheckpointError, ModelInputError

        try:
            return fn(*args, deterministic=True)
        except ModelInputError as exc:
            raise InferenceInputError(f"{what}: {exc.message}", code=exc.code) from exc
        except CheckpointError as exc:
            raise InferenceServerError(f"{what}: {exc.message}", code=exc.code) from exc
        except (RuntimeError, ValueError) as exc:
            raise InferenceServerError(f"{what} failed: {exc}") from exc


# --- the adapter to shared.model (the only place that knows the network's serving API) -------------


def load_network(path: str | os.PathLike[str], *, profile: str | None = None) -> tuple[Any, str]:
    """(network in eval mode, model version) from a checkpoint written by ``shared.model.checkpoint``."""
    from shared.model import checkpoint
    from shared.model.errors import ModelError

    path = pathlib.Path(path)
    if not path.is_file():
        raise InferenceServerError(f"checkpoint {path} does not exist", code="checkpoint_missing")
    try:
        network = checkpoint.load_checkpoint(path, map_location="cpu")
    except ModelError as exc:
        raise InferenceServerError(f"checkpoint {path}: {exc.message}", code=exc.code) from exc
    if profile is not None and network.config.profile != profile:
        raise InferenceServerError(
            f"checkpoint {path} holds profile {network.config.profile!r}, not {profile!r}",
            code="checkpoint_profile_mismatch",
        )
    return network.eval(), network.version_label


def read_checkpoint_info(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(model version, profile) recorded in a checkpoint, without building the network."""
    from shared.model import checkpoint
    from shared.model.errors import ModelError

    try:
        payload = checkpoint.read_checkpoint(path, map_location="cpu")
        return str(payload["model_version"]), str(checkpoint.checkpoint_config(payload).profile)
    except ModelError as exc:
        raise InferenceServerError(f"checkpoint {path}: {exc.message}", code=exc.code) from exc


def check_servable(network: Any) -> None:
    """The serving split needs source-only tri-planes and image-driven expressions."""
    if not network.lifting_is_cacheable:
        raise InferenceServerError(
            "this checkpoint lifts appearance with the expression depth (depth_source='canonical_expression'): "
            "its T_p changes per frame, so the tri-planes cannot be computed once per portrait",
            code="checkpoint_not_servable",
        )
    if network.config.expression.mode != "encoder":
        raise InferenceServerError(
            "the linear-expression ablation needs 3DMM coefficients, the serving contract sends renders",
            code="checkpoint_not_servable",
        )


def avatar_planes(avatar: Any) -> Any:
    """(B, 3, C, R, R) summed source tri-planes T_c + T_p of a ``SourceAvatar``."""
    return avatar.planes


def make_avatar(network: Any, planes: Any) -> Any:
    """A ``SourceAvatar`` around tri-planes received over the wire (made by this network's reconstruct)."""
    from shared.model.avatar import SourceAvatar

    return SourceAvatar(model_version=network.version_label, config_hash=network.config_hash, planes=planes)


def animate_images(output: Any) -> tuple[Any, Any, Any]:
    """(low-res render, super-resolved frames, opacity) of an ``AnimationOutput``.

    The opacity is clamped to [0, 1] here as well: fp16 rounding of a sum of weights can pass 1.
    """
    return output.low_res, output.frames, output.alpha.clamp(0.0, 1.0)
