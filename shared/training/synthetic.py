"""Synthetic multi-view head data: the project's stand-in for the paper's training sets.

Each identity is a procedural morphable head (``shared/face``) dressed with a skin tone applied
to the model's albedo, eyebrows painted along the brow landmarks, a hair shell (the upper/back
head surface pushed out along its normals, tapered at its edge), the model's own inner-mouth
cavity, and optional accessories (glasses frames, a hat, earrings). Lighting is one directional
light fixed in the WORLD per identity (plus ambient), so the appearance is multi-view consistent
like a real capture. Images are rendered with the project's rasteriser on a black background.

A sample is a *pair* of the same identity: source and target differ in camera and/or expression.
Besides the two images it carries both cameras (EG3D 25-vectors), α and both β, the frontal
shape render I_exp of (α, β_target), I_neu / M_neu (target camera, β = 0, face region only), the
keep-masks (0 on eyes/brows/mouth) of both images, the projected 68 landmarks of both, and the
per-pixel coverage of both images (``source_alpha`` / ``target_alpha``, uint8 0..255: the
rasteriser's coverage averaged over the supersampling; head, hair shell and accessories, i.e.
everything that is not background), which supervises the render's accumulated opacity.

Everything is deterministic in (seed, split, identity index, pair index): train and holdout
identities come from different random streams, so they are disjoint by construction.
Datasets are written once as ``.npz`` shards (``generate_dataset``) and read by ``PairDataset``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from shared.face.morphable import MorphableModel, load_procedural_model, vertex_normals
from shared.face.rasterizer import MeshRasterizer
from shared.face.render import render_expression
from shared.model import cameras as cams
from shared.training.errors import DataError

# /2 added source_alpha / target_alpha. Older datasets lack them and are refused with a clear
# error (``data.old_format``) instead of failing mid-training on a missing key.
DATASET_FORMAT = "goha-synthetic-pairs/2"
_OLD_FORMATS = ("goha-synthetic-pairs/1",)
SPLITS = {"train": 0, "holdout": 1}

# Label channels interpolated per pixel (accessories and hair carry zeros everywhere).
_LABEL_FACE, _LABEL_EYE, _LABEL_MOUTH, _LABEL_BROW, _LABEL_HEAD = range(5)

_SKIN_TONES = np.array(
    [
        [0.98, 0.80, 0.68],
        [0.90, 0.70, 0.56],
        [0.78, 0.57, 0.42],
        [0.62, 0.43, 0.30],
        [0.45, 0.30, 0.21],
        [0.32, 0.21, 0.15],
    ],
    dtype=np.float32,
)
_HAIR_COLOURS = np.array(
    [
        [0.06, 0.05, 0.05],  # black
        [0.25, 0.15, 0.08],  # dark brown
        [0.45, 0.30, 0.16],  # brown
        [0.80, 0.65, 0.38],  # blond
        [0.55, 0.22, 0.10],  # red
        [0.62, 0.62, 0.62],  # grey
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class SyntheticConfig:
    image_size: int = 128
    supersample: int = 2  # render at this factor and average down (anti-aliased edges)
    yaw_range: float = 0.5  # radians, uniform in [-r, r]
    pitch_range: float = 0.25
    target_jitter: float = 0.015  # look-at point noise (world units)
    expression_active: int = 3  # blendshapes switched on per expression
    expression_scale: float = 0.9
    same_expression_prob: float = 0.25  # view change only
    same_view_prob: float = 0.25  # expression change only
    glasses_prob: float = 0.3
    hat_prob: float = 0.2
    earrings_prob: float = 0.25
    hair_prob: float = 0.9
    # Painted skin texture (make-up, birthmarks, face paint, tattoos, sunburn...): random coloured
    # blobs over the skin, so that the colour the appearance branch lifts from a real portrait is not
    # limited to six skin tones. Fraction of identities that get some, and blobs per such identity.
    texture_prob: float = 0.7
    texture_blobs: int = 6


@dataclass
class Identity:
    index: int
    alpha: np.ndarray  # (K_id,)
    skin: np.ndarray  # (3,) skin tone
    hair_colour: np.ndarray  # (3,)
    hair_style: int  # 0 short, 1 long
    hair_thickness: float
    has_hair: bool
    glasses: bool
    glasses_colour: np.ndarray
    hat: bool
    hat_colour: np.ndarray
    earrings: bool
    light: np.ndarray  # (3,) unit direction toward the light, world frame
    # Skin texture blobs: centres (K, 3) in model space, radii (K,), colours (K, 3), strengths (K,).
    texture: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def accessories(self) -> np.ndarray:
        return np.array([self.glasses, self.hat, self.earrings], dtype=np.int8)


def _rng(seed: int, split: str, *parts: int) -> np.random.Generator:
    if split not in SPLITS:
        raise DataError("data.bad_split", f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return np.random.default_rng([seed, SPLITS[split], *parts])


def sample_identity(
    model: MorphableModel, config: SyntheticConfig, seed: int, split: str, index: int
) -> Identity:
    rng = _rng(seed, split, index, 0)
    tone = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * rng.uniform(0.92, 1.08, 3)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15, 3)
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(0.1, 0.8), 1.0])
    return Identity(
        index=index,
        alpha=rng.standard_normal(model.num_identity).astype(np.float32) * 0.9,
        skin=np.clip(tone, 0, 1).astype(np.float32),
        hair_colour=np.clip(hair, 0, 1).astype(np.float32),
        hair_style=int(rng.integers(2)),
        hair_thickness=float(rng.uniform(0.012, 0.03)),
        has_hair=bool(rng.random() < config.hair_prob),
        glasses=bool(rng.random() < config.glasses_prob),
        glasses_colour=rng.uniform(0.02, 0.25, 3).astype(np.float32),
        hat=bool(rng.random() < config.hat_prob),
        hat_colour=rng.uniform(0.05, 0.9, 3).astype(np.float32),
        earrings=bool(rng.random() < config.earrings_prob),
        light=(light / np.linalg.norm(light)).astype(np.float32),
        texture=_sample_texture(config, rng),
    )


def _sample_texture(
    config: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    # Drawn after every other identity field, so identities without texture are unchanged.
    if config.texture_blobs <= 0 or rng.random() >= config.texture_prob:
        return None
    k = int(rng.integers(1, config.texture_blobs + 1))
    centres = rng.uniform([-0.16, -0.2, 0.0], [0.16, 0.3, 0.25], (k, 3)).astype(np.float32)
    radii = rng.uniform(0.015, 0.1, k).astype(np.float32)
    colours = rng.uniform(0.0, 1.0, (k, 3)).astype(np.float32)
    strengths = rng.uniform(0.3, 0.9, k).astype(np.float32)
    return centres, radii, colours, strengths


def apply_texture(skin: np.ndarray, vertices: np.ndarray, identity: Identity) -> np.ndarray:
    """Skin colours (V, 3) with the identity's texture blobs painted on (Gaussian falloff)."""
    if identity.texture is None:
        return skin
    centres, radii, colours, strengths = identity.texture
    out = skin
    for centre, radius, colour, strength in zip(centres, radii, colours, strengths):
        weight = strength * np.exp(-((vertices - centre) ** 2).sum(-1) / (2 * radius**2))[:, None]
        out = out * (1 - weight) + colour * weight
    return out.astype(np.float32)


def sample_expression(model: MorphableModel, config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    beta = np.zeros(model.num_expression, dtype=np.float32)
    count = int(rng.integers(0, config.expression_active + 1))
    active = rng.choice(model.num_expression, size=count, replace=False)
    beta[active] = rng.uniform(0.2, 1.0, count) * config.expression_scale
    return beta


def sample_camera(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    yaw = rng.uniform(-config.yaw_range, config.yaw_range)
    pitch = rng.uniform(-config.pitch_range, config.pitch_range)
    target = rng.normal(0.0, config.target_jitter, 3)
    return (
        cams.spherical_camera(yaw, pitch, target=tuple(float(t) for t in target)).numpy().astype(np.float32)
    )


# --- static per-model geometry -----------------------------------------------------------------


@dataclass(frozen=True)
class _ModelExtras:
    brow_weight: np.ndarray  # (V,) in [0, 1]
    hair_weight: tuple[np.ndarray, np.ndarray]  # per style: (V,) taper weight in [0, 1]
    hair_faces: tuple[np.ndarray, np.ndarray]  # per style: faces (F_h, 3) into the head's vertices


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


@lru_cache(maxsize=4)
def _model_extras(model: MorphableModel) -> _ModelExtras:
    verts = model.mean_shape.numpy()
    faces = model.faces.numpy()
    lms = verts[model.landmark_indices.numpy()]
    # Eyebrows: within ~1 cm of the brow polylines (iBUG 17-21 and 22-26), raised a little.
    brow_dist = np.full(len(verts), np.inf)
    for start, end in ((17, 21), (22, 26)):
        for i in range(start, end):
            a, b = lms[i] + [0, 0.006, 0], lms[i + 1] + [0, 0.006, 0]
            brow_dist = np.minimum(brow_dist, _segment_distance(verts, a, b))
    brow_weight = np.clip(1.0 - (brow_dist - 0.006) / 0.006, 0.0, 1.0) * (verts[:, 2] > 0)

    # Adjacency for smoothing the hair selection into a taper.
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    degree = np.bincount(rows, minlength=len(verts)).astype(np.float64)
    face_region = model.face_region.numpy()
    brow_top = float(lms[17:27, 1].max())
    x, y, z = verts[:, 0], verts[:, 1], verts[:, 2]
    weights, hair_faces = [], []
    for style in (0, 1):
        if style == 0:  # short: crown and upper back
            selected = (y > brow_top + 0.045) | ((z < -0.03) & (y > 0.0))
        else:  # long: down the back and sides
            selected = (y > brow_top + 0.035) | ((z < 0.02) & (y > -0.2)) | ((np.abs(x) > 0.13) & (y > -0.12))
        selected &= ~face_region | (y > brow_top + 0.05)
        weight = selected.astype(np.float64)
        for _ in range(3):
            summed = np.zeros(len(verts))
            np.add.at(summed, rows, weight[cols])
            weight = np.where(selected, 0.5 * weight + 0.5 * summed / np.maximum(degree, 1), 0.0)
        weights.append(weight.astype(np.float32))
        hair_faces.append(faces[selected[faces].all(axis=1)])
    return _ModelExtras(
        brow_weight.astype(np.float32), (weights[0], weights[1]), (hair_faces[0], hair_faces[1])
    )


# --- accessory meshes (numpy, world units) ---------------------------------------------------------


def _double_sided(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Separate back-side vertices so their normals do not cancel the front's.
    return np.concatenate([verts, verts]), np.concatenate([faces, faces[:, ::-1] + len(verts)])


def _orient_outward(verts: np.ndarray, faces: np.ndarray, centre: np.ndarray) -> np.ndarray:
    tri = verts[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = (normal * (tri.mean(axis=1) - centre)).sum(-1) < 0
    faces = faces.copy()
    faces[flip] = faces[flip][:, ::-1]
    return faces


def _ring(
    centre: np.ndarray, radius: float, width: float, segments: int = 24
) -> tuple[np.ndarray, np.ndarray]:
    """Flat annulus facing +z (a glasses rim), double sided."""
    angles = np.linspace(0, 2 * math.pi, segments, endpoint=False)
    unit = np.stack([np.cos(angles), np.sin(angles) * 0.8, np.zeros_like(angles)], axis=1)
    verts = np.concatenate([centre + unit * radius, centre + unit * (radius + width)]).astype(np.float32)
    i = np.arange(segments)
    j = (i + 1) % segments
    faces = np.concatenate([np.stack([i, j, j + segments], 1), np.stack([i, j + segments, i + segments], 1)])
    faces = _orient_outward(verts, faces, centre - [0, 0, 1.0])
    return _double_sided(verts, faces)


def _quad(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _double_sided(corners.astype(np.float32), np.array([[0, 1, 2], [0, 2, 3]]))


def _ellipse_band(
    y0: float, y1: float, rx: float, rz: float, cz: float, segments: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    angles = np.linspace(0, 2 * math.pi, segments, endpoint=False)
    ring = np.stack([rx * np.cos(angles), np.zeros_like(angles), cz + rz * np.sin(angles)], 1)
    bottom, top = ring + [0, y0, 0], ring + [0, y1, 0]
    cap_centre = np.array([[0.0, y1, cz]])
    verts = np.concatenate([bottom, top, cap_centre]).astype(np.float32)
    i = np.arange(segments)
    j = (i + 1) % segments
    side = np.concatenate([np.stack([i, j, j + segments], 1), np.stack([i, j + segments, i + segments], 1)])
    cap = np.stack([i + segments, j + segments, np.full_like(i, 2 * segments)], 1)
    faces = np.concatenate([side, cap])
    return verts, _orient_outward(verts, faces, np.array([0.0, 0.5 * (y0 + y1) - 0.02, cz]))


def _brim(
    y: float, rx: float, rz: float, cz: float, scale: float, segments: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    angles = np.linspace(0, 2 * math.pi, segments, endpoint=False)
    ring = np.stack([np.cos(angles), np.zeros_like(angles), np.sin(angles)], 1)
    inner = ring * [rx, 0, rz] + [0, y, cz]
    outer = ring * [rx * scale, 0, rz * scale * 1.15] + [0, y, cz + 0.02]
    verts = np.concatenate([inner, outer]).astype(np.float32)
    i = np.arange(segments)
    j = (i + 1) % segments
    faces = np.concatenate([np.stack([i, j, j + segments], 1), np.stack([i, j + segments, i + segments], 1)])
    faces = _orient_outward(verts, faces, np.array([0.0, y - 1.0, cz]))
    return _double_sided(verts, faces)


def _sphere(
    centre: np.ndarray, radius: float, rings: int = 5, segments: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    verts = [centre + [0, radius, 0], centre - [0, radius, 0]]
    for r in range(1, rings):
        theta = math.pi * r / rings
        for s in range(segments):
            phi = 2 * math.pi * s / segments
            verts.append(
                centre
                + radius
                * np.array(
                    [math.sin(theta) * math.cos(phi), math.cos(theta), math.sin(theta) * math.sin(phi)]
                )
            )
    faces = []
    for s in range(segments):
        t = (s + 1) % segments
        faces.append([0, 2 + s, 2 + t])
        last = 2 + (rings - 2) * segments
        faces.append([1, last + t, last + s])
        for r in range(rings - 2):
            a, b = 2 + r * segments, 2 + (r + 1) * segments
            faces += [[a + s, b + s, b + t], [a + s, b + t, a + t]]
    v = np.array(verts, dtype=np.float32)
    return v, _orient_outward(v, np.array(faces), centre)


def _accessory_parts(
    identity: Identity, landmarks: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(vertices, faces, colour) of each accessory, placed with the neutral landmarks (68, 3)."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if identity.glasses:
        colour = identity.glasses_colour
        front = float(landmarks[36:48, 2].max()) + 0.035
        centres = [landmarks[36:42].mean(0), landmarks[42:48].mean(0)]
        radius = 0.042
        for c in centres:
            parts.append((*_ring(np.array([c[0], c[1], front]), radius, 0.007), colour))
        y_bridge = float(centres[0][1]) + 0.018
        x_in = min(abs(centres[0][0]), abs(centres[1][0])) - radius
        parts.append(
            (
                *_quad(
                    np.array(
                        [
                            [-x_in, y_bridge, front],
                            [x_in, y_bridge, front],
                            [x_in, y_bridge + 0.007, front],
                            [-x_in, y_bridge + 0.007, front],
                        ]
                    )
                ),
                colour,
            )
        )
        for c in centres:
            side = math.copysign(1.0, c[0])
            x = c[0] + side * (radius + 0.007)
            y = c[1] + 0.01
            parts.append(
                (
                    *_quad(
                        np.array([[x, y, front], [x, y, -0.06], [x, y + 0.006, -0.06], [x, y + 0.006, front]])
                    ),
                    colour,
                )
            )
    if identity.hat:
        colour = identity.hat_colour
        parts.append((*_ellipse_band(0.17, 0.37, 0.19, 0.235, -0.01), colour))
        parts.append((*_brim(0.17, 0.19, 0.235, -0.01, 1.35), colour * 0.9))
    if identity.earrings:
        colour = np.array([0.85, 0.7, 0.25], dtype=np.float32)
        for i, side in ((0, -1.0), (16, 1.0)):
            centre = landmarks[i] + np.array([0.012 * side, -0.05, -0.04])
            parts.append((*_sphere(centre, 0.011), colour))
    return parts


# --- rendering ---------------------------------------------------------------------------------------

_RASTERIZER = MeshRasterizer()


@dataclass
class _Scene:
    vertices: Tensor  # (V', 3)
    faces: Tensor  # (F', 3)
    colours: Tensor  # (V', 3)
    labels: Tensor  # (V', 5)
    occlusion: Tensor  # (V',)


def build_scene(model: MorphableModel, identity: Identity, beta: np.ndarray) -> _Scene:
    extras = _model_extras(model)
    alpha = torch.from_numpy(identity.alpha)[None]
    head = model.vertices(alpha, torch.from_numpy(beta)[None])[0]
    neutral_lms = model.landmarks(alpha, torch.zeros(1, model.num_expression))[0].numpy()
    faces = model.faces
    num_v = head.shape[0]
    # Skin: the model's albedo pattern rescaled to this identity's tone; brows in the hair colour.
    albedo = model.albedo.numpy() if model.albedo is not None else np.full((num_v, 3), 0.7, np.float32)
    face_mean = albedo[model.face_region.numpy()].mean(0)
    skin = np.clip(albedo / np.maximum(face_mean, 1e-3) * identity.skin, 0, 1)
    # Painted on the neutral head, so the texture moves with the skin under expressions.
    neutral = model.vertices(alpha, torch.zeros(1, model.num_expression))[0].numpy()
    skin = apply_texture(skin, neutral, identity)
    brow = extras.brow_weight[:, None]
    skin = skin * (1 - brow) + brow * identity.hair_colour * 0.8
    labels = np.zeros((num_v, 5), np.float32)
    labels[:, _LABEL_FACE] = model.face_region.numpy()
    labels[:, _LABEL_EYE] = model.eye_region.numpy()
    labels[:, _LABEL_MOUTH] = model.mouth_region.numpy()
    labels[:, _LABEL_BROW] = extras.brow_weight > 0.3
    labels[:, _LABEL_HEAD] = 1.0
    occlusion = (
        model.vertex_shading.numpy() if model.vertex_shading is not None else np.ones(num_v, np.float32)
    )

    all_v, all_f, all_c, all_l, all_o = [head.numpy()], [faces.numpy()], [skin], [labels], [occlusion]
    offset = num_v
    if identity.has_hair:
        style = identity.hair_style
        normals = vertex_normals(head[None], faces)[0].numpy()
        weight = extras.hair_weight[style]
        shell = head.numpy() + normals * (identity.hair_thickness * weight)[:, None]
        streaks = 0.8 + 0.35 * np.abs(np.sin(np.arange(num_v) * 12.9898) * 43758.5453 % 1.0)[:, None]
        all_v.append(shell)
        all_f.append(extras.hair_faces[style] + offset)
        all_c.append(np.clip(identity.hair_colour * streaks, 0, 1))
        all_l.append(np.zeros((num_v, 5), np.float32))
        all_o.append(np.ones(num_v, np.float32))
        offset += num_v
    for verts, part_faces, colour in _accessory_parts(identity, neutral_lms):
        all_v.append(verts)
        all_f.append(part_faces + offset)
        all_c.append(np.broadcast_to(colour, verts.shape).astype(np.float32))
        all_l.append(np.zeros((len(verts), 5), np.float32))
        all_o.append(np.ones(len(verts), np.float32))
        offset += len(verts)
    return _Scene(
        vertices=torch.from_numpy(np.concatenate(all_v).astype(np.float32)),
        faces=torch.from_numpy(np.concatenate(all_f).astype(np.int64)),
        colours=torch.from_numpy(np.concatenate(all_c).astype(np.float32)),
        labels=torch.from_numpy(np.concatenate(all_l).astype(np.float32)),
        occlusion=torch.from_numpy(np.concatenate(all_o).astype(np.float32)),
    )


def render_scene(
    scene: _Scene, camera: np.ndarray, light: np.ndarray, size: int, supersample: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Image (3, S, S) in [-1, 1] on black, labels (5, S, S) in [0, 1] (coverage-averaged) and
    coverage (1, S, S) in [0, 1]: the fraction of the pixel's supersamples that hit any surface."""
    cam_t = torch.from_numpy(camera)[None]
    verts = scene.vertices[None]
    frags = _RASTERIZER.rasterize(verts, scene.faces, cam_t, size * supersample)
    normals = F.normalize(
        frags.interpolate(vertex_normals(verts, scene.faces), scene.faces), dim=-1, eps=1e-12
    )
    lambert = (normals * torch.from_numpy(light)).sum(-1).clamp_min(0.0)
    occlusion = frags.interpolate(scene.occlusion[:, None], scene.faces)[..., 0]
    intensity = (0.32 + 0.68 * lambert) * occlusion
    colour = frags.interpolate(scene.colours, scene.faces) * intensity.unsqueeze(-1)
    image = torch.where(frags.mask.unsqueeze(-1), colour.clamp(0, 1) * 2 - 1, torch.full_like(colour, -1.0))
    labels = frags.interpolate(scene.labels, scene.faces)
    image = image[0].permute(2, 0, 1)
    labels = labels[0].permute(2, 0, 1)
    coverage = frags.mask[0].to(image.dtype)[None]
    if supersample > 1:
        image = F.avg_pool2d(image[None], supersample)[0]
        labels = F.avg_pool2d(labels[None], supersample)[0]
        coverage = F.avg_pool2d(coverage[None], supersample)[0]
    return image, labels, coverage


def keep_mask_from_labels(labels: Tensor) -> Tensor:
    """(1, S, S): 0 on eyes, brows and mouth (dilated by one pixel), 1 elsewhere (background too)."""
    parts = labels[[_LABEL_EYE, _LABEL_MOUTH, _LABEL_BROW]].amax(0, keepdim=True) > 0.3
    parts = F.max_pool2d(parts[None].float(), 3, stride=1, padding=1)[0]
    return 1.0 - parts


def project_landmarks(
    model: MorphableModel, alpha: np.ndarray, beta: np.ndarray, camera: np.ndarray, size: int
) -> np.ndarray:
    """(68, 2) pixel coordinates (x right, y down) of the model's landmarks."""
    lms = model.landmarks(torch.from_numpy(alpha)[None], torch.from_numpy(beta)[None])
    uv, _ = cams.project_points(lms, torch.from_numpy(camera)[None])
    return (uv[0] * size).numpy().astype(np.float32)


def _to_uint8(image: Tensor) -> np.ndarray:
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def _coverage_to_uint8(coverage: Tensor) -> np.ndarray:
    return (coverage.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def make_pair(
    model: MorphableModel,
    config: SyntheticConfig,
    seed: int,
    split: str,
    identity_index: int,
    pair_index: int,
) -> dict[str, np.ndarray]:
    """One (source, target) pair of one identity; deterministic in its arguments."""
    identity = sample_identity(model, config, seed, split, identity_index)
    rng = _rng(seed, split, identity_index, pair_index + 1)
    size, ss = config.image_size, config.supersample
    beta_s = sample_expression(model, config, rng)
    cam_s = sample_camera(config, rng)
    mode = rng.random()
    beta_t = beta_s.copy() if mode < config.same_expression_prob else sample_expression(model, config, rng)
    if config.same_expression_prob <= mode < config.same_expression_prob + config.same_view_prob:
        cam_t = cam_s.copy()
    else:
        cam_t = sample_camera(config, rng)
    scene_s = build_scene(model, identity, beta_s)
    scene_t = scene_s if np.array_equal(beta_s, beta_t) else build_scene(model, identity, beta_t)
    scene_n = build_scene(model, identity, np.zeros_like(beta_s))
    src, labels_s, cover_s = render_scene(scene_s, cam_s, identity.light, size, ss)
    tgt, labels_t, cover_t = render_scene(scene_t, cam_t, identity.light, size, ss)
    neu, labels_n, _ = render_scene(scene_n, cam_t, identity.light, size, ss)
    neutral_mask = (labels_n[_LABEL_FACE : _LABEL_FACE + 1] > 0.5).float()
    i_exp = render_expression(
        model, torch.from_numpy(identity.alpha)[None], torch.from_numpy(beta_t)[None], size, supersample=ss
    )[0]
    return {
        "source_image": _to_uint8(src),
        "target_image": _to_uint8(tgt),
        "expression_image": _to_uint8(i_exp),
        "neutral_image": _to_uint8(neu),
        "neutral_mask": neutral_mask.to(torch.uint8).numpy(),
        "source_keep": keep_mask_from_labels(labels_s).to(torch.uint8).numpy(),
        "target_keep": keep_mask_from_labels(labels_t).to(torch.uint8).numpy(),
        "source_alpha": _coverage_to_uint8(cover_s),
        "target_alpha": _coverage_to_uint8(cover_t),
        "source_camera": cam_s,
        "target_camera": cam_t,
        "alpha": identity.alpha,
        "source_beta": beta_s,
        "target_beta": beta_t,
        "source_landmarks": project_landmarks(model, identity.alpha, beta_s, cam_s, size),
        "target_landmarks": project_landmarks(model, identity.alpha, beta_t, cam_t, size),
        "identity": np.array(identity_index, dtype=np.int32),
        "accessories": identity.accessories,
    }


def generate_dataset(
    out_dir: str | Path,
    *,
    split: str,
    num_identities: int,
    pairs_per_identity: int,
    seed: int = 0,
    shard_size: int = 128,
    config: SyntheticConfig | None = None,
    model: MorphableModel | None = None,
    progress: bool = False,
    reuse_existing: bool = True,
) -> dict[str, Any]:
    """Write ``<split>-NNNNN.npz`` shards plus ``<split>.json`` metadata; returns the metadata.

    ``reuse_existing``: a shard already on disk with the expected identities and pair count (an
    interrupted run with the same arguments) is kept instead of re-rendered; generation is
    deterministic, so the result is the same either way.
    """
    if num_identities < 1 or pairs_per_identity < 1 or shard_size < 1:
        raise DataError("data.bad_size", "identities, pairs per identity and shard size must be >= 1")
    config = config or SyntheticConfig()
    model = model or load_procedural_model()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(i, p) for i in range(num_identities) for p in range(pairs_per_identity)]
    digest = hashlib.sha256()
    shards = []
    for start in range(0, len(jobs), shard_size):
        chunk = jobs[start : start + shard_size]
        name = f"{split}-{start // shard_size:05d}.npz"
        stacked = _existing_shard(out / name, chunk) if reuse_existing else None
        if stacked is None:
            samples = [make_pair(model, config, seed, split, i, p) for i, p in chunk]
            stacked = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
            tmp = out / f".{name}.tmp.npz"
            np.savez(tmp, **stacked)
            tmp.replace(out / name)
        for key in sorted(stacked):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(stacked[key]).tobytes())
        shards.append({"file": name, "count": len(chunk)})
        if progress:
            print(f"[generate-data] {split}: {start + len(chunk)}/{len(jobs)} pairs", flush=True)
    meta = {
        "format": DATASET_FORMAT,
        "split": split,
        "seed": seed,
        "num_identities": num_identities,
        "pairs_per_identity": pairs_per_identity,
        "num_pairs": len(jobs),
        "image_size": config.image_size,
        "config": asdict(config),
        "morphable_model": model.name,
        "shards": shards,
        "sha256": digest.hexdigest(),
    }
    (out / f"{split}.json").write_text(json.dumps(meta, indent=2))
    return meta


def _existing_shard(path: Path, chunk: list[tuple[int, int]]) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError):
        return None
    identities = arrays.get("identity")
    if identities is None or identities.tolist() != [i for i, _ in chunk]:
        return None
    if any(key not in arrays for key in _ALPHAS):  # a shard of an older format: re-render it
        return None
    return arrays


# --- reading -------------------------------------------------------------------------------------------

_UINT8_IMAGES = ("source_image", "target_image", "expression_image", "neutral_image")
_MASKS = ("neutral_mask", "source_keep", "target_keep")
_ALPHAS = ("source_alpha", "target_alpha")  # uint8 coverage 0..255 → float [0, 1]


class PairDataset(torch.utils.data.Dataset):
    """Pairs from a generated dataset folder; images as float tensors in [-1, 1], masks and
    ``source_alpha`` / ``target_alpha`` (1, S, S) as float tensors in [0, 1].

    Shards are loaded on demand and kept in a small LRU cache (``max_cached_shards``), so memory
    is bounded by shard size, not dataset size.
    """

    def __init__(self, root: str | Path, split: str = "train", *, max_cached_shards: int = 8) -> None:
        self.root = Path(root)
        meta_path = self.root / f"{split}.json"
        if not meta_path.is_file():
            raise DataError(
                "data.missing",
                f"no {split} split at {self.root} (run `python -m shared.training generate-data --out {self.root}`)",
            )
        self.meta = json.loads(meta_path.read_text())
        found = self.meta.get("format")
        if found in _OLD_FORMATS:
            raise DataError(
                "data.old_format",
                f"{meta_path}: a {found} dataset, this code reads {DATASET_FORMAT} (it adds the "
                f"source_alpha / target_alpha coverage the opacity loss needs); regenerate it with "
                f"`python -m shared.training generate-data --out {self.root}` (same seed, same pairs)",
            )
        if found != DATASET_FORMAT:
            raise DataError("data.bad_format", f"{meta_path}: not a {DATASET_FORMAT} dataset")
        self.index: list[tuple[int, int]] = [
            (s, r) for s, shard in enumerate(self.meta["shards"]) for r in range(shard["count"])
        ]
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._max_cached = max(1, max_cached_shards)

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def __len__(self) -> int:
        return len(self.index)

    def _shard(self, number: int) -> dict[str, np.ndarray]:
        if number in self._cache:
            self._cache.move_to_end(number)
            return self._cache[number]
        path = self.root / self.meta["shards"][number]["file"]
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise DataError("data.bad_shard", f"{path}: unreadable shard ({exc})") from exc
        self._cache[number] = arrays
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        return arrays

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        if not 0 <= item < len(self.index):
            raise IndexError(item)
        shard, row = self.index[item]
        arrays = self._shard(shard)
        out: dict[str, Tensor] = {}
        for key, value in arrays.items():
            tensor = torch.from_numpy(np.array(value[row]))
            if key in _UINT8_IMAGES:
                tensor = tensor.float() / 127.5 - 1.0
            elif key in _MASKS:
                tensor = tensor.float()
            elif key in _ALPHAS:
                tensor = tensor.float() / 255.0
            out[key] = tensor
        return out


def collate(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
