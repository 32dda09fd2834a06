"""Camera conventions of the whole project (the one place that owns them).

World frame (the tri-plane / head frame, as in EG3D)::

            +y (up)
             |
             |
             o------ +x  (the subject's left, i.e. image right in a frontal view)
            /
           /
         +z  (out of the face, toward a frontal camera)

The head sits at about the origin inside the cube [-0.5, 0.5]^3 that the tri-planes cover.
A frontal camera sits at (0, 0, 2.7) and looks toward -z.

Camera frame (OpenCV): +x right, +y down, +z forward (along the viewing direction).
For the frontal camera the camera axes are world (+x, -y, -z).

A camera is an **EG3D 25-vector**: the 16 entries of the row-major camera-to-world 4x4 matrix
(OpenCV camera axes) followed by the 9 entries of the row-major 3x3 intrinsics normalised by the
image size (fx, fy in image widths; cx = cy = 0.5 for a centred principal point). Normalised
intrinsics make one camera valid at every render resolution.

Pixel (row i, col j) of an H x W render is the ray through the pixel centre
``u = (j + 0.5) / W, v = (i + 0.5) / H``; rays are flattened row-major (ray index ``i * W + j``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# fx = fy = 2985.29 / 700 in the released preprocessing. EG3D calls this "FOV 18.84 degrees" because its
# fov-to-focal formula carries an extra sqrt(2); the true full field of view is ~13.37 degrees.
DEFAULT_FOCAL = 2985.29 / 700.0
DEFAULT_RADIUS = 2.7
# The authors' demo orbits around a point slightly in front of the head centre.
ORBIT_LOOK_AT = (0.0, 0.0, 0.2)

# OpenCV camera axes expressed in a camera that looks along world -z with world +y up.
_OPENCV_FROM_OPENGL = torch.diag(torch.tensor([1.0, -1.0, -1.0]))


def intrinsics(focal: float = DEFAULT_FOCAL, center: float = 0.5) -> torch.Tensor:
    """Normalised 3x3 intrinsics (focal length in image widths)."""
    return torch.tensor([[focal, 0.0, center], [0.0, focal, center], [0.0, 0.0, 1.0]])


def fov_degrees(focal: float = DEFAULT_FOCAL) -> float:
    """True full field of view of a normalised focal length."""
    return math.degrees(2.0 * math.atan(0.5 / focal))


def focal_from_fov(fov_deg: float) -> float:
    return 0.5 / math.tan(math.radians(fov_deg) / 2.0)


def look_at(
    position: torch.Tensor | Sequence[float],
    target: torch.Tensor | Sequence[float] = (0.0, 0.0, 0.0),
    up: Sequence[float] = (0.0, 1.0, 0.0),
) -> torch.Tensor:
    """Camera-to-world (..., 4, 4) in OpenCV axes for cameras at ``position`` looking at ``target``."""
    position = torch.as_tensor(position, dtype=torch.float32)
    target = torch.as_tensor(target, dtype=torch.float32).expand_as(position)
    up_vec = torch.as_tensor(up, dtype=torch.float32).expand_as(position)
    forward = torch.nn.functional.normalize(target - position, dim=-1)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up_vec, dim=-1), dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    cam2world = torch.zeros(*position.shape[:-1], 4, 4)
    cam2world[..., :3, 0] = right
    cam2world[..., :3, 1] = down
    cam2world[..., :3, 2] = forward
    cam2world[..., :3, 3] = position
    cam2world[..., 3, 3] = 1.0
    return cam2world


def to_vector(cam2world: torch.Tensor, intrinsics_3x3: torch.Tensor | None = None) -> torch.Tensor:
    """Pack (..., 4, 4) camera-to-world (+ normalised intrinsics) into EG3D (..., 25) vectors."""
    if intrinsics_3x3 is None:
        intrinsics_3x3 = intrinsics()
    k = intrinsics_3x3.to(cam2world).expand(*cam2world.shape[:-2], 3, 3)
    return torch.cat([cam2world.reshape(*cam2world.shape[:-2], 16), k.reshape(*k.shape[:-2], 9)], dim=-1)


def from_vector(cameras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack EG3D (..., 25) vectors into (cam2world (..., 4, 4), intrinsics (..., 3, 3))."""
    if cameras.shape[-1] != 25:
        raise ValueError(f"EG3D camera vectors have 25 entries, got shape {tuple(cameras.shape)}")
    lead = cameras.shape[:-1]
    return cameras[..., :16].reshape(*lead, 4, 4), cameras[..., 16:].reshape(*lead, 3, 3)


def spherical_camera(
    yaw: float | torch.Tensor = 0.0,
    pitch: float | torch.Tensor = 0.0,
    radius: float = DEFAULT_RADIUS,
    target: Sequence[float] = (0.0, 0.0, 0.0),
    focal: float = DEFAULT_FOCAL,
) -> torch.Tensor:
    """EG3D vector(s) of camera(s) on a sphere around ``target``.

    yaw = 0, pitch = 0 is the frontal camera. Positive yaw moves the camera toward world +x (the
    subject's left), positive pitch moves it up (toward world +y). Angles in radians.
    """
    yaw_t = torch.as_tensor(yaw, dtype=torch.float32)
    pitch_t = torch.as_tensor(pitch, dtype=torch.float32)
    yaw_t, pitch_t = torch.broadcast_tensors(yaw_t, pitch_t)
    offset = torch.stack(
        [
            radius * torch.cos(pitch_t) * torch.sin(yaw_t),
            radius * torch.sin(pitch_t),
            radius * torch.cos(pitch_t) * torch.cos(yaw_t),
        ],
        dim=-1,
    )
    target_t = torch.as_tensor(target, dtype=torch.float32)
    return to_vector(look_at(target_t + offset, target_t), intrinsics(focal))


def frontal_camera(radius: float = DEFAULT_RADIUS, focal: float = DEFAULT_FOCAL) -> torch.Tensor:
    """The canonical frontal camera: at (0, 0, radius), looking at the origin. Shape (25,)."""
    return spherical_camera(0.0, 0.0, radius=radius, focal=focal)


def orbit_path(
    num_frames: int,
    *,
    period: int = 240,
    yaw_amplitude: float = 0.35,
    pitch_amplitude: float = 0.25,
    pitch_offset: float = 0.05,
    radius: float = DEFAULT_RADIUS,
    target: Sequence[float] = ORBIT_LOOK_AT,
    focal: float = DEFAULT_FOCAL,
) -> torch.Tensor:
    """(num_frames, 25) cameras along the demo's elliptic orbit (yaw sine, pitch cosine).

    Camera angles in ``spherical_camera``'s convention: frame 0 is below the look-at point
    (pitch ``pitch_offset - pitch_amplitude``), then the camera swings toward world +x (the
    subject's left) first, as EG3D's ``gen_videos`` orbit does
    (``LookAtPoseSampler.sample(pi/2 + yaw_range * sin(t), pi/2 - 0.05 + pitch_range * cos(t))``
    puts the camera at x = r sin(phi) cos(pi - theta) > 0 for sin(t) > 0, below for cos(t) > 0).

    Camera yaw is not head yaw: a camera at yaw +a shows exactly what the frontal camera shows of
    a head turned by -a in the face fitter's convention (``shared.face.fit.head_pose_angles``:
    positive yaw turns the FACE toward +x). Both are right; the orbit is not mirrored, the two
    angles are opposite quantities (tests/model/test_cameras.py pins both facts)."""
    phase = 2.0 * math.pi * torch.arange(num_frames, dtype=torch.float32) / period
    yaw = yaw_amplitude * torch.sin(phase)
    pitch = pitch_offset - pitch_amplitude * torch.cos(phase)
    return spherical_camera(yaw, pitch, radius=radius, target=target, focal=focal)


def camera_from_head_pose(
    rotation: torch.Tensor,
    translation: torch.Tensor,
    *,
    radius: float | None = DEFAULT_RADIUS,
    focal: float = DEFAULT_FOCAL,
) -> torch.Tensor:
    """EG3D vector(s) from a head pose fitted in OpenCV camera coordinates.

    ``x_cam = rotation @ x_world + translation`` maps the head (world) frame into the camera.
    The camera-to-world is its inverse. With ``radius`` set, the camera centre is rescaled to that
    distance from the head, as EG3D's preprocessing does, so all cameras frame the head alike.
    """
    rotation = torch.as_tensor(rotation, dtype=torch.float32)
    translation = torch.as_tensor(translation, dtype=torch.float32)
    rot_c2w = rotation.transpose(-1, -2)
    centre = -(rot_c2w @ translation.unsqueeze(-1)).squeeze(-1)
    if radius is not None:
        centre = centre * (radius / centre.norm(dim=-1, keepdim=True).clamp_min(1e-8))
    cam2world = torch.zeros(*rotation.shape[:-2], 4, 4)
    cam2world[..., :3, :3] = rot_c2w
    cam2world[..., :3, 3] = centre
    cam2world[..., 3, 3] = 1.0
    return to_vector(cam2world, intrinsics(focal))


def world_to_camera(cameras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotation (..., 3, 3), translation (..., 3)) with x_cam = R x_world + t."""
    cam2world, _ = from_vector(cameras)
    rot = cam2world[..., :3, :3].transpose(-1, -2)
    trans = -(rot @ cam2world[..., :3, 3:4]).squeeze(-1)
    return rot, trans


def project_points(points: torch.Tensor, cameras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points (B, N, 3) with cameras (B, 25).

    Returns normalised image coordinates (B, N, 2) in [0, 1] for visible points (u right, v down)
    and the camera-space depth (B, N).
    """
    rot, trans = world_to_camera(cameras)
    _, k = from_vector(cameras)
    cam = points @ rot.transpose(-1, -2) + trans.unsqueeze(-2)
    depth = cam[..., 2]
    xy = cam[..., :2] / depth.unsqueeze(-1).clamp_min(1e-8)
    u = k[..., 0, 0].unsqueeze(-1) * xy[..., 0] + k[..., 0, 2].unsqueeze(-1)
    v = k[..., 1, 1].unsqueeze(-1) * xy[..., 1] + k[..., 1, 2].unsqueeze(-1)
    return torch.stack([u, v], dim=-1), depth


def generate_rays(
    cameras: torch.Tensor, resolution: int | tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixel centres: origins and unit directions, each (B, H*W, 3), row-major."""
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    cam2world, k = from_vector(cameras)
    device, dtype = cameras.device, cameras.dtype
    v = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    u = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    uu, vv = uu.reshape(1, -1), vv.reshape(1, -1)
    fx, fy = k[:, 0, 0:1], k[:, 1, 1:2]
    cx, cy = k[:, 0, 2:3], k[:, 1, 2:3]
    skew = k[:, 0, 1:2]
    y_cam = (vv - cy) / fy
    x_cam = (uu - cx - skew * y_cam) / fx
    dirs_cam = torch.stack([x_cam, y_cam, torch.ones_like(x_cam)], dim=-1)
    dirs = torch.nn.functional.normalize(dirs_cam @ cam2world[:, :3, :3].transpose(-1, -2), dim=-1)
    origins = cam2world[:, :3, 3].unsqueeze(1).expand_as(dirs)
    return origins, dirs
