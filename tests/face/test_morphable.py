import pickle

import numpy as np
import pytest
import torch

from shared.face import procedural_head
from shared.face.morphable import (
    MorphableModel,
    MorphableModelError,
    load_morphable_model,
    load_procedural_model,
    read_procedural_arrays,
    vertex_normals,
)
from shared.model import cameras

CONTRACT_EXPRESSIONS = (
    "jaw_open",
    "smile_left",
    "smile_right",
    "lip_pucker",
    "mouth_stretch",
    "blink_left",
    "blink_right",
    "brow_raise_left",
    "brow_raise_right",
    "brow_frown",
)


@pytest.fixture(scope="module")
def model() -> MorphableModel:
    return load_procedural_model()


def _landmarks_with(model: MorphableModel, name: str | None = None, amount: float = 1.0) -> torch.Tensor:
    alpha, beta = model.zero_coefficients(1)
    if name is not None:
        beta[0, model.expression_index(name)] = amount
    return model.landmarks(alpha, beta)[0]


def test_model_has_contract_shapes_and_names(model: MorphableModel) -> None:
    v = model.num_vertices
    assert 3000 <= v <= 6500
    assert model.mean_shape.shape == (v, 3) and model.mean_shape.dtype == torch.float32
    assert model.id_basis.shape == (model.num_identity, v, 3) and 40 <= model.num_identity <= 80
    assert model.exp_basis.shape == (model.num_expression, v, 3)
    assert set(CONTRACT_EXPRESSIONS) <= set(model.expression_names)
    assert model.faces.dtype == torch.int64 and model.landmark_indices.shape == (68,)
    assert model.albedo is not None and model.albedo.shape == (v, 3)
    assert float(model.albedo.min()) >= 0.0 and float(model.albedo.max()) <= 1.0
    for mask in (model.face_region, model.eye_region, model.mouth_region):
        assert mask.dtype == torch.bool and mask.shape == (v,)
    assert load_morphable_model(None) is model and load_morphable_model("procedural") is model


def test_mesh_is_closed_and_counter_clockwise(model: MorphableModel) -> None:
    faces = model.faces.numpy()
    verts = model.mean_shape.double().numpy()
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert np.all(counts == 2)  # watertight: every edge shared by exactly two triangles
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    signed_volume = np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() / 6.0
    assert signed_volume > 0.01  # outward (CCW) orientation, a head-sized volume
    normals = vertex_normals(model.mean_shape.unsqueeze(0), model.faces)[0]
    nose_tip = model.landmark_indices[30]
    assert normals[nose_tip, 2] > 0.8


def test_identity_basis_is_orthogonal_and_gives_plausible_heads(model: MorphableModel) -> None:
    flat = model.id_basis.reshape(model.num_identity, -1).double()
    gram = flat @ flat.T
    std = gram.diag().sqrt()
    correlation = gram / (std[:, None] * std[None, :])
    assert torch.allclose(correlation, torch.eye(model.num_identity, dtype=torch.float64), atol=1e-3)
    assert torch.all(std > 0)
    generator = torch.Generator().manual_seed(0)
    alpha = torch.randn(16, model.num_identity, generator=generator)
    verts = model.vertices(alpha, torch.zeros(16, model.num_expression))
    offsets = (verts - model.mean_shape).norm(dim=-1)
    rms = offsets.pow(2).mean(dim=1).sqrt()
    assert torch.all(rms > 0.003) and torch.all(rms < 0.03)  # visibly different, still heads
    assert verts.abs().max() < 0.5  # inside the tri-plane cube
    lm = model.landmarks(alpha, torch.zeros(16, model.num_expression))
    widths = (lm[:, 0] - lm[:, 16]).norm(dim=-1)
    assert torch.all(widths > 0.24) and torch.all(widths < 0.38)


def test_mean_shape_sits_in_the_world_frame(model: MorphableModel) -> None:
    verts = model.mean_shape
    assert verts.abs().max() < 0.5
    lm = _landmarks_with(model)
    face_width = (lm[0] - lm[16]).norm()
    assert 0.28 < face_width < 0.35
    chin_to_brow = lm[17:27, 1].mean() - lm[8, 1]
    assert 0.22 < chin_to_brow < 0.32
    assert lm[:, :2].mean(dim=0).abs().max() < 0.06  # face centred near the origin
    assert lm[30, 2] > verts[:, 2].max() - 0.005  # the nose tip is (about) the frontmost point, +z


def test_landmark_layout_is_ibug_in_a_frontal_view(model: MorphableModel) -> None:
    lm = _landmarks_with(model)
    uv, _ = cameras.project_points(lm.unsqueeze(0), cameras.frontal_camera().unsqueeze(0))
    u, v = uv[0, :, 0], uv[0, :, 1]  # v grows downward
    eye_v = v[36:48].mean()
    # Subject's right eye (36-41) is on the image left, the left eye on the image right.
    assert u[36:42].max() < 0.5 < u[42:48].min()
    assert u[36] < u[39] < u[42] < u[45]
    # Symmetry of mirrored pairs.
    assert abs((u[36] - 0.5) + (u[45] - 0.5)) < 0.01 and abs(v[36] - v[45]) < 0.01
    # Jaw: from the right ear around the chin to the left ear, all below the eyes except the ends.
    assert torch.all(u[1:17] > u[:16] - 1e-6) or torch.all(torch.diff(u[:9]) > 0)
    assert torch.all(v[3:14] > eye_v) and torch.argmax(v) == 8
    assert torch.all(v[17:27] < eye_v)  # brows above the eyes
    assert v[27] < v[30] < v[33]  # nose bridge to tip to base
    assert v[33] < v[51] < v[62] <= v[66] < v[57] < v[8]  # mouth below nose, above chin
    assert u[48] < u[51] < u[54] and abs(u[51] - 0.5) < 0.01
    assert u[31] < u[33] < u[35]


def test_regions_cover_their_landmarks(model: MorphableModel) -> None:
    idx = model.landmark_indices
    assert model.eye_region[idx[36:48]].all()
    assert model.mouth_region[idx[48:68]].all()
    assert model.face_region[idx[17:68]].all()
    assert not model.eye_region[idx[48:68]].any() and not model.mouth_region[idx[36:48]].any()
    # The face, not the whole head: a minority of the surface area.
    verts, faces = model.mean_shape.double(), model.faces
    areas = torch.linalg.cross(
        verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]]
    ).norm(dim=-1)
    in_face = model.face_region[faces].all(dim=1)
    assert 0.1 < areas[in_face].sum() / areas.sum() < 0.4


def test_jaw_open_lowers_the_chin_and_parts_the_lips(model: MorphableModel) -> None:
    rest, opened = _landmarks_with(model), _landmarks_with(model, "jaw_open")
    chin_drop = rest[8, 1] - opened[8, 1]
    assert 0.03 <= chin_drop <= 0.06
    assert (rest[62] - rest[66]).norm() < 1e-6  # closed at rest
    assert opened[62, 1] - opened[66, 1] > 0.03
    assert torch.allclose(opened[17:27], rest[17:27])  # brows untouched


def test_smiles_pull_their_own_corner_up_and_out(model: MorphableModel) -> None:
    rest = _landmarks_with(model)
    left = _landmarks_with(model, "smile_left")  # subject's left corner = iBUG 54, world +x
    right = _landmarks_with(model, "smile_right")
    assert left[54, 1] - rest[54, 1] > 0.008 and left[54, 0] - rest[54, 0] > 0.005
    assert abs(left[48, 1] - rest[48, 1]) < 0.002
    assert right[48, 1] - rest[48, 1] > 0.008 and right[48, 0] - rest[48, 0] < -0.005


def test_pucker_stretch_frown_and_sideways_mouth(model: MorphableModel) -> None:
    rest = _landmarks_with(model)
    pucker = _landmarks_with(model, "lip_pucker")
    assert pucker[51, 2] - rest[51, 2] > 0.008 and pucker[57, 2] - rest[57, 2] > 0.006
    assert (pucker[54, 0] - pucker[48, 0]) < (rest[54, 0] - rest[48, 0]) - 0.01
    stretch = _landmarks_with(model, "mouth_stretch")
    assert (stretch[54, 0] - stretch[48, 0]) > (rest[54, 0] - rest[48, 0]) + 0.01
    frown = _landmarks_with(model, "mouth_frown")
    assert rest[48, 1] - frown[48, 1] > 0.005 and rest[54, 1] - frown[54, 1] > 0.005
    left = _landmarks_with(model, "mouth_left")
    assert (left[48:68, 0] - rest[48:68, 0]).mean() > 0.005


def _eye_opening(lm: torch.Tensor, side: str) -> torch.Tensor:
    pairs = ((43, 47), (44, 46)) if side == "left" else ((37, 41), (38, 40))
    return sum((lm[a] - lm[b]).norm() for a, b in pairs) / 2


def test_blinks_close_their_own_eye(model: MorphableModel) -> None:
    rest = _landmarks_with(model)
    for side, other in (("left", "right"), ("right", "left")):
        closed = _landmarks_with(model, f"blink_{side}")
        assert _eye_opening(rest, side) > 0.01
        assert _eye_opening(closed, side) < 0.15 * _eye_opening(rest, side)
        assert torch.isclose(_eye_opening(closed, other), _eye_opening(rest, other))
        squint = _landmarks_with(model, f"squint_{side}")
        assert 0.3 * _eye_opening(rest, side) < _eye_opening(squint, side) < 0.9 * _eye_opening(rest, side)


def test_brow_raise_and_frown(model: MorphableModel) -> None:
    rest = _landmarks_with(model)
    raise_left = _landmarks_with(model, "brow_raise_left")  # subject's left brow = 22-26
    assert torch.all(raise_left[22:27, 1] - rest[22:27, 1] > 0.005)
    assert torch.allclose(raise_left[17:22], rest[17:22])
    raise_right = _landmarks_with(model, "brow_raise_right")
    assert torch.all(raise_right[17:22, 1] - rest[17:22, 1] > 0.005)
    frown = _landmarks_with(model, "brow_frown")
    assert rest[21, 1] - frown[21, 1] > 0.003 and rest[22, 1] - frown[22, 1] > 0.003
    assert (frown[22, 0] - frown[21, 0]) < (rest[22, 0] - rest[21, 0]) - 0.004  # inner brows converge


def test_expressions_are_local_and_cheek_puff_goes_outward(model: MorphableModel) -> None:
    top = model.mean_shape[:, 1] > 0.2
    back = model.mean_shape[:, 2] < -0.05
    assert model.exp_basis[:, top | back].abs().max() < 1e-6
    blink_left = model.exp_basis[model.expression_index("blink_left")]
    assert blink_left[model.mean_shape[:, 0] < 0].abs().max() == 0
    puff = model.exp_basis[model.expression_index("cheek_puff")]
    moved = puff.norm(dim=-1) > 1e-3
    outward = torch.stack(
        [model.mean_shape[:, 0], torch.zeros(model.num_vertices), model.mean_shape[:, 2]], -1
    )
    assert moved.sum() > 20 and torch.all((puff[moved] * outward[moved]).sum(-1) > 0)


def test_vertices_and_landmarks_agree_and_reject_bad_coefficients(model: MorphableModel) -> None:
    generator = torch.Generator().manual_seed(1)
    alpha = torch.randn(3, model.num_identity, generator=generator)
    beta = torch.rand(3, model.num_expression, generator=generator)
    verts = model.vertices(alpha, beta)
    assert torch.allclose(model.landmarks(alpha, beta), verts[:, model.landmark_indices], atol=1e-6)
    with pytest.raises(MorphableModelError) as err:
        model.vertices(alpha[:, :5], beta)
    assert err.value.code == "bad_coefficients"
    with pytest.raises(MorphableModelError) as err:
        model.expression_index("wink")
    assert err.value.code == "unknown_expression"
    copy = pickle.loads(pickle.dumps(err.value))
    assert copy.code == "unknown_expression" and str(copy) == str(err.value)


def test_regenerating_the_asset_reproduces_the_shipped_arrays() -> None:
    shipped = read_procedural_arrays()
    rebuilt = procedural_head.build_procedural_head()
    assert sorted(shipped) == sorted(rebuilt)
    mismatched = [k for k in rebuilt if not np.array_equal(shipped[k], rebuilt[k])]
    assert not mismatched, f"regenerate with `python -m shared.face.procedural_head`: {mismatched} differ"
    assert procedural_head.array_digest(shipped) == procedural_head.array_digest(rebuilt)
    assert procedural_head.ASSET_PATH.stat().st_size < 2 * 1024 * 1024
