"""Basel Face Model loader for Deep3DFaceRecon's ``BFM_model_front.mat`` (user-supplied).

The BFM is licensed by the University of Basel on registration only: the project never ships,
downloads or caches it. A user who holds ``BFM_model_front.mat`` (built by Deep3DFaceRecon's
preprocessing from ``01_MorphableModel.mat`` + ``Exp_Pca.bin``) passes its path.

Layout read (Deep3D's front model: N = 35709 vertices, F = 70789 triangles; any N works):

=================  ============  ============================================================
key                shape         meaning
=================  ============  ============================================================
``meanshape``      (1, 3N)       mean shape, xyz interleaved, Deep3D units (~decimetres)
``idBase``         (3N, 80)      identity basis
``exBase``         (3N, 64)      expression basis
``meantex``        (1, 3N)       mean albedo, 0..255
``texBase``        (3N, 80)      albedo basis (not used here)
``tri``            (F, 3)        triangles, 1-based
``point_buf``      (N, 8)        triangles around each vertex, 1-based (validated, not needed)
``keypoints``      (1, 68)       iBUG-68 landmark vertex ids, 1-based
``frontmask2_idx`` (M, 1)        vertices of the inner face, 1-based (optional)
``skinmask``       (1, N)        0/1 skin vertices (optional)
=================  ============  ============================================================

Frame conversion. Deep3D's axes already match the project's world frame (x = subject's left,
y up, z toward the camera). Deep3D re-centres the mean shape on its centroid; we instead apply
one similarity so both models share the world frame::

    x_world = s * (x_bfm - c_bfm) + c_proc
    s = |lm0 - lm16|_proc / |lm0 - lm16|_bfm     (jaw-contour width, iBUG points 0 and 16)
    c = centroid of the 68 mean-shape landmarks

so a BFM face is as wide as the procedural one and its landmarks are centred where the
procedural model's are. The bases are scaled by ``s`` (no translation). Expression names are
generic: ``exp_00`` .. ``exp_63``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.face.head_model import NUM_LANDMARKS, MorphableModel, MorphableModelError, load_procedural_model

REQUIRED_KEYS = ("meanshape", "idBase", "exBase", "tri", "keypoints")


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise MorphableModelError(
            "bfm_file_missing",
            f"Basel Face Model file {path} not found. The BFM is licensed on registration only and is never "
            "shipped; build BFM_model_front.mat with Deep3DFaceRecon's tools and pass its path.",
        )
    try:
        from scipy.io import loadmat

        data = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise MorphableModelError(
            "bfm_unreadable", f"{path} is not a readable MATLAB .mat file: {exc}"
        ) from exc
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise MorphableModelError(
            "bfm_missing_key",
            f"{path} lacks {missing}; expected Deep3DFaceRecon's BFM_model_front.mat layout",
        )
    return data


def _one_based(values: np.ndarray, upper: int, what: str) -> np.ndarray:
    idx = np.asarray(values).astype(np.int64) - 1
    if idx.size and (idx.min() < 0 or idx.max() >= upper):
        raise MorphableModelError(
            "bfm_bad_index",
            f"{what} must be 1-based indices in [1, {upper}], got range [{idx.min() + 1}, {idx.max() + 1}]",
        )
    return idx


def _basis(matrix: np.ndarray, num_vertices: int, key: str) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != 3 * num_vertices:
        raise MorphableModelError(
            "bfm_bad_shape", f"{key} must be (3N, K) with N = {num_vertices}, got {matrix.shape}"
        )
    return matrix.T.reshape(matrix.shape[1], num_vertices, 3)


def _ellipse_region(points: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    rel = (points[:, :2] - centre[:2]) / radii
    return np.sum(rel**2, axis=1) <= 1.0


def load_bfm(path: str | Path) -> MorphableModel:
    """Load a Deep3DFaceRecon ``BFM_model_front.mat`` into the project's world frame."""
    path = Path(path)
    data = _read_mat(path)
    mean = np.asarray(data["meanshape"], dtype=np.float64).reshape(-1)
    if mean.size % 3 != 0 or mean.size == 0:
        raise MorphableModelError("bfm_bad_shape", f"meanshape must hold 3N values, got {mean.size}")
    num_vertices = mean.size // 3
    mean = mean.reshape(num_vertices, 3)
    id_basis = _basis(data["idBase"], num_vertices, "idBase")
    exp_basis = _basis(data["exBase"], num_vertices, "exBase")

    tri = np.asarray(data["tri"])
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise MorphableModelError("bfm_bad_shape", f"tri must be (F, 3), got {tri.shape}")
    faces = _one_based(tri, num_vertices, "tri")
    keypoints = np.asarray(data["keypoints"]).reshape(-1)
    if keypoints.size != NUM_LANDMARKS:
        raise MorphableModelError("bfm_bad_shape", f"keypoints must hold 68 indices, got {keypoints.size}")
    landmarks = _one_based(keypoints, num_vertices, "keypoints")
    if "point_buf" in data:
        point_buf = np.asarray(data["point_buf"])
        if point_buf.ndim != 2 or point_buf.shape[0] != num_vertices:
            raise MorphableModelError("bfm_bad_shape", f"point_buf must be (N, 8), got {point_buf.shape}")

    # Similarity into the procedural model's world frame (module docstring).
    procedural = load_procedural_model()
    proc_lm = procedural.mean_shape[procedural.landmark_indices].double().numpy()
    bfm_lm = mean[landmarks]
    bfm_width = float(np.linalg.norm(bfm_lm[0] - bfm_lm[16]))
    if not np.isfinite(bfm_width) or bfm_width <= 0:
        raise MorphableModelError("bfm_bad_shape", "landmarks 0 and 16 coincide: cannot scale the BFM")
    scale = float(np.linalg.norm(proc_lm[0] - proc_lm[16])) / bfm_width
    world = scale * (mean - bfm_lm.mean(axis=0)) + proc_lm.mean(axis=0)
    id_basis = id_basis * scale
    exp_basis = exp_basis * scale

    # Triangles must be counter-clockwise seen from outside; the front face looks toward +z.
    v0, v1, v2 = world[faces[:, 0]], world[faces[:, 1]], world[faces[:, 2]]
    if np.cross(v1 - v0, v2 - v0)[:, 2].sum() < 0:
        faces = faces[:, [0, 2, 1]]

    face_region = np.ones(num_vertices, dtype=bool)
    if "frontmask2_idx" in data:
        face_region = np.zeros(num_vertices, dtype=bool)
        face_region[
            _one_based(np.asarray(data["frontmask2_idx"]).reshape(-1), num_vertices, "frontmask2_idx")
        ] = True
    if "skinmask" in data:
        skin = np.asarray(data["skinmask"]).reshape(-1)
        if skin.size == num_vertices:
            face_region &= skin > 0
    lm_world = world[landmarks]
    eye_region = np.zeros(num_vertices, dtype=bool)
    for eye in (slice(36, 42), slice(42, 48)):
        pts = lm_world[eye]
        width = float(np.ptp(pts[:, 0]))
        eye_region |= _ellipse_region(world, pts.mean(axis=0), np.array([0.75 * width, 0.5 * width]))
    mouth_pts = lm_world[48:60]
    mouth_width = float(np.ptp(mouth_pts[:, 0]))
    mouth_region = _ellipse_region(
        world, mouth_pts.mean(axis=0), np.array([0.7 * mouth_width, 0.45 * mouth_width])
    )
    # Only the front of the face: the landmark ellipses must not pick the back of a full head.
    in_front = world[:, 2] > lm_world[:, 2].min() - 0.05
    eye_region &= in_front
    mouth_region &= in_front

    albedo = None
    if "meantex" in data:
        tex = np.asarray(data["meantex"], dtype=np.float64).reshape(-1)
        if tex.size == 3 * num_vertices:
            albedo = torch.from_numpy(
                np.clip(tex.reshape(num_vertices, 3) / 255.0, 0.0, 1.0).astype(np.float32)
            )

    return MorphableModel(
        name="bfm",
        mean_shape=torch.from_numpy(world.astype(np.float32)),
        id_basis=torch.from_numpy(id_basis.astype(np.float32)),
        exp_basis=torch.from_numpy(exp_basis.astype(np.float32)),
        expression_names=tuple(f"exp_{k:02d}" for k in range(exp_basis.shape[0])),
        faces=torch.from_numpy(faces.astype(np.int64)),
        landmark_indices=torch.from_numpy(landmarks.astype(np.int64)),
        face_region=torch.from_numpy(face_region),
        eye_region=torch.from_numpy(eye_region),
        mouth_region=torch.from_numpy(mouth_region),
        albedo=albedo,
    )
