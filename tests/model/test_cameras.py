import math

import pytest
import torch

from shared.model import cameras


def test_frontal_camera_axes_follow_the_documented_convention() -> None:
    cam2world, k = cameras.from_vector(cameras.frontal_camera())
    assert torch.allclose(cam2world[:3, 3], torch.tensor([0.0, 0.0, cameras.DEFAULT_RADIUS]), atol=1e-6)
    # OpenCV camera axes of a frontal camera are world (+x, -y, -z).
    assert torch.allclose(cam2world[:3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0])), atol=1e-6)
    assert math.isclose(k[0, 0].item(), 2985.29 / 700, rel_tol=1e-6)
    assert math.isclose(cameras.fov_degrees(), 13.37, abs_tol=0.01)
    assert math.isclose(cameras.focal_from_fov(cameras.fov_degrees()), k[0, 0].item(), rel_tol=1e-6)


def test_vector_round_trip_and_projection_of_origin_hits_image_centre() -> None:
    cams = cameras.spherical_camera(torch.tensor([0.3, -0.2]), torch.tensor([0.1, 0.2]))
    assert cams.shape == (2, 25)
    cam2world, k = cameras.from_vector(cams)
    assert torch.allclose(cameras.to_vector(cam2world, k[0]), cams)
    uv, depth = cameras.project_points(torch.zeros(2, 1, 3), cams)
    assert torch.allclose(uv, torch.full_like(uv, 0.5), atol=1e-5)
    assert torch.allclose(depth, torch.full_like(depth, cameras.DEFAULT_RADIUS), atol=1e-5)


def test_world_up_projects_to_top_of_image_and_subject_left_to_image_right() -> None:
    cam = cameras.frontal_camera().unsqueeze(0)
    uv, _ = cameras.project_points(torch.tensor([[[0.0, 0.3, 0.0], [0.3, 0.0, 0.0]]]), cam)
    assert uv[0, 0, 1] < 0.5  # up is toward row 0
    assert uv[0, 1, 0] > 0.5  # +x is toward the right of the image


def test_rays_pass_through_projected_pixels() -> None:
    cams = cameras.spherical_camera(torch.tensor([0.4]), torch.tensor([-0.1]))
    origins, dirs = cameras.generate_rays(cams, 8)
    assert origins.shape == dirs.shape == (1, 64, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(1, 64), atol=1e-6)
    points = origins + 2.5 * dirs
    uv, _ = cameras.project_points(points, cams)
    i, j = 5, 2
    assert torch.allclose(uv[0, i * 8 + j], torch.tensor([(j + 0.5) / 8, (i + 0.5) / 8]), atol=1e-5)


def test_head_pose_inverts_to_camera_and_is_rescaled_to_the_radius() -> None:
    cam = cameras.spherical_camera(0.25, 0.1)
    rot, trans = cameras.world_to_camera(cam)
    recovered = cameras.camera_from_head_pose(rot, trans * 1.7)
    assert torch.allclose(recovered, cam, atol=1e-5)


def test_orbit_starts_below_the_look_at_point_and_swings_toward_the_subjects_left_first() -> None:
    path = cameras.orbit_path(240)
    centres = cameras.from_vector(path)[0][:, :3, 3]
    look_at = torch.tensor(cameras.ORBIT_LOOK_AT)
    assert path.shape == (240, 25)
    # EG3D's demo orbit: pitch offset - amplitude at frame 0 (below), yaw +amplitude a quarter later.
    assert centres[0, 1] < look_at[1] and centres[120, 1] > look_at[1]
    assert centres[60, 0] > 0 > centres[180, 0]
    expected = cameras.spherical_camera(0.35, 0.05, target=cameras.ORBIT_LOOK_AT)
    assert torch.allclose(path[60], expected, atol=1e-5)
    radii = (centres - torch.tensor(cameras.ORBIT_LOOK_AT)).norm(dim=-1)
    assert torch.allclose(radii, torch.full_like(radii, cameras.DEFAULT_RADIUS), atol=1e-4)


def test_camera_yaw_is_the_opposite_of_the_face_fitters_head_yaw() -> None:
    from shared.face.fit import head_pose_angles, pose_from_angles

    for degrees in (20.0, -12.5):
        # A head turned by +yaw (face toward +x, the fitter's convention) seen from the front...
        rotation, translation = pose_from_angles(degrees, 0.0, 0.0)
        seen = cameras.camera_from_head_pose(rotation.float(), translation.float())
        # ... is the still head seen from a camera at yaw -yaw, and not at +yaw.
        assert torch.allclose(seen, cameras.spherical_camera(math.radians(-degrees), 0.0), atol=1e-5)
        assert not torch.allclose(seen, cameras.spherical_camera(math.radians(degrees), 0.0), atol=1e-3)
        # The fitter reads a spherical camera's yaw back with the opposite sign.
        rot, _ = cameras.world_to_camera(cameras.spherical_camera(math.radians(degrees), 0.0))
        assert head_pose_angles(rot.double())[0].item() == pytest.approx(-degrees, abs=1e-4)
    # An orbit frame at camera yaw +a therefore looks like the head turned by -a (toward its right).
    rot, _ = cameras.world_to_camera(cameras.orbit_path(240, pitch_amplitude=0.0, pitch_offset=0.0)[60:61])
    assert head_pose_angles(rot.double())[0, 0].item() == pytest.approx(-math.degrees(0.35), abs=1e-3)
