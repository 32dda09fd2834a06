"""Benchmark of the Triton serving path: plain gRPC vs system shared memory, and reconstruct.

    python -m services.inference.bench [--profile tiny] [--checkpoint PATH] [--frames 8]

Two measurements, the last stdout line is one JSON object:

1. The real models (``goha_reconstruct`` / ``goha_animate`` of the profile, PyTriton-launched
   tritonserver, CPU): ms per frame of ``animate`` round trips with the tri-planes in the request
   body vs through shared memory, ``reconstruct`` ms, and the in-process time per frame for
   reference. Without ``--checkpoint`` a randomly initialised checkpoint is used (same compute).
2. Transport only, at the paper profile's fp16 tensor sizes (12.6 MB tri-planes, 512^2 renders
   and frames): the same client against an in-process PyTriton server whose animate returns
   zero frames without computing, so the numbers isolate what each transport costs per request.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from services.inference.client import InferenceClient
from services.inference.contract import PLANES, ServingContract
from services.inference.interface import AnimateOutput

LOGGER = logging.getLogger("services.inference.bench")


def _median_ms(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each callable, calls interleaved (A B A B ...) so that load from other
    processes on a shared machine hits every variant alike."""
    for fn in fns.values():
        fn()  # warm-up: first calls pay allocation, region registration and lazy metadata
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def _inputs(contract: ServingContract, frames: int, seed: int = 0) -> dict[str, np.ndarray]:
    import torch

    from shared.model import cameras

    s = contract.shapes
    rng = np.random.default_rng(seed)
    dtype = contract.reconstruct.output(PLANES).dtype
    yaw = torch.linspace(-0.3, 0.3, frames)
    return {
        "portrait": rng.uniform(-1, 1, (1, 3, s.image_size, s.image_size)).astype(dtype),
        "mask": np.ones((1, 1, s.image_size, s.image_size), dtype),
        "camera": cameras.frontal_camera()[None].numpy().astype(np.float32),
        "expr": rng.uniform(-1, 1, (frames, 3, s.expr_size, s.expr_size)).astype(dtype),
        "cameras": cameras.spherical_camera(yaw, torch.zeros(frames)).numpy().astype(np.float32),
    }


def _random_checkpoint(profile: str, directory: pathlib.Path) -> pathlib.Path:
    import torch

    from shared.model.checkpoint import save_checkpoint
    from shared.model.config import get_profile
    from shared.model.network import GOHANetwork

    torch.manual_seed(0)
    path = directory / f"{profile}-random.ckpt"
    save_checkpoint(GOHANetwork(get_profile(profile)), path)
    return path


def bench_models(
    checkpoint: pathlib.Path, *, frames: int, repeats: int, threads: int, include_in_process: bool
) -> dict[str, Any]:
    from services.inference.server import launch_server

    results: dict[str, Any] = {}
    with launch_server(checkpoint, threads=threads, max_frames_per_forward=frames) as server:
        with (
            server.client(use_shared_memory=False, max_frames_per_request=frames) as grpc_client,
            server.client(use_shared_memory=True, max_frames_per_request=frames) as shm_client,
        ):
            contract = grpc_client.contract
            data = _inputs(contract, frames)
            planes = grpc_client.reconstruct(data["portrait"], data["mask"], data["camera"])[0]
            times = _median_ms(
                {
                    "grpc": lambda: grpc_client.animate(planes, data["expr"], data["cameras"]),
                    "shm": lambda: shm_client.animate(planes, data["expr"], data["cameras"]),
                    "reconstruct": lambda: grpc_client.reconstruct(
                        data["portrait"], data["mask"], data["camera"]
                    ),
                },
                repeats,
            )
            grpc_ms, shm_ms = times["grpc"], times["shm"]
            results["model_version"] = grpc_client.model_version()
    results["reconstruct_ms"] = times["reconstruct"]
    results["animate_ms_per_frame_grpc"] = grpc_ms / frames
    results["animate_ms_per_frame_shm"] = shm_ms / frames
    results["shm_speedup"] = grpc_ms / shm_ms
    results["planes_mb"] = planes.nbytes / 1e6
    if include_in_process:
        # After the server is gone, so the two do not compete for the same cores.
        from services.inference.engine import InProcessInference, configure_determinism

        configure_determinism(threads)
        engine = InProcessInference.from_checkpoint(checkpoint, max_frames_per_forward=frames)
        in_ms = _median_ms({"in": lambda: engine.animate(planes, data["expr"], data["cameras"])}, repeats)[
            "in"
        ]
        results["in_process_animate_ms_per_frame"] = in_ms / frames
    return results


class _TransportProbe:
    """Serves the paper-size fp16 contract without a network: animate answers zeros.

    Only for measuring transports; its frames are meaningless and it never ships in a server.
    """

    profile = "transport-probe"

    def __init__(self, contract: ServingContract) -> None:
        self.contract = contract

    def model_version(self) -> str:
        return "transport-probe"

    def reconstruct(self, portrait: np.ndarray, mask: np.ndarray, camera: np.ndarray) -> np.ndarray:
        spec = self.contract.reconstruct.output(PLANES)
        return np.zeros((portrait.shape[0], *spec.dims), spec.dtype)

    def animate(self, planes: np.ndarray, expr_renders: np.ndarray, cameras: np.ndarray) -> AnimateOutput:
        spec = self.contract.animate
        n = expr_renders.shape[0]
        low = spec.output("low_res")
        out = spec.output("frames")
        alpha = spec.output("alpha")
        return AnimateOutput(
            np.zeros((n, *low.dims[1:]), low.dtype),
            np.zeros((n, *out.dims[1:]), out.dtype),
            np.zeros((n, *alpha.dims[1:]), alpha.dtype),
        )


@contextmanager
def _probe_server(contract: ServingContract) -> Iterator[tuple[str, str]]:
    from services.inference.server import ServerOptions, free_port, serve

    root = pathlib.Path(tempfile.mkdtemp(prefix="goha-probe-"))
    options = ServerOptions(
        grpc_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        access_token="bench-probe",
        workspace=root / "workspace",
        log_file=root / "tritonserver.log",
    )
    stop = threading.Event()
    thread = threading.Thread(
        target=serve, args=(_TransportProbe(contract), options), kwargs={"stop_event": stop}
    )
    thread.start()
    try:
        from services.inference.server import wait_until_ready

        wait_until_ready(f"http://127.0.0.1:{options.http_port}", timeout_s=120)
        yield f"127.0.0.1:{options.grpc_port}", "bench-probe"
    finally:
        stop.set()
        thread.join(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def bench_transport(*, frames: int, repeats: int) -> dict[str, Any]:
    from services.inference.repository import contract_for_profile

    contract = contract_for_profile("paper", "float16")
    s = contract.shapes
    rng = np.random.default_rng(0)
    planes = rng.standard_normal(s.planes_dims).astype(np.float16)
    expr = rng.uniform(-1, 1, (frames, 3, s.expr_size, s.expr_size)).astype(np.float16)
    cams = np.tile(np.eye(5, dtype=np.float32).reshape(-1)[:25], (frames, 1))
    with _probe_server(contract) as (url, token):
        with (
            InferenceClient(
                url, use_shared_memory=False, access_token=token, max_frames_per_request=frames
            ) as grpc,
            InferenceClient(
                url, use_shared_memory=True, access_token=token, max_frames_per_request=frames
            ) as shm,
        ):
            times = _median_ms(
                {
                    "grpc": lambda: grpc.animate(planes, expr, cams),
                    "shm": lambda: shm.animate(planes, expr, cams),
                },
                repeats,
            )
        results = {False: times["grpc"], True: times["shm"]}
    return {
        "transport_paper_fp16_frames_per_request": frames,
        "transport_paper_fp16_request_mb": (planes.nbytes + expr.nbytes + cams.nbytes) / 1e6,
        "transport_paper_fp16_response_mb": frames * (4 * s.low_res_size**2 + 3 * s.output_size**2) * 2 / 1e6,
        "transport_paper_fp16_ms_per_request_grpc": results[False],
        "transport_paper_fp16_ms_per_request_shm": results[True],
        "transport_paper_fp16_shm_speedup": results[False] / results[True],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.inference.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--checkpoint", type=pathlib.Path, default=None, help="default: random weights")
    parser.add_argument("--frames", type=int, default=8, help="frames per animate request")
    parser.add_argument("--repeats", type=int, default=3)
    # One torch thread: on shared cores two OpenMP threads oversubscribe and run several times slower.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--transport-frames", type=int, default=4)
    parser.add_argument("--skip-transport", action="store_true")
    parser.add_argument("--skip-in-process", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from services.inference.server import env_with_libpython

    os.environ.update(env_with_libpython(os.environ))
    with tempfile.TemporaryDirectory(prefix="goha-bench-") as tmp:
        checkpoint = args.checkpoint or _random_checkpoint(args.profile, pathlib.Path(tmp))
        result: dict[str, Any] = {"profile": args.profile, "frames_per_request": args.frames}
        result.update(
            bench_models(
                checkpoint,
                frames=args.frames,
                repeats=args.repeats,
                threads=args.threads,
                include_in_process=not args.skip_in_process,
            )
        )
    if not args.skip_transport:
        result.update(bench_transport(frames=args.transport_frames, repeats=max(args.repeats, 5)))
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    print(json.dumps(rounded))


if __name__ == "__main__":
    main()
