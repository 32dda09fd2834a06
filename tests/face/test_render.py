import numpy as np
import pytest
import torch

from shared.face import rasterizer as rasterizer_module
from shared.face.morphable import MorphableModel, load_procedural_model, vertex_normals
from shared.face.rasterizer import Fragments, MeshRasterizer, RasterizerError
from shared.face.render import (
    AMBIENT,
    DIFFUSE,
    EXPRESSION_CAMERA,
    LIGHT_DIRECTION_CAMERA,
    SHAPE_ALBEDO,
    RenderError,
    render_expression,
    render_expression_change,
    render_fragments,
    render_mesh,
    render_neutral,
    shade,
)
from shared.model import cameras

FRONTAL = cameras.frontal_camera().unsqueeze(0)
FOCAL = cameras.DEFAULT_FOCAL
RADIUS = cameras.DEFAULT_RADIUS


def _world_from_pixel(col: float, row: float, size: int, z: float = 0.0) -> list[float]:
    """World point at height z that the frontal camera sees at continuous pixel (col, row)."""
    depth = RADIUS - z
    return [(col / size - 0.5) * depth / FOCAL, -(row / size - 0.5) * depth / FOCAL, z]


def _quad(size: int, left: float, top: float, right: float, bottom: float, z: float) -> torch.Tensor:
    corners = [(left, top), (right, top), (right, bottom), (left, bottom)]
    return torch.tensor([_world_from_pixel(c, r, size, z) for c, r in corners])


# Two counter-clockwise triangles (seen from the frontal camera) of a quad given as TL, TR, BR, BL.
QUAD_FACES = torch.tensor([[0, 3, 2], [0, 2, 1]])


@pytest.fixture(scope="module")
def model() -> MorphableModel:
    return load_procedural_model()


def test_quad_covers_exactly_the_pixels_whose_centres_it_contains() -> None:
    verts = _quad(16, 4.0, 2.0, 12.0, 10.0, 0.0).unsqueeze(0)
    frags = MeshRasterizer().rasterize(verts, QUAD_FACES, FRONTAL, 16)
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[2:10, 4:12] = True
    assert torch.equal(frags.mask[0], expected)
    assert torch.allclose(frags.depth[0][expected], torch.full((64,), RADIUS), atol=1e-5)
    assert torch.all(frags.depth[0][~expected] == 0) and torch.all(frags.face_index[0][~expected] == -1)


def test_triangle_coverage_and_backface_culling() -> None:
    size = 16
    verts = torch.tensor(
        [_world_from_pixel(2, 2, size), _world_from_pixel(2, 14.3, size), _world_from_pixel(14.3, 2, size)]
    )
    ccw = torch.tensor([[0, 1, 2]])
    frags = MeshRasterizer().rasterize(verts.unsqueeze(0), ccw, FRONTAL, size)
    rows, cols = np.mgrid[0:size, 0:size]
    expected = (cols >= 2) & (rows >= 2) & ((cols + 0.5) + (rows + 0.5) < 16.3)
    assert np.array_equal(frags.mask[0].numpy(), expected)
    cw = ccw[:, [0, 2, 1]]
    assert not MeshRasterizer().rasterize(verts.unsqueeze(0), cw, FRONTAL, size).mask.any()
    both = MeshRasterizer(cull_backfaces=False).rasterize(verts.unsqueeze(0), cw, FRONTAL, size)
    assert np.array_equal(both.mask[0].numpy(), expected)


@pytest.mark.parametrize("near_first", [True, False])
def test_z_buffer_keeps_the_nearer_of_two_overlapping_quads(near_first: bool) -> None:
    near = _quad(16, 2.0, 2.0, 10.0, 10.0, 0.1)
    far = _quad(16, 6.0, 6.0, 14.0, 14.0, -0.1)
    first, second = (near, far) if near_first else (far, near)
    verts = torch.cat([first, second]).unsqueeze(0)
    faces = torch.cat([QUAD_FACES, QUAD_FACES + 4])
    frags = MeshRasterizer().rasterize(verts, faces, FRONTAL, 16)
    near_faces = (0, 1) if near_first else (2, 3)
    overlap = frags.face_index[0, 6:10, 6:10]
    assert all(int(f) in near_faces for f in overlap.reshape(-1))
    assert torch.allclose(frags.depth[0, 6:10, 6:10], torch.full((4, 4), RADIUS - 0.1), atol=1e-5)
    assert torch.allclose(frags.depth[0, 12, 12], torch.tensor(RADIUS + 0.1), atol=1e-5)


def test_barycentrics_are_perspective_correct() -> None:
    size = 32
    # A strongly slanted triangle: interpolated 3D points must lie on each pixel's ray.
    verts = torch.tensor([[-0.25, -0.2, -0.4], [0.25, -0.15, 0.3], [0.0, 0.25, 0.0]]).unsqueeze(0)
    faces = torch.tensor([[0, 1, 2]])
    frags = MeshRasterizer(cull_backfaces=False).rasterize(verts, faces, FRONTAL, size)
    points = frags.interpolate(verts, faces)[0][frags.mask[0]]
    assert points.shape[0] > 50
    uv, depth = cameras.project_points(points.unsqueeze(0), FRONTAL)
    rows, cols = torch.nonzero(frags.mask[0], as_tuple=True)
    centres = torch.stack([(cols + 0.5) / size, (rows + 0.5) / size], dim=-1)
    assert torch.allclose(uv[0], centres, atol=1e-4)
    assert torch.allclose(depth[0], frags.depth[0][frags.mask[0]], atol=1e-4)


def test_batches_and_memory_chunks_match_single_renders(model: MorphableModel) -> None:
    alpha, beta = model.zero_coefficients(2)
    beta[1, model.expression_index("jaw_open")] = 1.0
    verts = model.vertices(alpha, beta)
    cams = cameras.spherical_camera(torch.tensor([0.0, 0.5]), torch.tensor([0.0, -0.2]))
    batched = MeshRasterizer().rasterize(verts, model.faces, cams, 48)
    chunked = MeshRasterizer(max_candidates=500).rasterize(verts, model.faces, cams, 48)
    assert torch.equal(batched.face_index, chunked.face_index)
    for b in range(2):
        single = MeshRasterizer().rasterize(verts[b : b + 1], model.faces, cams[b : b + 1], 48)
        assert torch.equal(single.face_index[0], batched.face_index[b])
        assert torch.allclose(single.barycentric[0], batched.barycentric[b])


def test_frontal_head_render_is_centred_with_plausible_coverage(model: MorphableModel) -> None:
    alpha, beta = model.zero_coefficients(1)
    image = render_expression(model, alpha, beta, 128)
    assert image.shape == (1, 3, 128, 128)
    assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0
    _, mask = render_mesh(model, model.vertices(alpha, beta), EXPRESSION_CAMERA, 128)
    coverage = float(mask.mean())
    assert 0.2 < coverage < 0.6
    rows, cols = torch.nonzero(mask[0, 0], as_tuple=True)
    assert abs(float(cols.float().mean()) + 0.5 - 64) < 3  # left/right symmetric head
    assert abs(float(rows.float().mean()) + 0.5 - 64) < 20
    background = mask[0, 0] == 0
    assert torch.all(image[0][:, background] == -1.0)  # black background
    assert float(image[0][:, ~background].mean()) > -0.6  # the head is lit


def test_expressions_change_the_frontal_render(model: MorphableModel) -> None:
    alpha, beta = model.zero_coefficients(2)
    beta[1, model.expression_index("jaw_open")] = 1.0
    images = render_expression(model, alpha, beta, 128)
    _, masks = render_mesh(model, model.vertices(alpha, beta), EXPRESSION_CAMERA, 128)
    dark = (images[:, 0] < -0.6) & (masks[:, 0] > 0)
    neutral_dark, open_dark = int(dark[0].sum()), int(dark[1].sum())
    assert open_dark > neutral_dark + 30  # the open mouth reads dark, even shape-only
    albedo = render_expression(model, alpha[:1], beta[:1], 64, shading="albedo")
    shape = render_expression(model, alpha[:1], beta[:1], 64)
    assert not torch.allclose(albedo, shape)
    red_minus_blue = albedo[0, 0] - albedo[0, 2]
    assert float(red_minus_blue[shape[0, 0] > -1].mean()) > 0.1  # skin tones


def test_expression_change_marks_what_moved_from_the_neutral_face(model: MorphableModel) -> None:
    """The source-colour gate's target: zero for the neutral face, the mouth and chin (and the
    open mouth's cavity) for jaw_open, the eyes and not the mouth for a blink."""
    alpha, beta = model.zero_coefficients(3)
    alpha[:] = torch.randn(1, model.num_identity, generator=torch.Generator().manual_seed(0)) * 0.5
    beta[1, model.expression_index("jaw_open")] = 0.9
    beta[2, model.expression_index("blink_left")] = 0.9
    beta[2, model.expression_index("blink_right")] = 0.9
    change = render_expression_change(model, alpha, beta, 64, supersample=2)
    assert change.shape == (3, 1, 64, 64) and change.min() >= 0 and change.max() <= 1
    assert change[0].max() == 0
    lms = model.landmarks(alpha, beta)
    pixels, _ = cameras.project_points(lms, EXPRESSION_CAMERA.expand(3, -1))
    pixels = (pixels * 64).long()

    def at(item: int, landmark: int) -> float:
        col, row = pixels[item, landmark].tolist()
        return float(change[item, 0, row - 1 : row + 2, col - 1 : col + 2].max())

    assert at(1, 57) > 0.9 and at(1, 8) > 0.9  # lower lip, chin
    assert at(1, 27) < 0.1  # nose bridge stays
    assert at(2, 37) > 0.5 and at(2, 43) > 0.5  # upper eyelids
    assert at(2, 57) < 0.1
    # The open mouth's cavity (dark between the inner lips) counts as moved wherever it shows.
    (left, top), (right, bottom) = (
        pixels[1, 60:68].min(0).values.tolist(),
        pixels[1, 60:68].max(0).values.tolist(),
    )
    inner = render_expression(model, alpha, beta, 64, supersample=2)[1, 0, top : bottom + 1, left : right + 1]
    dark = inner < -0.6
    assert dark.sum() > 5 and change[1, 0, top : bottom + 1, left : right + 1][dark].min() > 0.9


@pytest.mark.parametrize("yaw", [0.0, 0.6])
def test_neutral_face_mask_lies_inside_the_silhouette(model: MorphableModel, yaw: float) -> None:
    generator = torch.Generator().manual_seed(3)
    alpha = torch.randn(1, model.num_identity, generator=generator)
    cam = cameras.spherical_camera(yaw, 0.1).unsqueeze(0)
    image, face_mask = render_neutral(model, alpha, cam, 96)
    _, silhouette = render_mesh(
        model, model.vertices(*[alpha, torch.zeros(1, model.num_expression)]), cam, 96
    )
    assert face_mask.shape == (1, 1, 96, 96) and set(face_mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(face_mask <= silhouette)
    assert 0.15 * silhouette.sum() < face_mask.sum() < 0.9 * silhouette.sum()
    assert image.shape == (1, 3, 96, 96)


def test_supersampling_keeps_a_binary_mask(model: MorphableModel) -> None:
    alpha, beta = model.zero_coefficients(1)
    image, mask = render_mesh(model, model.vertices(alpha, beta), EXPRESSION_CAMERA, 32, supersample=2)
    assert image.shape == (1, 3, 32, 32) and set(mask.unique().tolist()) == {0.0, 1.0}


def test_bad_inputs_raise_typed_errors(model: MorphableModel) -> None:
    verts = model.mean_shape.unsqueeze(0)
    with pytest.raises(RasterizerError) as err:
        MeshRasterizer().rasterize(verts, model.faces, torch.zeros(1, 16), 32)
    assert err.value.code == "bad_cameras"
    with pytest.raises(RasterizerError) as err:
        MeshRasterizer().rasterize(verts, model.faces + model.num_vertices, FRONTAL, 32)
    assert err.value.code == "bad_faces"
    with pytest.raises(RenderError) as err:
        render_mesh(model, verts, FRONTAL, 32, shading="phong")  # type: ignore[arg-type]
    assert err.value.code == "bad_shading"
    with pytest.raises(RenderError) as err:
        render_mesh(model, verts.expand(2, -1, -1), cameras.spherical_camera(torch.zeros(3)), 32)
    assert err.value.code == "bad_cameras"


def _assert_same_fragments(a: Fragments, b: Fragments) -> None:
    assert torch.equal(a.face_index, b.face_index)
    assert torch.equal(a.barycentric, b.barycentric)
    assert torch.equal(a.depth, b.depth)


@pytest.mark.parametrize("cull", [True, False])
def test_stamps_and_pair_expansion_give_bit_identical_fragments(
    model: MorphableModel, monkeypatch: pytest.MonkeyPatch, cull: bool
) -> None:
    generator = torch.Generator().manual_seed(5)
    alpha = torch.randn(3, model.num_identity, generator=generator)
    beta = torch.rand(3, model.num_expression, generator=generator)
    verts = model.vertices(alpha, beta)
    cams = cameras.spherical_camera(torch.tensor([0.0, 0.7, -0.4]), torch.tensor([0.0, 0.2, -0.3]))
    for size in (64, 200):  # at 200 some boxes exceed the largest stamp: both paths in one call
        stamped = MeshRasterizer(cull_backfaces=cull).rasterize(verts, model.faces, cams, size)
        # Stamps only for 1x1 boxes: everything else through the (triangle, pixel) pair expansion.
        with monkeypatch.context() as patch:
            patch.setattr(rasterizer_module, "_STAMP_SIZES", (1,))
            paired = MeshRasterizer(cull_backfaces=cull).rasterize(verts, model.faces, cams, size)
        _assert_same_fragments(stamped, paired)


def test_large_triangles_use_the_pair_expansion() -> None:
    verts = _quad(64, 3.0, 5.0, 60.0, 40.0, 0.0).unsqueeze(0)
    frags = MeshRasterizer().rasterize(verts, QUAD_FACES, FRONTAL, 64)
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[5:40, 3:60] = True
    assert torch.equal(frags.mask[0], expected)


def test_hits_match_the_dense_fragments(model: MorphableModel) -> None:
    alpha, beta = model.zero_coefficients(2)
    beta[1, model.expression_index("smile_left")] = 1.0
    verts = model.vertices(alpha, beta)
    cams = EXPRESSION_CAMERA.unsqueeze(0).expand(2, -1)
    rasterizer = MeshRasterizer()
    frags = rasterizer.rasterize(verts, model.faces, cams, 48)
    hits = rasterizer.rasterize_hits(verts, model.faces, cams, 48)
    plain = Fragments(frags.face_index, frags.barycentric, frags.depth)  # no cached hits
    for a, b in zip(hits, plain.hits()):
        assert torch.equal(a, b)
    _assert_same_fragments(Fragments.from_hits(hits, (2, 48, 48)), frags)
    assert torch.equal(plain.interpolate(verts, model.faces), frags.interpolate(verts, model.faces))
    assert torch.equal(
        plain.interpolate(model.albedo, model.faces), frags.interpolate(model.albedo, model.faces)
    )


@pytest.mark.parametrize("supersample", [1, 2])
def test_shading_equals_the_interpolated_formula_bit_for_bit(model: MorphableModel, supersample: int) -> None:
    """The fused renderer against the shading written out with Fragments.interpolate."""
    generator = torch.Generator().manual_seed(9)
    alpha = torch.randn(3, model.num_identity, generator=generator)
    beta = torch.rand(3, model.num_expression, generator=generator)
    verts = model.vertices(alpha, beta)
    cams = EXPRESSION_CAMERA.unsqueeze(0).expand(3, -1)
    frags = MeshRasterizer().rasterize(verts, model.faces, cams, 40 * supersample)
    normals = torch.nn.functional.normalize(
        frags.interpolate(vertex_normals(verts, model.faces), model.faces), dim=-1, eps=1e-12
    )
    rot, _ = cameras.world_to_camera(cams)
    light = LIGHT_DIRECTION_CAMERA @ rot
    intensity = AMBIENT + DIFFUSE * (normals * light[:, None, None, :]).sum(-1).clamp_min(0.0)
    intensity = intensity * frags.interpolate(model.vertex_shading.unsqueeze(-1), model.faces)[..., 0]
    mask = frags.mask.unsqueeze(-1)
    for shading in ("shape", "albedo"):
        if shading == "shape":
            colour = SHAPE_ALBEDO * intensity.unsqueeze(-1).expand(*intensity.shape, 3)
        else:
            colour = frags.interpolate(model.albedo, model.faces) * intensity.unsqueeze(-1)
        expected = torch.where(mask, colour.clamp(0, 1) * 2 - 1, torch.full_like(colour, -1.0))
        expected = expected.permute(0, 3, 1, 2)
        assert torch.equal(shade(model, verts, cams, frags, shading), expected)
        image, fragments = render_fragments(model, verts, cams, 40 * supersample, shading=shading)
        assert torch.equal(image, expected)
        _assert_same_fragments(fragments, frags)
        pooled = torch.nn.functional.avg_pool2d(expected, supersample) if supersample > 1 else expected
        assert torch.equal(
            render_expression(model, alpha, beta, 40, shading=shading, supersample=supersample), pooled
        )
        _, silhouette = render_mesh(model, verts, cams, 40, shading=shading, supersample=supersample)
        coverage = frags.mask.unsqueeze(1).float()
        if supersample > 1:
            coverage = torch.nn.functional.avg_pool2d(coverage, supersample)
        assert torch.equal(silhouette, (coverage >= 0.5).float())
