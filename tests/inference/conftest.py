"""Fixtures of the inference tests: one tiny random-initialised checkpoint, one Triton server per session."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

TINY_SIZE = 128  # shared.model.config.tiny_config().image_size


@dataclass(frozen=True)
class TinyCheckpoint:
    path: pathlib.Path
    version: str


@dataclass(frozen=True)
class Inputs:
    portraits: np.ndarray  # (2, 3, S, S) in [-1, 1]
    masks: np.ndarray  # (2, 1, S, S) keep-masks
    cameras: np.ndarray  # (2, 25)
    expr_renders: np.ndarray  # (3, 3, S, S)
    frame_cameras: np.ndarray  # (3, 25)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    import torch

    from shared.model.checkpoint import save_checkpoint
    from shared.model.config import get_profile
    from shared.model.network import GOHANetwork

    torch.manual_seed(1234)
    network = GOHANetwork(get_profile("tiny"))
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.ckpt"
    version = save_checkpoint(network, path)
    return TinyCheckpoint(path=path, version=version)


@pytest.fixture(scope="session")
def inprocess(tiny_checkpoint: TinyCheckpoint):  # noqa: ANN201 - InProcessInference imports torch
    from services.inference.engine import InProcessInference, configure_determinism

    configure_determinism(threads=1)
    return InProcessInference.from_checkpoint(tiny_checkpoint.path, profile="tiny")


@pytest.fixture(scope="session")
def inputs() -> Inputs:
    """A real face (scikit-image's astronaut) at the tiny profile's size and plausible cameras."""
    import cv2
    import skimage.data
    import torch

    from shared.model import cameras

    face = cv2.resize(
        skimage.data.astronaut()[30:330, 110:410], (TINY_SIZE, TINY_SIZE), interpolation=cv2.INTER_AREA
    )
    portrait = face.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    portraits = np.stack([portrait, portrait[:, :, ::-1]])
    masks = np.ones((2, 1, TINY_SIZE, TINY_SIZE), np.float32)
    masks[:, :, 40:60, 30:100] = 0.0  # eyes/brows
    masks[:, :, 85:110, 45:85] = 0.0  # mouth
    source_cameras = cameras.spherical_camera(torch.tensor([0.0, 0.15]), torch.tensor([0.0, -0.05])).numpy()
    # Frames 0 and 1: same expression, different cameras; frames 0 and 2: same camera, different
    # expressions (the mirrored, colour-inverted face), so each input's effect can be measured.
    expr = np.stack([portraits[0], portraits[0], -portraits[1]])
    frame_cameras = cameras.spherical_camera(
        torch.tensor([-0.25, 0.3, -0.25]), torch.tensor([0.05, -0.1, 0.05])
    ).numpy()
    return Inputs(
        portraits=np.ascontiguousarray(portraits, dtype=np.float32),
        masks=masks,
        cameras=source_cameras.astype(np.float32),
        expr_renders=expr.astype(np.float32),
        frame_cameras=frame_cameras.astype(np.float32),
    )


@dataclass(frozen=True)
class Reference:
    planes: np.ndarray  # (2, 3, C, R, R) in-process reconstruct of both portraits
    low_res: np.ndarray  # in-process animate of planes[0] with the three frames
    frames: np.ndarray
    alpha: np.ndarray  # (3, 1, L, L) the render's opacity


@pytest.fixture(scope="session")
def reference(inprocess, inputs: Inputs) -> Reference:  # noqa: ANN001
    planes = inprocess.reconstruct(inputs.portraits, inputs.masks, inputs.cameras)
    output = inprocess.animate(planes[0], inputs.expr_renders, inputs.frame_cameras)
    return Reference(planes=planes, low_res=output.low_res, frames=output.frames, alpha=output.alpha)


@pytest.fixture(scope="session")
def triton_server(tiny_checkpoint: TinyCheckpoint) -> Iterator:
    from services.inference.server import launch_server

    with launch_server(tiny_checkpoint.path, profile="tiny", threads=1, max_frames_per_forward=2) as handle:
        yield handle
