"""gRPC client of the hosted branch models (the only way the worker talks to Triton).

Transport choices, both measured by ``services.inference.bench``:

* plain gRPC: the tri-planes travel in the request body once per request, so ``animate`` sends many
  frames per request (``max_frames_per_request``) to amortise them;
* system shared memory (colocated client and server, e.g. the embedded stack or one pod): the
  client registers one input region (tri-planes + renders + cameras) and one output region (low-res
  + frames + alpha) once and reuses them for every request, so no tensor bytes cross the gRPC channel.

Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED) are retried with exponential backoff inside a
time budget, then surface as the typed `InferenceUnavailable`. The gRPC channel and the shared
memory regions are created lazily and per process, so a client built before a Celery fork is safe.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import numpy as np

from services.inference.contract import (
    ALPHA,
    ANIMATE_MODEL,
    CAMERA,
    CAMERAS,
    EXPR_RENDERS,
    FRAMES,
    INFO_MODEL,
    LOW_RES,
    MASK,
    MODEL_VERSION,
    PLANES,
    PORTRAIT,
    PROFILE,
    RECONSTRUCT_MODEL,
    ServingContract,
    TensorSpec,
    check_array,
)
from services.inference.errors import (
    InferenceAuthError,
    InferenceError,
    InferenceInputError,
    InferenceServerError,
    InferenceUnavailable,
)
from services.inference.interface import AnimateOutput

LOGGER = logging.getLogger(__name__)

ACCESS_TOKEN_ENV = "GOHA_TRITON_ACCESS_TOKEN"
# PyTriton restricts APIs with this header; over gRPC Triton expects the "triton-grpc-protocol-" prefix.
GRPC_ACCESS_HEADER = "triton-grpc-protocol-triton-access-token"

_REMOTE_ERROR = re.compile(r"services\.inference\.errors\.(\w+): \[([a-z0-9_.]+)\] ([^\n]*)")
SHM_REGION_LOST = "inference_shm_region_lost"
_RETRYABLE_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
T = TypeVar("T")


def _strip_scheme(url: str) -> str:
    for scheme in ("grpc://", "http://", "https://"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return url


def _is_loopback(url: str) -> bool:
    host = url.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _destroy_regions(handles: list[tuple[Any, int]]) -> None:
    """Finaliser: unlink this process's shared-memory segments even if close() was never called."""
    from tritonclient.utils import shared_memory as shm

    for handle, owner_pid in handles:
        if owner_pid == os.getpid():
            try:
                shm.destroy_shared_memory_region(handle)
            except Exception:  # noqa: BLE001 - best effort at interpreter shutdown
                pass
    handles.clear()


class _Region:
    """One registered system shared-memory region of this client."""

    def __init__(self, triton_name: str, key: str, byte_size: int, handle: Any) -> None:
        self.triton_name = triton_name
        self.key = key
        self.byte_size = byte_size
        self.handle = handle


class InferenceClient:
    """`InferenceBackend` over Triton gRPC.

    Args:
        url: ``host:port`` of Triton's gRPC endpoint (a ``grpc://`` prefix is accepted).
        use_shared_memory: True (required, errors surface), False (never), or "auto": used when the
            server is on a loopback address and registration succeeds, else plain gRPC.
        access_token: token for Triton's restricted APIs (shared memory, statistics); defaults to the
            ``GOHA_TRITON_ACCESS_TOKEN`` environment variable.
        max_frames_per_request: animate chunk size; bounds request and shared-memory sizes.
        request_timeout_s: gRPC deadline of one request.
        retry_budget_s: total time spent retrying transient failures before `InferenceUnavailable`.
    """

    def __init__(
        self,
        url: str,
        *,
        use_shared_memory: bool | Literal["auto"] = "auto",
        access_token: str | None = None,
        max_frames_per_request: int = 16,
        request_timeout_s: float = 300.0,
        retry_budget_s: float = 30.0,
        retry_initial_backoff_s: float = 0.1,
        retry_max_backoff_s: float = 5.0,
    ) -> None:
        if use_shared_memory not in (True, False, "auto"):
            raise ValueError(f"use_shared_memory must be True, False or 'auto', got {use_shared_memory!r}")
        if max_frames_per_request < 1:
            raise ValueError("max_frames_per_request must be >= 1")
        self.url = _strip_scheme(url)
        self._shm_mode = use_shared_memory
        token = access_token if access_token is not None else os.environ.get(ACCESS_TOKEN_ENV) or None
        self._headers = {GRPC_ACCESS_HEADER: token} if token else {}
        self.max_frames_per_request = max_frames_per_request
        self.request_timeout_s = request_timeout_s
        self.retry_budget_s = retry_budget_s
        self.retry_initial_backoff_s = retry_initial_backoff_s
        self.retry_max_backoff_s = retry_max_backoff_s
        self._lock = threading.RLock()
        self._pid = -1
        self._grpc: Any = None
        self._contract: ServingContract | None = None
        self._use_shm: bool | None = None  # decided on first animate
        self._regions: dict[str, _Region] = {}
        self._handles: list[tuple[Any, int]] = []
        self._finalizer = weakref.finalize(self, _destroy_regions, self._handles)

    # --- connection state (lazy, per process) -------------------------------------------------------

    def _ensure_process_state(self) -> None:
        if self._pid == os.getpid():
            return
        # A forked child must not reuse the parent's channel or unlink the parent's segments.
        import tritonclient.grpc as grpcclient

        self._pid = os.getpid()
        self._grpc = grpcclient.InferenceServerClient(self.url)
        self._regions = {}
        self._handles.clear()
        self._use_shm = None

    @property
    def contract(self) -> ServingContract:
        with self._lock:
            self._ensure_process_state()
            if self._contract is None:
                self._contract = self._call(self._read_contract, "read model metadata")
            return self._contract

    def _read_contract(self) -> ServingContract:
        metadata = {
            name: self._grpc.get_model_metadata(name, as_json=True, headers=self._headers)
            for name in (RECONSTRUCT_MODEL, ANIMATE_MODEL)
        }
        config = self._grpc.get_model_config(RECONSTRUCT_MODEL, as_json=True, headers=self._headers)
        max_batch = int(config["config"].get("max_batch_size", 0))
        try:
            return ServingContract.from_metadata(metadata, reconstruct_max_batch_size=max(max_batch, 1))
        except ValueError as exc:
            raise InferenceServerError(str(exc), code="inference_contract_mismatch") from exc

    @property
    def planes_dtype(self) -> np.dtype:
        return self.contract.reconstruct.output(PLANES).dtype

    @property
    def uses_shared_memory(self) -> bool:
        """Whether animate goes through shared memory (decided on the first call in "auto" mode)."""
        with self._lock:
            self._ensure_process_state()
            return self._decide_shm()

    # --- retries and error mapping ------------------------------------------------------------------

    def _call(self, fn: Callable[[], T], what: str) -> T:
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + self.retry_budget_s
        backoff = self.retry_initial_backoff_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except InferenceServerException as exc:
                error = self._map_error(exc, what)
                if not error.retryable:
                    raise error from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise InferenceUnavailable(
                        f"{what}: Triton at {self.url} still unavailable after {attempt} attempts "
                        f"over {self.retry_budget_s:.1f} s: {exc.message()}"
                    ) from exc
                LOGGER.warning("%s failed (%s), retrying in %.2f s", what, exc.status(), backoff)
                time.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, self.retry_max_backoff_s)

    @staticmethod
    def _map_error(exc: Any, what: str) -> InferenceError:
        status = str(exc.status() or "")
        message = exc.message() or str(exc)
        if "restricted" in message:
            # PyTriton answers a missing/wrong access token with UNAVAILABLE: not worth retrying.
            return InferenceAuthError(
                f"{what}: Triton refused the access token (set {ACCESS_TOKEN_ENV}): {message}"
            )
        # A typed error raised by the model code on the server comes back inside a traceback text.
        remote = _REMOTE_ERROR.findall(message)
        if remote:
            kind, code, text = remote[-1]
            cls = InferenceInputError if kind == "InferenceInputError" else InferenceServerError
            return cls(f"{what}: {text.strip()}", code=code)
        if "shared memory region" in message:
            # Triton forgot our registration (server restarted, or unregistered): the caller re-registers.
            return InferenceServerError(f"{what}: {message}", code=SHM_REGION_LOST)
        if status in _RETRYABLE_STATUSES:
            return InferenceUnavailable(f"{what}: {message}")
        if status == "StatusCode.INVALID_ARGUMENT":
            return InferenceInputError(f"{what}: {message}")
        return InferenceServerError(f"{what}: {status} {message}")

    # --- public API -----------------------------------------------------------------------------------

    def model_version(self) -> str:
        return self.server_info()[MODEL_VERSION]

    def server_info(self) -> dict[str, str]:
        """``{"model_version": ..., "profile": ...}`` of the served checkpoint."""
        import tritonclient.grpc as grpcclient

        with self._lock:
            self._ensure_process_state()
            outputs = [
                grpcclient.InferRequestedOutput(MODEL_VERSION),
                grpcclient.InferRequestedOutput(PROFILE),
            ]
            result = self._call(
                lambda: self._grpc.infer(
                    INFO_MODEL,
                    [],
                    outputs=outputs,
                    headers=self._headers,
                    client_timeout=self.request_timeout_s,
                ),
                "goha_info",
            )
            return {name: result.as_numpy(name).reshape(-1)[0].decode() for name in (MODEL_VERSION, PROFILE)}

    def reconstruct(self, portrait: np.ndarray, mask: np.ndarray, camera: np.ndarray) -> np.ndarray:
        import tritonclient.grpc as grpcclient

        with self._lock:
            spec = self.contract.reconstruct
            portrait = check_array(portrait, spec.input(PORTRAIT), leading=(None,))
            batch = portrait.shape[0]
            mask = check_array(mask, spec.input(MASK), leading=(batch,))
            camera = check_array(camera, spec.input(CAMERA), leading=(batch,))
            if batch == 0:
                raise InferenceInputError("reconstruct needs at least one portrait", code="invalid_shape")
            chunks = []
            # Larger batches are split to the server's max_batch_size; Triton's dynamic batcher merges
            # concurrent small requests on its side.
            for start in range(0, batch, spec.max_batch_size):
                stop = min(start + spec.max_batch_size, batch)
                inputs = []
                for tensor_spec, array in zip(spec.inputs, (portrait, mask, camera)):
                    item = grpcclient.InferInput(
                        tensor_spec.name, array[start:stop].shape, tensor_spec.datatype
                    )
                    item.set_data_from_numpy(array[start:stop])
                    inputs.append(item)
                outputs = [grpcclient.InferRequestedOutput(PLANES)]
                result = self._call(
                    lambda inputs=inputs, outputs=outputs: self._grpc.infer(
                        RECONSTRUCT_MODEL,
                        inputs,
                        outputs=outputs,
                        headers=self._headers,
                        client_timeout=self.request_timeout_s,
                    ),
                    "goha_reconstruct",
                )
                chunks.append(result.as_numpy(PLANES))
            return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]

    def animate(self, planes: np.ndarray, expr_renders: np.ndarray, cameras: np.ndarray) -> AnimateOutput:
        with self._lock:
            spec = self.contract.animate
            planes = np.asarray(planes)
            if planes.ndim == 5 and planes.shape[0] == 1:
                planes = planes[0]
            planes = check_array(planes, spec.input(PLANES))
            expr_renders = check_array(expr_renders, spec.input(EXPR_RENDERS))
            count = expr_renders.shape[0]
            cameras = check_array(cameras, spec.input(CAMERAS), what=f"{CAMERAS} (one per expression render)")
            if cameras.shape[0] != count:
                raise InferenceInputError(
                    f"got {count} expression renders but {cameras.shape[0]} cameras", code="invalid_shape"
                )
            if count == 0:
                raise InferenceInputError("animate needs at least one frame", code="invalid_shape")
            use_shm = self._decide_shm()
            low_res_parts, frame_parts, alpha_parts = [], [], []
            planes_written = False
            for start in range(0, count, self.max_frames_per_request):
                stop = min(start + self.max_frames_per_request, count)
                if use_shm:
                    low_res, frames, alpha = self._animate_shm(
                        planes, expr_renders[start:stop], cameras[start:stop], write_planes=not planes_written
                    )
                    planes_written = True
                else:
                    low_res, frames, alpha = self._animate_grpc(
                        planes, expr_renders[start:stop], cameras[start:stop]
                    )
                low_res_parts.append(low_res)
                frame_parts.append(frames)
                alpha_parts.append(alpha)
            if len(frame_parts) == 1:
                return AnimateOutput(low_res_parts[0], frame_parts[0], alpha_parts[0])
            return AnimateOutput(
                np.concatenate(low_res_parts), np.concatenate(frame_parts), np.concatenate(alpha_parts)
            )

    # --- animate transports ---------------------------------------------------------------------------

    def _animate_grpc(
        self, planes: np.ndarray, expr_renders: np.ndarray, cameras: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import tritonclient.grpc as grpcclient

        spec = self.contract.animate
        inputs = []
        for tensor_spec, array in zip(spec.inputs, (planes, expr_renders, cameras)):
            item = grpcclient.InferInput(tensor_spec.name, array.shape, tensor_spec.datatype)
            item.set_data_from_numpy(array)
            inputs.append(item)
        outputs = [grpcclient.InferRequestedOutput(name) for name in (LOW_RES, FRAMES, ALPHA)]
        result = self._call(
            lambda: self._grpc.infer(
                ANIMATE_MODEL,
                inputs,
                outputs=outputs,
                headers=self._headers,
                client_timeout=self.request_timeout_s,
            ),
            "goha_animate",
        )
        return result.as_numpy(LOW_RES), result.as_numpy(FRAMES), result.as_numpy(ALPHA)

    def _layout(self, frames: int) -> tuple[list[tuple[TensorSpec, tuple[int, ...], int]], ...]:
        """Byte offsets of each tensor inside the input and output regions for a chunk of ``frames``."""
        spec = self.contract.animate
        shapes_in = {
            PLANES: spec.input(PLANES).dims,
            EXPR_RENDERS: (frames, *spec.input(EXPR_RENDERS).dims[1:]),
            CAMERAS: (frames, *spec.input(CAMERAS).dims[1:]),
        }
        shapes_out = {
            LOW_RES: (frames, *spec.output(LOW_RES).dims[1:]),
            FRAMES: (frames, *spec.output(FRAMES).dims[1:]),
            ALPHA: (frames, *spec.output(ALPHA).dims[1:]),
        }
        layouts = []
        for tensors, shapes in ((spec.inputs, shapes_in), (spec.outputs, shapes_out)):
            offset, layout = 0, []
            for tensor in tensors:
                shape = shapes[tensor.name]
                layout.append((tensor, shape, offset))
                # 64-byte alignment keeps every tensor view aligned for vectorised copies.
                offset += -(-int(np.prod(shape)) * tensor.dtype.itemsize // 64) * 64
            layouts.append(layout)
        return tuple(layouts)

    @staticmethod
    def _layout_bytes(layout: list[tuple[TensorSpec, tuple[int, ...], int]]) -> int:
        tensor, shape, offset = layout[-1]
        return offset + int(np.prod(shape)) * tensor.dtype.itemsize

    def _animate_shm(
        self, planes: np.ndarray, expr_renders: np.ndarray, cameras: np.ndarray, *, write_planes: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import shared_memory as shm

        frames = expr_renders.shape[0]
        layout_in, layout_out = self._layout(frames)
        # Regions are sized for a full chunk once, so later (smaller or equal) chunks reuse them.
        full_in, full_out = self._layout(self.max_frames_per_request)
        region_in = self._region("in", self._layout_bytes(full_in))
        region_out = self._region("out", self._layout_bytes(full_out))
        if region_in.handle is None or region_out.handle is None:  # pragma: no cover - defensive
            raise InferenceServerError("shared memory regions are not available")

        def run() -> Any:
            inputs = []
            for (tensor, shape, offset), array in zip(layout_in, (planes, expr_renders, cameras)):
                # The tri-planes sit at offset 0 and stay valid for the later chunks of one call.
                if tensor.name != PLANES or write_planes:
                    shm.set_shared_memory_region(region_in.handle, [array], offset=offset)
                item = grpcclient.InferInput(tensor.name, shape, tensor.datatype)
                item.set_shared_memory(region_in.triton_name, array.nbytes, offset=offset)
                inputs.append(item)
            outputs = []
            for tensor, shape, offset in layout_out:
                item = grpcclient.InferRequestedOutput(tensor.name)
                item.set_shared_memory(
                    region_out.triton_name, int(np.prod(shape)) * tensor.dtype.itemsize, offset
                )
                outputs.append(item)
            return self._grpc.infer(
                ANIMATE_MODEL,
                inputs,
                outputs=outputs,
                headers=self._headers,
                client_timeout=self.request_timeout_s,
            )

        try:
            self._call(run, "goha_animate (shared memory)")
        except InferenceServerError as exc:
            if exc.code != SHM_REGION_LOST:
                raise
            # The server restarted (or someone unregistered us): register again once and retry.
            LOGGER.warning("Triton lost the client's shared memory registration; registering again")
            self._register_all()
            self._call(run, "goha_animate (shared memory)")
        results = []
        for tensor, shape, offset in layout_out:
            view = shm.get_contents_as_numpy(region_out.handle, tensor.dtype, shape, offset=offset)
            results.append(np.array(view, copy=True))  # the region is overwritten by the next chunk
        low_res, frames, alpha = results
        return low_res, frames, alpha

    # --- shared memory regions ----------------------------------------------------------------------

    def _decide_shm(self) -> bool:
        if self._use_shm is not None:
            return self._use_shm
        if self._shm_mode is False:
            self._use_shm = False
        elif self._shm_mode == "auto" and not _is_loopback(self.url):
            self._use_shm = False
        else:
            try:
                # Registering the smallest layout proves the token and the shared /dev/shm now rather
                # than in the middle of a job.
                full_in, full_out = self._layout(self.max_frames_per_request)
                self._region("in", self._layout_bytes(full_in))
                self._region("out", self._layout_bytes(full_out))
                self._use_shm = True
            except (InferenceError, OSError) as exc:
                if self._shm_mode is True or isinstance(exc, InferenceUnavailable):
                    # A server that is down says nothing about shared memory: decide on a later call.
                    self._release_regions()
                    raise
                LOGGER.warning("shared memory unavailable (%s); animate falls back to plain gRPC", exc)
                self._release_regions()
                self._use_shm = False
        return self._use_shm

    def _region(self, role: str, byte_size: int) -> _Region:
        region = self._regions.get(role)
        if region is not None and region.byte_size >= byte_size:
            return region
        if region is not None:
            self._release_region(role)
        from tritonclient.utils import shared_memory as shm

        suffix = uuid.uuid4().hex[:12]
        triton_name = f"goha_{os.getpid()}_{suffix}_{role}"
        key = f"/{triton_name}"
        handle = shm.create_shared_memory_region(triton_name, key, byte_size)
        self._handles.append((handle, os.getpid()))
        region = _Region(triton_name, key, byte_size, handle)
        self._regions[role] = region
        try:
            self._call(
                lambda: self._grpc.register_system_shared_memory(
                    triton_name, key, byte_size, headers=self._headers
                ),
                "register shared memory",
            )
        except InferenceError:
            self._release_region(role)
            raise
        return region

    def _register_all(self) -> None:
        for region in self._regions.values():
            self._call(
                lambda region=region: self._grpc.register_system_shared_memory(
                    region.triton_name, region.key, region.byte_size, headers=self._headers
                ),
                "register shared memory",
            )

    def _release_region(self, role: str) -> None:
        from tritonclient.utils import shared_memory as shm

        region = self._regions.pop(role, None)
        if region is None:
            return
        try:
            self._grpc.unregister_system_shared_memory(region.triton_name, headers=self._headers)
        except Exception as exc:  # noqa: BLE001 - the server may be gone; the segment is still ours
            LOGGER.debug("unregister %s failed: %s", region.triton_name, exc)
        self._handles[:] = [(h, pid) for h, pid in self._handles if h is not region.handle]
        shm.destroy_shared_memory_region(region.handle)

    def _release_regions(self) -> None:
        for role in list(self._regions):
            self._release_region(role)

    def close(self) -> None:
        with self._lock:
            if self._pid != os.getpid():
                return
            self._release_regions()
            if self._grpc is not None:
                self._grpc.close()
                self._grpc = None
            self._pid = -1
            self._contract = None

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
