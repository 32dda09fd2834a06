"""Shared, cached inputs of the face-analysis tests (plain functions: the folder's conftest, if any,
belongs to no single engineer)."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import torch
from skimage import data

from shared.face.morphable import MorphableModel, load_procedural_model
from shared.face.pipeline import FaceAnalyzer, PortraitAnalysis
from shared.model import cameras

CROP_SIZE = 128


def model() -> MorphableModel:
    return load_procedural_model()


@lru_cache(maxsize=1)
def analyzer() -> FaceAnalyzer:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return FaceAnalyzer(model(), CROP_SIZE)


def astronaut() -> np.ndarray:
    return data.astronaut()


@lru_cache(maxsize=1)
def astronaut_portrait() -> PortraitAnalysis:
    return analyzer().analyze_portrait(astronaut())


def moved_astronaut(index: int, size: int = 512) -> np.ndarray:
    """Frame ``index`` of the astronaut under a known smooth in-plane motion (roll in degrees =
    ``roll_of(index)``, counter-clockwise on screen)."""
    image = astronaut()
    matrix = cv2.getRotationMatrix2D((222.0, 130.0), roll_of(index), 1.0 + 0.04 * np.sin(index / 5.0))
    matrix[0, 2] += 12.0 * np.sin(index / 4.0)
    frame = cv2.warpAffine(image, matrix, (512, 512), borderMode=cv2.BORDER_REFLECT)
    return frame if size == 512 else cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)


def roll_of(index: int) -> float:
    return 10.0 * np.sin(index / 6.0)


def synthetic_landmarks(
    alpha: torch.Tensor,
    beta: torch.Tensor,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    *,
    noise: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:
    """(B, 68, 2) normalised landmarks of the model under known poses, projected through the camera
    module (an independent path from the fitter's own projection), plus Gaussian noise."""
    batch = beta.shape[0]
    landmarks3d = model().landmarks(alpha.expand(batch, -1).float(), beta.float())
    camera = cameras.camera_from_head_pose(rotation.float(), translation.float(), radius=None)
    uv, _ = cameras.project_points(landmarks3d, camera)
    if noise > 0:
        generator = torch.Generator().manual_seed(seed)
        uv = uv + noise * torch.randn(uv.shape, generator=generator)
    return uv.double()
