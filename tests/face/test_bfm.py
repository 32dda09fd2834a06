"""The BFM loader on a synthetic BFM_model_front.mat with Deep3D's keys and layouts (small N).

No Basel Face Model data is used or shipped: the file is a made-up face-shaped patch.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from shared.face.morphable import MorphableModelError, load_bfm, load_morphable_model, load_procedural_model
from shared.face.render import EXPRESSION_CAMERA, render_mesh

ROWS, COLS = 24, 20


def _synthetic_bfm(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A face-like height field in Deep3D-like units (about +-0.9 wide), keys as in Deep3D."""
    ys, xs = np.meshgrid(np.linspace(1.1, -1.2, ROWS), np.linspace(-0.9, 0.9, COLS), indexing="ij")
    zs = 0.6 * np.sqrt(np.clip(1.0 - (xs / 1.0) ** 2 - (ys / 1.4) ** 2, 0.0, 1.0)) + 0.3
    verts = np.stack([xs, ys, zs], -1).reshape(-1, 3) + np.array([0.05, 0.2, 0.1])  # not centred
    n = verts.shape[0]
    r, c = np.meshgrid(np.arange(ROWS - 1), np.arange(COLS - 1), indexing="ij")
    a, b = r * COLS + c, r * COLS + c + 1
    below, below_next = (r + 1) * COLS + c, (r + 1) * COLS + c + 1
    # Clockwise seen from the front: the loader must flip it to counter-clockwise.
    tri = np.concatenate(
        [np.stack([a, b, below], -1).reshape(-1, 3), np.stack([b, below_next, below], -1).reshape(-1, 3)]
    )
    # 68 keypoints: nearest grid vertices to the procedural layout scaled into these units.
    model = load_procedural_model()
    proc_lm = model.mean_shape[model.landmark_indices].numpy().astype(np.float64)
    targets = (proc_lm[:, :2] - proc_lm[:, :2].mean(0)) * 5.0 + verts[:, :2].mean(0)
    keypoints = np.argmin(((verts[None, :, :2] - targets[:, None]) ** 2).sum(-1), axis=1)
    point_buf = rng.integers(1, tri.shape[0] + 1, size=(n, 8))
    front = np.flatnonzero(np.abs(verts[:, 0] - 0.05) < 0.7)
    skin = (verts[:, 1] < 1.2).astype(np.float64)
    return {
        "meanshape": verts.reshape(1, -1),
        "idBase": rng.normal(0.0, 0.01, size=(3 * n, 80)),
        "exBase": rng.normal(0.0, 0.01, size=(3 * n, 64)),
        "meantex": rng.uniform(0, 255, size=(1, 3 * n)),
        "texBase": np.zeros((3 * n, 80)),
        "tri": (tri + 1).astype(np.float64),  # Deep3D stores doubles, 1-based
        "point_buf": point_buf.astype(np.float64),
        "keypoints": (keypoints + 1).reshape(1, 68).astype(np.float64),
        "frontmask2_idx": (front + 1).reshape(-1, 1).astype(np.float64),
        "skinmask": skin.reshape(1, -1),
    }


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    data = _synthetic_bfm(np.random.default_rng(0))
    path = tmp_path_factory.mktemp("bfm") / "BFM_model_front.mat"
    savemat(str(path), data)
    return path, data


def test_loads_with_right_shapes_and_zero_based_indices(
    synthetic: tuple[Path, dict[str, np.ndarray]],
) -> None:
    path, data = synthetic
    model = load_bfm(path)
    n = ROWS * COLS
    assert model.name == "bfm"
    assert model.mean_shape.shape == (n, 3) and model.id_basis.shape == (80, n, 3)
    assert model.exp_basis.shape == (64, n, 3) and model.num_expression == 64
    assert model.expression_names[0] == "exp_00" and model.expression_names[-1] == "exp_63"
    assert torch.equal(
        model.landmark_indices, torch.from_numpy(data["keypoints"].reshape(-1).astype(np.int64) - 1)
    )
    tri0 = data["tri"].astype(np.int64) - 1
    assert int(model.faces.min()) == 0 and int(model.faces.max()) == n - 1
    assert {frozenset(t) for t in model.faces.tolist()} == {frozenset(t) for t in tri0.tolist()}
    # Winding flipped to counter-clockwise: normals of the face point toward +z (the camera).
    v = model.mean_shape.double()
    f = model.faces
    normals = torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert float(normals[:, 2].sum()) > 0
    assert model.albedo is not None
    assert torch.allclose(model.albedo, torch.from_numpy(data["meantex"].reshape(n, 3) / 255.0).float())
    front = np.zeros(n, dtype=bool)
    front[data["frontmask2_idx"].reshape(-1).astype(np.int64) - 1] = True
    assert torch.equal(model.face_region, torch.from_numpy(front & (data["skinmask"].reshape(-1) > 0)))
    assert model.eye_region[model.landmark_indices[36:48]].all()
    assert model.mouth_region[model.landmark_indices[48:60]].all()


def test_world_frame_similarity_matches_the_procedural_face(
    synthetic: tuple[Path, dict[str, np.ndarray]],
) -> None:
    path, data = synthetic
    bfm, proc = load_bfm(path), load_procedural_model()
    bfm_lm = bfm.mean_shape[bfm.landmark_indices].double()
    proc_lm = proc.mean_shape[proc.landmark_indices].double()
    assert torch.isclose((bfm_lm[0] - bfm_lm[16]).norm(), (proc_lm[0] - proc_lm[16]).norm(), atol=1e-5)
    assert torch.allclose(bfm_lm.mean(0), proc_lm.mean(0), atol=1e-5)
    # One uniform scale: the bases follow the interleaved xyz layout and the same factor.
    raw = data["meanshape"].reshape(-1, 3)
    keypoints = data["keypoints"].reshape(-1).astype(np.int64) - 1
    scale = float((proc_lm[0] - proc_lm[16]).norm()) / float(
        np.linalg.norm(raw[keypoints[0]] - raw[keypoints[16]])
    )
    vertex = 37
    expected = scale * data["idBase"][3 * vertex : 3 * vertex + 3, 5]
    assert np.allclose(bfm.id_basis[5, vertex].numpy(), expected, atol=1e-6)
    expected_exp = scale * data["exBase"][3 * vertex : 3 * vertex + 3, 63]
    assert np.allclose(bfm.exp_basis[63, vertex].numpy(), expected_exp, atol=1e-6)
    assert bfm.mean_shape.abs().max() < 0.5
    assert load_morphable_model(str(path)).num_vertices == bfm.num_vertices


def test_bfm_renders_with_albedo(synthetic: tuple[Path, dict[str, np.ndarray]]) -> None:
    model = load_bfm(synthetic[0])
    alpha, beta = model.zero_coefficients(1)
    image, mask = render_mesh(model, model.vertices(alpha, beta), EXPRESSION_CAMERA, 64, shading="albedo")
    assert image.shape == (1, 3, 64, 64) and 0.05 < float(mask.mean()) < 0.7


def test_bad_files_raise_typed_errors(tmp_path: Path, synthetic: tuple[Path, dict[str, np.ndarray]]) -> None:
    _, data = synthetic
    with pytest.raises(MorphableModelError) as err:
        load_bfm(tmp_path / "absent.mat")
    assert err.value.code == "bfm_file_missing"
    (tmp_path / "garbage.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(MorphableModelError) as err:
        load_bfm(tmp_path / "garbage.mat")
    assert err.value.code == "bfm_unreadable"
    savemat(str(tmp_path / "nokeys.mat"), {k: v for k, v in data.items() if k != "exBase"})
    with pytest.raises(MorphableModelError) as err:
        load_bfm(tmp_path / "nokeys.mat")
    assert err.value.code == "bfm_missing_key"
    zero_based = dict(data, tri=data["tri"] - 1)
    savemat(str(tmp_path / "zero.mat"), zero_based)
    with pytest.raises(MorphableModelError) as err:
        load_bfm(tmp_path / "zero.mat")
    assert err.value.code == "bfm_bad_index"
    short = dict(data, idBase=data["idBase"][:-3])
    savemat(str(tmp_path / "short.mat"), short)
    with pytest.raises(MorphableModelError) as err:
        load_bfm(tmp_path / "short.mat")
    assert err.value.code == "bfm_bad_shape"
