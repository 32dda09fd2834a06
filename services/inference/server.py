"""Triton hosting of the GOHA branch models on CPU / a local machine, launched with PyTriton.

    python -m services.inference.server --profile tiny --checkpoint PATH \\
        --grpc-port 8001 --http-port 8000 --metrics-port 8002

serves ``goha_reconstruct`` (dynamic batching), ``goha_animate`` (one avatar's tri-planes + N
frames per request) and ``goha_info`` (checkpoint version) from a real ``tritonserver`` (the one
bundled with nvidia-pytriton). The access token of Triton's restricted APIs (shared memory,
statistics, model repository, trace, logging) comes from ``GOHA_TRITON_ACCESS_TOKEN`` (or
``--access-token-file``); clients need the same token to use shared memory.

`launch_server` runs this module in a subprocess for tests and the embedded stack: it waits for
every model to be ready, and on exit stops the server, kills its process group if it hangs, and
removes the workspace. GPUs in production use ``deploy/triton`` with NVIDIA's container instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from services.inference.client import ACCESS_TOKEN_ENV, InferenceClient
from services.inference.contract import (
    ALPHA,
    ANIMATE_MODEL,
    CAMERAS,
    EXPR_RENDERS,
    FRAMES,
    INFO_MODEL,
    LOW_RES,
    MODEL_NAMES,
    MODEL_VERSION,
    PLANES,
    PROFILE,
    RECONSTRUCT_MODEL,
    TensorSpec,
)
from services.inference.errors import InferenceServerStartError
from shared.model.cpu_memory import RETAIN_ENV, is_truthy, retain_for_serving
from shared.platform.processes import stop_process_group

if TYPE_CHECKING:
    import numpy as np

    from services.inference.contract import ServingContract
    from services.inference.interface import AnimateOutput


class ServableEngine(Protocol):
    """What the server binds: `InProcessInference` (or anything with its serving surface)."""

    contract: ServingContract
    profile: str

    def model_version(self) -> str: ...

    def reconstruct(self, portrait: np.ndarray, mask: np.ndarray, camera: np.ndarray) -> np.ndarray: ...

    def animate(self, planes: np.ndarray, expr_renders: np.ndarray, cameras: np.ndarray) -> AnimateOutput: ...


LOGGER = logging.getLogger("services.inference.server")

DEFAULT_RECONSTRUCT_QUEUE_DELAY_US = 2000
LIBDIR_REEXEC_GUARD = "GOHA_TRITON_REEXECED"


# --- libpython for the Python backend stub ----------------------------------------------------------


def python_libdir() -> str:
    return str(
        sysconfig.get_config_var("LIBDIR") or pathlib.Path(sys.executable).resolve().parent.parent / "lib"
    )


def env_with_libpython(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this interpreter's LIBDIR first on LD_LIBRARY_PATH.

    tritonserver's Python backend stub dlopens libpython; without this it finds an older system
    libpython and dies with an RLock ``_recursion_count`` error (shared/reference/environment.md).
    """
    result = dict(env)
    libdir = python_libdir()
    parts = [p for p in result.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if not parts or parts[0] != libdir:
        result["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *[p for p in parts if p != libdir]])
    return result


def _reexec_with_libpython(argv: Sequence[str]) -> None:
    """Re-exec this module once with LD_LIBRARY_PATH fixed, so the whole process tree agrees on it."""
    fixed = env_with_libpython(os.environ)
    if fixed.get("LD_LIBRARY_PATH") == os.environ.get("LD_LIBRARY_PATH") or os.environ.get(
        LIBDIR_REEXEC_GUARD
    ):
        return
    fixed[LIBDIR_REEXEC_GUARD] = "1"
    os.execve(sys.executable, [sys.executable, "-m", "services.inference.server", *argv], fixed)


# --- binding the models ---------------------------------------------------------------------------------


def _tensors(specs: Sequence[TensorSpec]) -> list[Any]:
    from pytriton.model_config import Tensor

    return [
        Tensor(name=spec.name, dtype=bytes if spec.datatype == "BYTES" else spec.dtype.type, shape=spec.dims)
        for spec in specs
    ]


def bind_models(
    triton: Any, engine: ServableEngine, *, queue_delay_us: int = DEFAULT_RECONSTRUCT_QUEUE_DELAY_US
) -> None:
    """Bind goha_reconstruct, goha_animate and goha_info to ``engine`` on a PyTriton ``Triton``."""
    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig

    contract = engine.contract

    @batch
    def reconstruct(portrait: np.ndarray, mask: np.ndarray, camera: np.ndarray) -> dict[str, np.ndarray]:
        return {PLANES: engine.reconstruct(portrait, mask, camera)}

    def animate(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        # Not batched: every request carries one avatar's tri-planes once and its own N frames.
        responses = []
        for request in requests:
            output = engine.animate(request[PLANES], request[EXPR_RENDERS], request[CAMERAS])
            responses.append({LOW_RES: output.low_res, FRAMES: output.frames, ALPHA: output.alpha})
        return responses

    info_response = {
        MODEL_VERSION: np.array([engine.model_version().encode()], dtype=np.object_),
        PROFILE: np.array([engine.profile.encode()], dtype=np.object_),
    }

    def info(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        return [info_response for _ in requests]

    spec = contract.reconstruct
    triton.bind(
        model_name=RECONSTRUCT_MODEL,
        infer_func=reconstruct,
        inputs=_tensors(spec.inputs),
        outputs=_tensors(spec.outputs),
        config=ModelConfig(
            max_batch_size=spec.max_batch_size,
            batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us),
        ),
        strict=True,
    )
    spec = contract.animate
    triton.bind(
        model_name=ANIMATE_MODEL,
        infer_func=animate,
        inputs=_tensors(spec.inputs),
        outputs=_tensors(spec.outputs),
        config=ModelConfig(batching=False),
        strict=True,
    )
    spec = contract.info
    triton.bind(
        model_name=INFO_MODEL,
        infer_func=info,
        inputs=[],
        outputs=_tensors(spec.outputs),
        config=ModelConfig(batching=False),
    )


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    address: str = "127.0.0.1"
    access_token: str | None = None
    workspace: pathlib.Path | None = None
    log_verbose: int = 0
    log_file: pathlib.Path | None = None  # tritonserver's own log (default: this process's stdout)


def serve(
    engine: ServableEngine, options: ServerOptions, *, stop_event: threading.Event | None = None
) -> None:
    """Run Triton with the GOHA models until SIGINT/SIGTERM (or ``stop_event``)."""
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    config = TritonConfig(
        grpc_port=options.grpc_port,
        http_port=options.http_port,
        metrics_port=options.metrics_port,
        grpc_address=options.address,
        http_address=options.address,
        metrics_address=options.address,
        strict_readiness=True,
        exit_timeout_secs=10,
        log_verbose=options.log_verbose,
        log_file=options.log_file,
    )
    token = options.access_token
    if not token:
        token = secrets.token_urlsafe(32)
        LOGGER.warning(
            "%s is not set: restricted APIs (shared memory, statistics) got a random token no client knows",
            ACCESS_TOKEN_ENV,
        )
    security = TritonSecurityConfig(access_token=token)
    stop_event = stop_event or threading.Event()
    # Env-level LD_LIBRARY_PATH is what tritonserver (and the stub it spawns) inherit.
    os.environ.update(env_with_libpython(os.environ))
    with Triton(config=config, workspace=options.workspace, security_config=security) as triton:
        bind_models(triton, engine)
        LOGGER.info(
            "serving %s (profile %s, version %s, %s) on grpc %s:%d http %d metrics %d",
            ", ".join(MODEL_NAMES),
            engine.profile,
            engine.model_version(),
            engine.contract.shapes.float_datatype,
            options.address,
            options.grpc_port,
            options.http_port,
            options.metrics_port,
        )
        while not stop_event.wait(1.0):
            if not triton.is_alive():
                raise RuntimeError("tritonserver or a model proxy died; see the log above")
        LOGGER.info("stopping Triton")
    LOGGER.info("Triton stopped, workspace cleaned")


def _install_signal_handlers(stop_event: threading.Event) -> None:
    def handle(signum: int, _frame: Any) -> None:
        # Only flag the loop: a second signal during PyTriton's own shutdown must not interrupt it.
        LOGGER.info("signal %d: stopping", signum)
        stop_event.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _watch_parent(parent_pid: int, stop_event: threading.Event) -> None:
    """Stop when the launching process dies, so a killed test run leaves no orphan server behind."""

    def watch() -> None:
        while not stop_event.wait(1.0):
            if os.getppid() != parent_pid:
                LOGGER.warning("parent %d is gone: stopping", parent_pid)
                stop_event.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.inference.server", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--checkpoint", required=True, type=pathlib.Path, help="checkpoint from shared.model.checkpoint"
    )
    parser.add_argument("--profile", default=None, help="expected profile of the checkpoint (tiny, paper)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--address", default="127.0.0.1", help="bind address (0.0.0.0 to serve other hosts)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16"], help="serving dtype")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-frames-per-forward", type=int, default=8)
    parser.add_argument("--reconstruct-max-batch", type=int, default=4)
    parser.add_argument(
        "--workspace", type=pathlib.Path, default=None, help="PyTriton workspace (must not exist)"
    )
    parser.add_argument("--access-token-file", type=pathlib.Path, default=None)
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process exits")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument(
        "--retain-freed-memory",
        action=argparse.BooleanOptionalAction,
        default=is_truthy(os.environ.get(RETAIN_ENV)),
        help=f"CPU only: glibc keeps freed memory for reuse (faster network calls, resident size stays "
        f"at the peak); default from {RETAIN_ENV}",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _reexec_with_libpython(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.checkpoint.is_file():
        # Before importing torch: a wrong path should fail in milliseconds, not after model imports.
        LOGGER.error("[checkpoint_missing] checkpoint %s does not exist", args.checkpoint)
        raise SystemExit(2)
    stop_event = threading.Event()
    _install_signal_handlers(stop_event)
    if args.parent_pid is not None:
        _watch_parent(args.parent_pid, stop_event)

    retain_for_serving(args.retain_freed_memory, args.device)
    from services.inference.engine import InProcessInference, configure_determinism

    configure_determinism(args.threads)
    engine = InProcessInference.from_checkpoint(
        args.checkpoint,
        profile=args.profile,
        device=args.device,
        dtype=args.dtype,
        max_frames_per_forward=args.max_frames_per_forward,
        reconstruct_max_batch_size=args.reconstruct_max_batch,
    )
    token = os.environ.get(ACCESS_TOKEN_ENV) or None
    if args.access_token_file is not None:
        token = args.access_token_file.read_text().strip()
    options = ServerOptions(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        address=args.address,
        access_token=token,
        workspace=args.workspace,
        log_verbose=args.log_verbose,
    )
    serve(engine, options, stop_event=stop_event)


# --- launching from Python (tests, embedded stack, benchmarks) -------------------------------------------


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class ServerHandle:
    """A running launched server."""

    grpc_url: str
    http_url: str
    metrics_url: str
    access_token: str
    pid: int
    log_path: pathlib.Path

    def client(self, **kwargs: Any) -> InferenceClient:
        kwargs.setdefault("access_token", self.access_token)
        return InferenceClient(self.grpc_url, **kwargs)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - local URL we built
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_ready(
    http_url: str, *, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until the server and all GOHA models report ready; raise if the process dies first."""
    deadline = time.monotonic() + timeout_s
    urls = [f"{http_url}/v2/health/ready", *(f"{http_url}/v2/models/{name}/ready" for name in MODEL_NAMES)]
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise InferenceServerStartError(
                f"Triton server exited with code {process.returncode} during startup"
            )
        if all(_http_ok(url) for url in urls):
            return
        time.sleep(0.25)
    raise InferenceServerStartError(f"Triton at {http_url} not ready after {timeout_s:.0f} s")


def _remove_backend_shm(pid: int) -> None:
    """The Python backend names its segments after the PyTriton process; a killed server leaves them."""
    shm_dir = pathlib.Path("/dev/shm")
    if shm_dir.is_dir():
        for segment in shm_dir.glob(f"pytrtion{pid}-*"):
            with contextlib.suppress(OSError):
                segment.unlink()


@contextlib.contextmanager
def launch_server(
    checkpoint: str | os.PathLike[str],
    *,
    profile: str | None = None,
    grpc_port: int | None = None,
    http_port: int | None = None,
    metrics_port: int | None = None,
    address: str = "127.0.0.1",
    access_token: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    threads: int | None = None,
    max_frames_per_forward: int = 8,
    startup_timeout_s: float = 180.0,
    stop_grace_s: float = 20.0,
    log_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[ServerHandle]:
    """Start ``python -m services.inference.server`` in its own session and yield when all models are ready.

    Ports default to free ones; the access token defaults to ``GOHA_TRITON_ACCESS_TOKEN`` or a fresh
    random one (handed to the child through the environment, never on the command line). On exit the
    server is stopped (SIGTERM, then SIGKILL of its process group) and its workspace removed.
    """
    grpc_port = grpc_port or free_port(address)
    http_port = http_port or free_port(address)
    metrics_port = metrics_port or free_port(address)
    if len({grpc_port, http_port, metrics_port}) != 3:
        raise ValueError("grpc, http and metrics ports must differ")
    token = access_token or os.environ.get(ACCESS_TOKEN_ENV) or secrets.token_urlsafe(24)
    root = pathlib.Path(tempfile.mkdtemp(prefix="goha-triton-"))
    log_file = pathlib.Path(log_path) if log_path is not None else root / "server.log"
    command = [
        sys.executable,
        "-m",
        "services.inference.server",
        "--checkpoint",
        str(pathlib.Path(checkpoint).resolve()),
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--metrics-port",
        str(metrics_port),
        "--address",
        address,
        "--device",
        device,
        "--max-frames-per-forward",
        str(max_frames_per_forward),
        "--workspace",
        str(root / "workspace"),
        "--parent-pid",
        str(os.getpid()),
    ]
    if profile is not None:
        command += ["--profile", profile]
    if dtype is not None:
        command += ["--dtype", dtype]
    if threads is not None:
        command += ["--threads", str(threads)]
    child_env = env_with_libpython({**os.environ, **(env or {}), ACCESS_TOKEN_ENV: token})
    child_env[LIBDIR_REEXEC_GUARD] = "1"
    # The child must import this project even when launched from another working directory.
    project_root = str(pathlib.Path(__file__).resolve().parents[2])
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, child_env.get("PYTHONPATH", "")) if p)
    host = "127.0.0.1" if address in ("0.0.0.0", "") else address
    log_handle = open(log_file, "ab")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(
        command,
        stdout=log_handle,
        stderr=subprocess.STDOUT,
        env=child_env,
        start_new_session=True,
        cwd=project_root,
    )
    handle = ServerHandle(
        grpc_url=f"{host}:{grpc_port}",
        http_url=f"http://{host}:{http_port}",
        metrics_url=f"http://{host}:{metrics_port}/metrics",
        access_token=token,
        pid=process.pid,
        log_path=log_file,
    )
    try:
        try:
            wait_until_ready(handle.http_url, timeout_s=startup_timeout_s, process=process)
        except InferenceServerStartError as exc:
            raise InferenceServerStartError(
                f"{exc.message}\n--- server log ---\n{handle.log_tail()}"
            ) from None
        yield handle
    finally:
        # SIGTERM to the PyTriton leader only: it stops tritonserver and the proxies in order. Then
        # the SIGKILL of the session makes sure no tritonserver or backend stub survives it.
        stop_process_group(process, stop_grace_s, name="Triton server", leader_only=True)
        log_handle.close()
        _remove_backend_shm(process.pid)
        shutil.rmtree(root, ignore_errors=True)


def server_statistics(handle: ServerHandle) -> dict[str, Any]:
    """Per-model inference statistics (a restricted API: uses the handle's access token)."""
    request = urllib.request.Request(
        f"{handle.http_url}/v2/models/stats", headers={"triton-access-token": handle.access_token}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - local URL we built
        return json.loads(response.read())


if __name__ == "__main__":
    main()
