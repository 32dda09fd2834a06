"""Generator of the project's open procedural head model (no licensed data anywhere).

``python -m shared.face.procedural_head`` rebuilds ``shared/face/assets/procedural_head.npz``
deterministically and prints a JSON summary (path, size, array digest) as its last line.

Construction, in world units (y up, face toward +z, see ``shared/model/cameras.py``):

* A latitude/longitude grid over a deformed ellipsoid. Rows and columns are spaced by inverting a
  density that is several times higher over the face than over the back of the head, so most of
  the ~6k vertices describe the face.
* The 68 iBUG landmark targets come from a mean dlib/iBUG template (symmetrised, scaled so the eye
  corners are ~0.19 apart). Facial features (nose, brow ridge, eye sockets, lips, chin) are placed
  at those targets, then each landmark is snapped to the nearest front-facing vertex.
* The mouth line is one grid latitude stored four times (upper lip margin U, inner upper A, inner
  lower B, lower lip margin L). At rest the four rows coincide (zero-area strips, which the
  rasteriser skips); ``jaw_open`` pulls B/L down with the jaw and pushes A/B back, so the mouth
  opens onto a dark recessed strip while the mesh stays watertight.
* The eye opening is the region between an upper and a lower lid curve drawn through the snapped
  lid landmarks; ``blink_*`` collapses it onto the lower curve so the skin above covers the eye.
* Identity: hand-designed smooth variations (width, jaw, nose, ...), low-order spherical
  harmonics along the normal and local bumps, orthonormalised by QR in that order; component k is
  stored as ``q_k * R_kk`` so ``alpha ~ N(0, I)`` gives the designed spread.

Arrays are quantised (int16 with per-component scales, fixed-point positions) so the file stays
small and regenerating it reproduces identical arrays.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

ASSET_PATH = Path(__file__).resolve().parent / "assets" / "procedural_head.npz"
MODEL_NAME = "procedural-v1"

# Grid resolution: regular latitude rows (the mouth row is then stored 4 times) x longitude columns.
NUM_ROWS = 80
NUM_COLUMNS = 72
# Head ellipsoid: half-axes and the height of its centre.
HEAD_HALF_WIDTH = 0.16
HEAD_HALF_HEIGHT = 0.26
HEAD_HALF_DEPTH = 0.20
HEAD_CENTRE_Y = 0.045
# Template scale: world units per unit of the normalised landmark template, and the eye height.
TEMPLATE_SCALE = 0.33
EYE_LEVEL_Y = 0.04

NUM_IDENTITY = 40
POSITION_QUANTUM = 2.0**-20  # fixed-point step of stored positions (~1e-6 world units)

EXPRESSION_NAMES: tuple[str, ...] = (
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
    "mouth_frown",
    "mouth_left",
    "mouth_right",
    "squint_left",
    "squint_right",
    "cheek_puff",
)

# Mean 68-point layout (dlib / iBUG 300-W convention, image coordinates: x right, y down, face box
# roughly [0, 1]^2). It fixes where the features of the procedural head go.
_TEMPLATE = np.array(
    [
        (0.0792, 0.3392),
        (0.0829, 0.4570),
        (0.0968, 0.5756),
        (0.1221, 0.6919),
        (0.1687, 0.8003),
        (0.2398, 0.8957),
        (0.3257, 0.9771),
        (0.4223, 1.0433),
        (0.5318, 1.0608),
        (0.6413, 1.0398),
        (0.7381, 0.9723),
        (0.8244, 0.8896),
        (0.8948, 0.7925),
        (0.9394, 0.6815),
        (0.9611, 0.5622),
        (0.9706, 0.4418),
        (0.9712, 0.3221),
        (0.1638, 0.2492),
        (0.2178, 0.2043),
        (0.2913, 0.1924),
        (0.3675, 0.2036),
        (0.4393, 0.2331),
        (0.5864, 0.2281),
        (0.6602, 0.1959),
        (0.7375, 0.1824),
        (0.8132, 0.1928),
        (0.8708, 0.2353),
        (0.5153, 0.3186),
        (0.5162, 0.3962),
        (0.5171, 0.4738),
        (0.5182, 0.5532),
        (0.4337, 0.6041),
        (0.4755, 0.6208),
        (0.5207, 0.6343),
        (0.5659, 0.6188),
        (0.6071, 0.6016),
        (0.2524, 0.3311),
        (0.2987, 0.3026),
        (0.3557, 0.3030),
        (0.4037, 0.3387),
        (0.3525, 0.3500),
        (0.2968, 0.3505),
        (0.6313, 0.3341),
        (0.6791, 0.2965),
        (0.7360, 0.2947),
        (0.7829, 0.3213),
        (0.7403, 0.3418),
        (0.6850, 0.3437),
        (0.3532, 0.7462),
        (0.4146, 0.7191),
        (0.4777, 0.7068),
        (0.5227, 0.7171),
        (0.5698, 0.7054),
        (0.6352, 0.7157),
        (0.6995, 0.7394),
        (0.6394, 0.8052),
        (0.5764, 0.8354),
        (0.5254, 0.8417),
        (0.4764, 0.8375),
        (0.4138, 0.8100),
        (0.3801, 0.7500),
        (0.4780, 0.7451),
        (0.5234, 0.7489),
        (0.5711, 0.7433),
        (0.6724, 0.7442),
        (0.5725, 0.7766),
        (0.5240, 0.7834),
        (0.4776, 0.7785),
    ],
    dtype=np.float64,
)
# iBUG index of each landmark's mirror image (subject's right <-> left).
_MIRROR = np.array(
    list(range(16, -1, -1))
    + list(range(26, 16, -1))
    + [27, 28, 29, 30, 35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]
    + [64, 63, 62, 61, 60, 67, 66, 65]
)

# Row kinds of the grid (see the module docstring).
ROW_REGULAR, ROW_LIP_UPPER, ROW_INNER_UPPER, ROW_INNER_LOWER, ROW_LIP_LOWER = 0, 1, 2, 3, 4


# ----------------------------------------------------------------------------------------------
# small smooth helpers (numpy, elementwise only so results are reproducible bit for bit)
# ----------------------------------------------------------------------------------------------
def _smoothstep(edge0: float, edge1: float, value: np.ndarray) -> np.ndarray:
    t = np.clip((value - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - cx) / sx) ** 2 - 0.5 * ((y - cy) / sy) ** 2)


def _blob(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Compactly supported bump: 1 at the centre, 0 outside the ellipse (rx, ry)."""
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return _smoothstep(1.0, 0.0, r)


def _density_angles(targets: np.ndarray, lo: float, hi: float, density) -> np.ndarray:
    """Angles at the given cumulative-mass fractions of a sampling density on [lo, hi]."""
    grid = np.linspace(lo, hi, 20001)
    rho = density(grid)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (rho[1:] + rho[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    return np.interp(targets, cdf, grid)


def _symmetric_template() -> np.ndarray:
    """Template landmarks in world units (x, y), made exactly left/right symmetric."""
    pts = _TEMPLATE.copy()
    centre_x = 0.5 * np.mean(pts[:, 0] + pts[_MIRROR, 0])
    x = pts[:, 0] - centre_x
    sym_x = 0.5 * (x - x[_MIRROR])
    sym_y = 0.5 * (pts[:, 1] + pts[_MIRROR, 1])
    eye_y = np.mean(sym_y[36:48])
    world = np.stack([sym_x * TEMPLATE_SCALE, EYE_LEVEL_Y - (sym_y - eye_y) * TEMPLATE_SCALE], axis=1)
    # The template's mean mouth is slightly open; the neutral procedural mouth is closed, so the
    # inner lips meet on one line.
    mouth_line = np.mean(world[60:68, 1])
    world[60:68, 1] = mouth_line
    return world


# ----------------------------------------------------------------------------------------------
# mesh
# ----------------------------------------------------------------------------------------------
class _Grid:
    """The latitude/longitude grid: angles per row/column, row kinds, faces."""

    def __init__(self, mouth_y: float) -> None:
        theta_mouth = float(np.arccos((mouth_y - HEAD_CENTRE_Y) / HEAD_HALF_HEIGHT))

        def theta_density(t: np.ndarray) -> np.ndarray:
            return 1.0 + 5.0 * (_smoothstep(1.05, 1.3, t) - _smoothstep(2.55, 2.8, t))

        def phi_density(p: np.ndarray) -> np.ndarray:
            return 1.0 + 5.0 * _smoothstep(1.15, 0.8, np.abs(p))

        thetas = _density_angles(np.arange(1, NUM_ROWS + 1) / (NUM_ROWS + 1), 0.0, np.pi, theta_density)
        nearest = int(np.argmin(np.abs(thetas - theta_mouth)))
        thetas[nearest] = theta_mouth
        kinds = np.zeros(NUM_ROWS, dtype=np.int64)
        kinds[nearest] = ROW_LIP_UPPER
        # Three more copies of the mouth row right after it: inner upper, inner lower, lower lip.
        self.thetas = np.concatenate([thetas[: nearest + 1], [theta_mouth] * 3, thetas[nearest + 1 :]])
        self.kinds = np.concatenate(
            [kinds[: nearest + 1], [ROW_INNER_UPPER, ROW_INNER_LOWER, ROW_LIP_LOWER], kinds[nearest + 1 :]]
        )
        self.mouth_row = nearest
        # Column C/2 is phi = 0 (the face midline); columns are mirror symmetric about it.
        self.phis = _density_angles(np.arange(NUM_COLUMNS) / NUM_COLUMNS, -np.pi, np.pi, phi_density)
        self.phis[NUM_COLUMNS // 2] = 0.0
        self.num_rows = len(self.thetas)

    @property
    def num_vertices(self) -> int:
        return self.num_rows * NUM_COLUMNS + 2

    def faces(self) -> np.ndarray:
        rows, cols = self.num_rows, NUM_COLUMNS
        r, c = np.meshgrid(np.arange(rows - 1), np.arange(cols), indexing="ij")
        a = r * cols + c
        b = r * cols + (c + 1) % cols
        below = (r + 1) * cols + c
        below_next = (r + 1) * cols + (c + 1) % cols
        # Rows go down (-y) and columns go toward +x on the face: (a, below, b) is counter-clockwise
        # seen from outside.
        quads = np.concatenate(
            [np.stack([a, below, b], -1).reshape(-1, 3), np.stack([b, below, below_next], -1).reshape(-1, 3)]
        )
        top, bottom = rows * cols, rows * cols + 1
        ring = np.arange(cols)
        top_fan = np.stack([np.full(cols, top), ring, (ring + 1) % cols], -1)
        last = (rows - 1) * cols
        bottom_fan = np.stack([last + ring, np.full(cols, bottom), last + (ring + 1) % cols], -1)
        return np.concatenate([top_fan, quads, bottom_fan]).astype(np.int64)


def _base_surface(grid: _Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deformed-ellipsoid vertices (V, 3), per-vertex cos(phi) (front-ness) and row kind (V,)."""
    theta, phi = np.meshgrid(grid.thetas, grid.phis, indexing="ij")
    st, ct = np.sin(theta), np.cos(theta)
    x = HEAD_HALF_WIDTH * st * np.sin(phi)
    y = HEAD_CENTRE_Y + HEAD_HALF_HEIGHT * ct
    z = HEAD_HALF_DEPTH * st * np.cos(phi)
    front = np.clip(np.cos(phi), 0.0, 1.0)
    # Jaw: the lower head narrows toward the chin and slides forward so that its lowest point is
    # the chin (an ellipsoid would put the chin far behind the forehead and hang below it).
    chin_t = np.clip((-0.1 - y) / (-0.1 - HEAD_CENTRE_Y + HEAD_HALF_HEIGHT), 0.0, 1.0)
    taper = 1.0 - 0.06 * _smoothstep(0.0, -0.12, y) - 0.45 * chin_t**2
    x = x * taper
    lower = _smoothstep(0.0, HEAD_CENTRE_Y - HEAD_HALF_HEIGHT, y)
    z = z * (1.0 - 0.5 * lower) + 0.1 * lower + 0.03 * front**1.5 * _smoothstep(0.0, -0.12, y)
    # Slightly flatter face than an ellipsoid across x, and a sloping forehead.
    z = z - 0.02 * front**2 * _smoothstep(0.09, 0.3, y)
    verts = np.stack([x, y, z], -1).reshape(-1, 3)
    poles = np.array(
        [[0.0, HEAD_CENTRE_Y + HEAD_HALF_HEIGHT, 0.0], [0.0, HEAD_CENTRE_Y - HEAD_HALF_HEIGHT, 0.1]]
    )
    verts = np.concatenate([verts, poles])
    front_v = np.concatenate([front.reshape(-1), [0.0, 0.0]])
    kinds = np.concatenate([np.repeat(grid.kinds, NUM_COLUMNS), [ROW_REGULAR, ROW_REGULAR]])
    return verts, front_v, kinds


class _Layout:
    """Feature positions derived from the landmark template (world x, y)."""

    def __init__(self, lm: np.ndarray) -> None:
        self.lm = lm
        self.eye_centre = lm[42:48].mean(axis=0)  # subject's left eye (+x); the right one mirrors it
        self.eye_inner_x = lm[42, 0]
        self.eye_outer_x = lm[45, 0]
        self.mouth_y = float(lm[62, 1])
        self.mouth_corner_x = float(lm[54, 0])
        self.upper_lip_top = float(lm[51, 1])
        self.lower_lip_bottom = float(lm[57, 1])
        self.nose_root = lm[27]
        self.nose_tip = lm[30]
        self.subnasale = lm[33]
        self.ala_x = float(lm[35, 0])
        self.brow_left = lm[22:27]
        self.chin = lm[8]


def _mouth_open_weight(ax: np.ndarray, lay: _Layout) -> np.ndarray:
    """1 between the mouth corners, 0 beyond them: where the lips may part."""
    # A lens-shaped opening: full over the middle, rounded toward the corners.
    return _smoothstep(0.0, 0.6, 1.0 - (ax / (lay.mouth_corner_x + 0.002)) ** 2)


def _merge_closed_mouth(
    verts: np.ndarray, front_cos: np.ndarray, kinds: np.ndarray, faces: np.ndarray, lay: _Layout
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keep the four mouth rows separate only where the lips can part; elsewhere they are one
    vertex (no zero-area strips around the head, and smooth normals across the row)."""
    num = len(verts)
    upper_ids = np.flatnonzero(kinds == ROW_LIP_UPPER)
    can_open = (_mouth_open_weight(np.abs(verts[upper_ids, 0]), lay) > 0) & (front_cos[upper_ids] > 0)
    target = np.arange(num)
    for kind in (ROW_INNER_UPPER, ROW_INNER_LOWER, ROW_LIP_LOWER):
        rows_ids = np.flatnonzero(kinds == kind)  # same column order as upper_ids
        target[rows_ids[~can_open]] = upper_ids[~can_open]
    faces = target[faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    used = np.zeros(num, dtype=bool)
    used[faces.reshape(-1)] = True
    new_id = np.cumsum(used) - 1
    return verts[used], front_cos[used], kinds[used], new_id[faces]


def _nose(x: np.ndarray, y: np.ndarray, lay: _Layout) -> np.ndarray:
    """Forward displacement of the nose (ridge rising from the root to the tip, alae, tip ball)."""
    y_root, y_tip, y_sub = lay.nose_root[1], lay.nose_tip[1], lay.subnasale[1]
    t = np.clip((y - y_tip) / (y_root - y_tip), 0.0, 1.0)
    height = 0.042 * (1.0 - t) + 0.006 * t
    height = height * _smoothstep(y_sub - 0.004, y_tip - 0.004, y)  # drops under the tip
    height = height * _smoothstep(y_root + 0.03, y_root - 0.005, y)  # fades above the root
    width = 0.008 + 0.008 * (1.0 - t)
    ridge = height * np.exp(-0.5 * (x / width) ** 2)
    tip = 0.008 * _gauss(x, y, 0.0, y_tip - 0.002, 0.011, 0.01)
    alae = 0.016 * (
        _gauss(x, y, lay.ala_x * 0.8, y_sub + 0.008, 0.009, 0.008)
        + _gauss(x, y, -lay.ala_x * 0.8, y_sub + 0.008, 0.009, 0.008)
    )
    return ridge + tip + alae


def _eyes(x: np.ndarray, y: np.ndarray, lay: _Layout) -> np.ndarray:
    ex, ey = lay.eye_centre
    ax = np.abs(x)
    socket = -0.016 * _gauss(ax, y, ex, ey + 0.002, 0.024, 0.017)
    ball = 0.009 * _gauss(ax, y, ex, ey, 0.014, 0.010)
    return socket + ball


def _brow_ridge(x: np.ndarray, y: np.ndarray, lay: _Layout) -> np.ndarray:
    brow_y = float(lay.brow_left[:, 1].mean())
    ridge = 0.011 * _gauss(np.abs(x), y, lay.eye_centre[0], brow_y - 0.002, 0.04, 0.012)
    glabella = 0.006 * _gauss(x, y, 0.0, brow_y - 0.01, 0.02, 0.015)
    return ridge + glabella


def _cheeks(x: np.ndarray, y: np.ndarray, lay: _Layout) -> np.ndarray:
    return 0.012 * _gauss(np.abs(x), y, 0.085, lay.nose_tip[1] + 0.01, 0.025, 0.025)


def _lips(x: np.ndarray, y: np.ndarray, lay: _Layout) -> np.ndarray:
    half = lay.mouth_corner_x * 0.95
    shape_x = np.exp(-((np.abs(x) / half) ** 4))
    upper_c = 0.5 * (lay.mouth_y + lay.upper_lip_top)
    lower_c = 0.5 * (lay.mouth_y + lay.lower_lip_bottom)
    upper = 0.010 * shape_x * np.exp(-0.5 * ((y - upper_c) / 0.0065) ** 2)
    lower = 0.011 * shape_x * np.exp(-0.5 * ((y - lower_c) / 0.0075) ** 2)
    philtrum = 0.007 * _gauss(x, y, 0.0, 0.5 * (lay.subnasale[1] + lay.upper_lip_top), 0.03, 0.016)
    groove = -0.005 * _gauss(x, y, 0.0, lay.lower_lip_bottom - 0.01, 0.025, 0.007)
    return upper + lower + philtrum + groove


def _chin(x: np.ndarray, y: np.ndarray, lay: _Layout) -> np.ndarray:
    return 0.007 * _gauss(x, y, 0.0, lay.chin[1] + 0.03, 0.03, 0.02)


def _facial_relief(x: np.ndarray, y: np.ndarray, lay: _Layout) -> np.ndarray:
    return (
        _nose(x, y, lay)
        + _eyes(x, y, lay)
        + _brow_ridge(x, y, lay)
        + _cheeks(x, y, lay)
        + _lips(x, y, lay)
        + _chin(x, y, lay)
    )


def vertex_normals_np(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (V, 3) of a CCW mesh, shared by coincident vertices."""
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    face_n = np.cross(v1 - v0, v2 - v0)
    normals = np.zeros_like(verts)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_n)
    # Coincident vertices (the closed lips' four rows) share one normal, so normal-based
    # displacements never tear the mouth open.
    _, group = np.unique(verts, axis=0, return_inverse=True)
    group = group.reshape(-1)
    summed = np.zeros((group.max() + 1, 3))
    np.add.at(summed, group, normals)
    normals = summed[group]
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def _snap_landmarks(
    verts: np.ndarray, normals: np.ndarray, kinds: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """Vertex id per landmark: nearest (in frontal x, y) front-facing vertex of the allowed rows."""
    facing = (normals[:, 2] > 0.2) & (verts[:, 2] > 0.0)
    regular = facing & (kinds == ROW_REGULAR)
    upper_margin = facing & (kinds == ROW_LIP_UPPER)
    lower_margin = facing & (kinds == ROW_LIP_LOWER)
    ids = np.zeros(68, dtype=np.int64)
    for k in range(68):
        if k in (48, 54, 60, 61, 62, 63, 64):
            allowed = upper_margin  # mouth corners and inner upper lip lie on the mouth line
        elif k in (65, 66, 67):
            allowed = lower_margin
        else:
            allowed = regular
        cand = np.flatnonzero(allowed)
        d2 = np.sum((verts[cand, :2] - targets[k]) ** 2, axis=1)
        ids[k] = cand[int(np.argmin(d2))]
    return ids


class _LidCurves:
    """Upper/lower lid curves of one eye through its snapped landmark vertices."""

    def __init__(self, verts: np.ndarray, lm_ids: np.ndarray, side: int) -> None:
        # side +1: subject's left eye (iBUG 42-47), -1: right eye (36-41). Work in |x|.
        if side > 0:
            inner, up_in, up_out, outer, low_out, low_in = 42, 43, 44, 45, 46, 47
        else:
            inner, up_in, up_out, outer, low_out, low_in = 39, 38, 37, 36, 41, 40
        p = np.abs(verts[lm_ids, :2])
        p[:, 1] = verts[lm_ids, 1]
        self.side = side
        self.upper = np.array([p[inner], p[up_in], p[up_out], p[outer]])
        self.lower = np.array([p[inner], p[low_in], p[low_out], p[outer]])
        self.x_inner, self.x_outer = p[inner, 0], p[outer, 0]

    def evaluate(self, ax: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(y_upper, y_lower, inside-span weight) at |x| = ax."""
        y_up = np.interp(ax, self.upper[:, 0], self.upper[:, 1])
        y_low = np.interp(ax, self.lower[:, 0], self.lower[:, 1])
        span = (ax > self.x_inner) & (ax < self.x_outer)
        return y_up, y_low, span.astype(np.float64)


def _lid_relief(verts: np.ndarray, lids: dict[int, _LidCurves]) -> np.ndarray:
    """z relief that makes the eye readable in shape-only renders: a rim along the upper lid and
    a slightly recessed opening. Only z changes, so the snapped landmarks stay where they are."""
    x, y = verts[:, 0], verts[:, 1]
    ax = np.abs(x)
    out = np.zeros(len(x))
    for side, curves in lids.items():
        y_up, y_low, span = curves.evaluate(ax)
        same = (np.sign(x) == side) & (verts[:, 2] > 0)
        rim = 0.0025 * np.exp(-0.5 * ((y - y_up) / 0.003) ** 2)
        inside = (y > y_low + 1e-4) & (y < y_up - 1e-4)
        out += np.where(same & (span > 0), rim - 0.002 * inside, 0.0)
    return out


# ----------------------------------------------------------------------------------------------
# expressions
# ----------------------------------------------------------------------------------------------
def _expression_deltas(
    verts: np.ndarray, normals: np.ndarray, kinds: np.ndarray, lay: _Layout, lids: dict[int, _LidCurves]
) -> np.ndarray:
    x, y, z = verts[:, 0], verts[:, 1], verts[:, 2]
    ax = np.abs(x)
    front = _smoothstep(-0.02, 0.1, z)
    ym, cx = lay.mouth_y, lay.mouth_corner_x
    mouth_open_w = _mouth_open_weight(ax, lay)
    lower_side = (kinds == ROW_INNER_LOWER) | (kinds == ROW_LIP_LOWER) | ((kinds == ROW_REGULAR) & (y < ym))
    inner = (kinds == ROW_INNER_UPPER) | (kinds == ROW_INNER_LOWER)
    deltas: dict[str, np.ndarray] = {}

    # jaw_open: rotate the lower face about a hinge near the ears plus a downward slide (the
    # condyles translate as well as rotate). Exactly at the mouth line only the part between the
    # corners moves; a little lower the whole jaw does.
    pivot = np.array([0.0, 0.02, -0.05])
    angle = 0.12
    rel = verts - pivot
    rot = np.zeros_like(verts)
    rot[:, 1] = rel[:, 1] * np.cos(angle) - rel[:, 2] * np.sin(angle) - rel[:, 1]
    rot[:, 2] = rel[:, 1] * np.sin(angle) + rel[:, 2] * np.cos(angle) - rel[:, 2]
    jaw_motion = rot + np.array([0.0, -0.022, 0.01])
    jaw_w = mouth_open_w + (1.0 - mouth_open_w) * _smoothstep(ym, ym - 0.05, y)
    jaw_w = np.where(lower_side, jaw_w, 0.0) * front
    jaw = jaw_motion * jaw_w[:, None]
    upper_lip = (~lower_side) & (y < lay.subnasale[1])
    jaw[:, 1] += 0.003 * mouth_open_w * _smoothstep(lay.subnasale[1], ym, y) * upper_lip * front
    jaw[:, 2] -= 0.022 * mouth_open_w * inner  # the dark inner strip sits back in the mouth
    deltas["jaw_open"] = jaw

    for name, side in (("smile_left", 1.0), ("smile_right", -1.0)):
        corner = _blob(x, y, side * cx, ym, 0.045, 0.035)
        cheek = _blob(x, y, side * 0.065, lay.nose_tip[1] - 0.01, 0.045, 0.04)
        d = np.zeros_like(verts)
        d[:, 0] = side * 0.013 * corner
        d[:, 1] = 0.016 * corner + 0.006 * cheek
        d[:, 2] = -0.005 * corner + 0.003 * cheek
        deltas[name] = d * front[:, None]

    lips_w = _smoothstep(cx + 0.025, cx - 0.005, ax) * _smoothstep(0.045, 0.02, np.abs(y - ym + 0.003))
    d = np.zeros_like(verts)
    d[:, 0] = -0.3 * x * lips_w
    d[:, 2] = 0.02 * lips_w * _smoothstep(cx + 0.02, 0.0, ax)
    deltas["lip_pucker"] = d * front[:, None]

    corners = _blob(ax, y, cx, ym, 0.04, 0.04)
    d = np.zeros_like(verts)
    d[:, 0] = np.sign(x) * 0.011 * corners
    d[:, 1] = -0.005 * corners - 0.006 * mouth_open_w * lower_side * _smoothstep(ym - 0.05, ym, y)
    d[:, 2] = -0.004 * corners - 0.006 * mouth_open_w * inner
    deltas["mouth_stretch"] = d * front[:, None]

    for name, side in (("blink_left", 1), ("blink_right", -1)):
        y_up, y_low, span = lids[side].evaluate(ax)
        same_side = (np.sign(x) == side).astype(np.float64)
        opening = np.maximum(y_up - y_low, 0.0)
        frac = np.clip((y - y_low) / np.maximum(opening, 1e-9), 0.0, 1.0)
        above = _smoothstep(y_up + 0.022, y_up, y)  # lid skin above the margin follows, fading out
        move = np.where(y <= y_up, frac, above)
        d = np.zeros_like(verts)
        d[:, 1] = -opening * move * span * same_side
        # The eye surface collapses onto the lower lid slightly behind the lid skin, so the skin
        # wins the depth test over the collapsed slivers.
        interior = np.where(y <= y_up, 4.0 * frac * (1.0 - frac), 0.0)
        d[:, 2] = -0.004 * interior * span * same_side
        deltas[name] = d * front[:, None]

    for name, side in (("brow_raise_left", 1.0), ("brow_raise_right", -1.0)):
        brow_y = float(lay.brow_left[:, 1].mean())
        brow_x = float(lay.brow_left[:, 0].mean())
        # Flat over the whole brow, fading toward the midline, the temple and the hairline; the
        # lids stay put.
        w = _smoothstep(0.092, 0.048, np.abs(x - side * brow_x))
        w = (
            w
            * _smoothstep(lay.eye_centre[1] + 0.008, lay.eye_centre[1] + 0.03, y)
            * _smoothstep(0.18, 0.1, y)
        )
        d[:, 1] = 0.012 * w
        deltas[name] = d * front[:, None]

    brow_y = float(lay.brow_left[:, 1].mean())
    w = _blob(ax, y, 0.035, brow_y, 0.045, 0.03)
    d = np.zeros_like(verts)
    d[:, 0] = -np.sign(x) * 0.006 * w
    d[:, 1] = -0.007 * w
    d[:, 2] = 0.002 * _blob(x, y, 0.0, brow_y - 0.01, 0.03, 0.025)
    deltas["brow_frown"] = d * front[:, None]

    d = np.zeros_like(verts)
    d[:, 0] = np.sign(x) * 0.003 * corners
    d[:, 1] = -0.011 * corners
    deltas["mouth_frown"] = d * front[:, None]

    for name, side in (("mouth_left", 1.0), ("mouth_right", -1.0)):
        w = _blob(x, y, 0.0, ym, cx + 0.025, 0.04)
        d = np.zeros_like(verts)
        d[:, 0] = side * 0.012 * w
        deltas[name] = d * front[:, None]

    for name, side in (("squint_left", 1), ("squint_right", -1)):
        y_up, y_low, span = lids[side].evaluate(ax)
        same_side = (np.sign(x) == side).astype(np.float64)
        opening = np.maximum(y_up - y_low, 0.0)
        frac = np.clip((y_up - y) / np.maximum(opening, 1e-9), 0.0, 1.0)
        below = _smoothstep(y_low - 0.015, y_low, y)
        move = np.where(y >= y_low, frac, below)
        d = np.zeros_like(verts)
        d[:, 1] = 0.4 * opening * move * span * same_side
        deltas[name] = d * front[:, None]

    cheeks = _blob(ax, y, 0.08, ym + 0.01, 0.045, 0.05)
    # Outward from the head's vertical axis (not the vertex normals, which differ between the
    # coincident lip rows and would tear the mouth open).
    outward = np.stack([x, np.zeros_like(x), z - 0.02], -1)
    outward /= np.maximum(np.linalg.norm(outward, axis=1, keepdims=True), 1e-12)
    deltas["cheek_puff"] = outward * (0.012 * cheeks * front)[:, None]

    return np.stack([deltas[name] for name in EXPRESSION_NAMES])


# ----------------------------------------------------------------------------------------------
# identity
# ----------------------------------------------------------------------------------------------
def _real_spherical_harmonics(dirs: np.ndarray, max_degree: int) -> list[np.ndarray]:
    """Real SH (degrees 1..max_degree) of unit directions, via associated Legendre recursion."""
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    # Polar axis = world y (head up), azimuth in the x-z plane.
    cos_t = np.clip(y, -1.0, 1.0)
    azimuth = np.arctan2(x, z)
    out: list[np.ndarray] = []
    for degree in range(1, max_degree + 1):
        for order in range(-degree, degree + 1):
            m = abs(order)
            legendre = _assoc_legendre(degree, m, cos_t)
            trig = np.cos(m * azimuth) if order >= 0 else np.sin(m * azimuth)
            out.append(legendre * trig)
    return out


def _assoc_legendre(degree: int, order: int, x: np.ndarray) -> np.ndarray:
    pmm = np.ones_like(x)
    somx2 = np.sqrt(np.maximum(1.0 - x * x, 0.0))
    fact = 1.0
    for _ in range(order):
        pmm = -pmm * fact * somx2
        fact += 2.0
    if degree == order:
        return pmm
    pmmp1 = x * (2 * order + 1) * pmm
    if degree == order + 1:
        return pmmp1
    for ll in range(order + 2, degree + 1):
        pll = (x * (2 * ll - 1) * pmmp1 - (ll + order - 1) * pmm) / (ll - order)
        pmm, pmmp1 = pmmp1, pll
    return pmmp1


def _identity_fields(verts: np.ndarray, normals: np.ndarray, lay: _Layout) -> np.ndarray:
    """Raw identity displacement fields (K, V, 3), each already scaled to its intended spread."""
    x, y, z = verts[:, 0], verts[:, 1], verts[:, 2]
    ax = np.abs(x)
    front = _smoothstep(-0.02, 0.1, z)
    zeros = np.zeros_like(x)
    fields: list[np.ndarray] = []

    def add(dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> None:
        fields.append(np.stack([dx + zeros, dy + zeros, dz + zeros], -1))

    ym = lay.mouth_y
    eye_w = _blob(ax, y, lay.eye_centre[0], lay.eye_centre[1], 0.04, 0.03) * front
    nose_w = _blob(x, y, 0.0, lay.nose_tip[1], 0.04, 0.06) * front
    mouth_w = _blob(x, y, 0.0, ym, lay.mouth_corner_x + 0.03, 0.04) * front
    relief_face = _smoothstep(0.18, 0.1, y) * front

    add(0.045 * x, zeros, zeros)  # head width
    add(zeros, 0.04 * y, zeros)  # head height
    add(zeros, zeros, 0.05 * z)  # head depth
    add(0.1 * x * _smoothstep(-0.05, -0.2, y), zeros, zeros)  # jaw width
    add(zeros, -0.012 * _smoothstep(-0.06, -0.2, y) * front, zeros)  # lower face length
    add(zeros, zeros, 0.25 * _nose(x, y, lay) * front)  # nose size
    add(0.25 * x * nose_w, zeros, zeros)  # nose width
    add(0.004 * np.sign(x) * eye_w, zeros, zeros)  # eye spacing
    add(zeros, 0.004 * eye_w, zeros)  # eye height
    add(zeros, zeros, 0.35 * _brow_ridge(x, y, lay) * front)  # brow ridge
    add(zeros, zeros, 0.4 * _cheeks(x, y, lay) * front)  # cheekbones
    add(zeros, zeros, 0.35 * _lips(x, y, lay) * front)  # lip fullness
    add(0.12 * x * mouth_w, zeros, zeros)  # mouth width
    add(zeros, zeros, -0.01 * _smoothstep(0.06, 0.3, y) * front)  # forehead slope
    add(zeros, 0.015 * _smoothstep(0.1, 0.3, y), zeros)  # cranium height
    add(zeros, zeros, -0.015 * _smoothstep(0.0, -0.2, z))  # back of the head
    add(zeros, zeros, 0.35 * _chin(x, y, lay) * front + 0.006 * _smoothstep(-0.13, -0.21, y) * front)
    add(zeros, zeros, -0.012 * (x / 0.15) ** 2 * relief_face)  # face flatness

    centre = np.array([0.0, HEAD_CENTRE_Y, 0.0])
    dirs = verts - centre
    dirs = dirs / np.maximum(np.linalg.norm(dirs, axis=1, keepdims=True), 1e-12)
    for k, harmonic in enumerate(_real_spherical_harmonics(dirs, 3)):
        degree = 1 if k < 3 else (2 if k < 8 else 3)
        scale = 0.006 / degree / max(float(np.max(np.abs(harmonic))), 1e-12)
        fields.append(normals * (scale * harmonic)[:, None])

    bumps = [
        (0.0, 0.12),
        (0.09, 0.05),
        (-0.09, 0.05),
        (0.09, -0.09),
        (-0.09, -0.09),
        (0.0, -0.06),
        (0.0, -0.18),
    ]
    for bx, by in bumps:
        add(zeros, zeros, 0.005 * _gauss(x, y, bx, by, 0.03, 0.03) * front)
    return np.stack(fields)


def _orthonormal_identity(fields: np.ndarray) -> np.ndarray:
    """QR in the design order; component k = q_k * |R_kk| (its spread beyond the earlier ones)."""
    k = fields.shape[0]
    matrix = fields.reshape(k, -1).T
    q, r = np.linalg.qr(matrix)
    diag = np.diag(r)
    basis = (q * np.sign(diag)[None, :] * np.abs(diag)[None, :]).T
    return basis.reshape(fields.shape)


# ----------------------------------------------------------------------------------------------
# albedo, regions, shading
# ----------------------------------------------------------------------------------------------
def _polyline_distance(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    best = np.full(points.shape[0], np.inf)
    for a, b in zip(line[:-1], line[1:]):
        ab = b - a
        t = np.clip(((points - a) @ ab) / float(ab @ ab), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(points - (a + t[:, None] * ab), axis=1))
    return best


def _albedo_regions_shading(
    verts: np.ndarray, front_cos: np.ndarray, kinds: np.ndarray, lay: _Layout, lids: dict[int, _LidCurves]
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    x, y, z = verts[:, 0], verts[:, 1], verts[:, 2]
    ax = np.abs(x)
    skin = np.array([0.80, 0.60, 0.50])
    colour = np.tile(skin, (len(x), 1))

    def paint(weight: np.ndarray, rgb: tuple[float, float, float]) -> None:
        w = np.clip(weight, 0.0, 1.0)[:, None]
        colour[:] = colour * (1.0 - w) + np.asarray(rgb) * w

    paint(0.35 * _blob(ax, y, 0.08, lay.nose_tip[1], 0.04, 0.035) * (z > 0), (0.82, 0.50, 0.45))  # cheeks
    hairline = 0.125 + 0.12 * (x / 0.16) ** 2
    hair = np.maximum(_smoothstep(hairline, hairline + 0.015, y) * (z > -0.3), 0.0)
    back = _smoothstep(0.35, 0.1, front_cos) * _smoothstep(-0.05, 0.02, y)
    paint(np.maximum(hair, back), (0.20, 0.14, 0.10))
    brow_right = lay.brow_left * np.array([-1.0, 1.0])
    brow_d = np.minimum(
        _polyline_distance(verts[:, :2], lay.brow_left), _polyline_distance(verts[:, :2], brow_right)
    )
    paint(_smoothstep(0.0065, 0.003, brow_d) * (z > 0), (0.24, 0.16, 0.11))
    lip_w = _blob(
        x,
        y,
        0.0,
        lay.mouth_y,
        lay.mouth_corner_x + 0.002,
        0.5 * (lay.upper_lip_top - lay.lower_lip_bottom) + 0.002,
    )
    paint(lip_w * (z > 0), (0.70, 0.36, 0.37))
    for side in (1, -1):
        y_up, y_low, span = lids[side].evaluate(ax)
        same = np.sign(x) == side
        on_face = same & (span > 0) & (z > 0) & (kinds == ROW_REGULAR)
        white = on_face & (y > y_low + 1e-4) & (y < y_up - 1e-4)
        # Lid margins: a dark lash line above (it is what stays visible of a closed eye), a
        # slightly darker rim below. Margin vertices keep skin-like colours so a blink shows no
        # white.
        upper_margin = on_face & (np.abs(y - y_up) <= 1e-4)
        lower_margin = on_face & (np.abs(y - y_low) <= 1e-4)
        paint(white.astype(np.float64), (0.90, 0.88, 0.85))
        paint(upper_margin.astype(np.float64), (0.22, 0.14, 0.11))
        paint(0.5 * lower_margin, (0.45, 0.30, 0.26))
        ex, ey = lay.eye_centre
        r = np.hypot(ax - ex, y - ey)
        paint((white & (r < 0.0075)).astype(np.float64), (0.33, 0.22, 0.13))
        paint((white & (r < 0.003)).astype(np.float64), (0.05, 0.04, 0.04))
    nostrils = _blob(ax, y, lay.ala_x * 0.45, lay.subnasale[1] + 0.002, 0.007, 0.004) * (z > 0)
    paint(0.7 * nostrils, (0.35, 0.18, 0.16))
    mouth_open_w = _mouth_open_weight(ax, lay)
    inner = (kinds == ROW_INNER_UPPER) | (kinds == ROW_INNER_LOWER)
    paint(inner * mouth_open_w, (0.30, 0.07, 0.08))

    shading = 1.0 - 0.8 * inner * mouth_open_w - 0.4 * nostrils
    face = (
        ((np.abs(x / 0.155) ** 3 + np.abs((y - (lay.chin[1] + 0.16)) / 0.2) ** 3) < 1.0)
        & (z > 0.05)
        & (front_cos > 0.35)
        & (y < hairline)
    )
    eye = ((((ax - lay.eye_centre[0]) / 0.036) ** 2 + ((y - lay.eye_centre[1]) / 0.02) ** 2) < 1.0) & (
        z > 0.05
    )
    mouth = (((x / (lay.mouth_corner_x + 0.012)) ** 2 + ((y - lay.mouth_y) / 0.03) ** 2) < 1.0) & (z > 0.05)
    regions = {"face_region": face, "eye_region": eye, "mouth_region": mouth}
    return colour, regions, shading


# ----------------------------------------------------------------------------------------------
# assembly, quantisation, I/O
# ----------------------------------------------------------------------------------------------
def _quantise_basis(basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int16 values and per-component float32 scales (basis ~= q * scale)."""
    peak = np.max(np.abs(basis.reshape(basis.shape[0], -1)), axis=1)
    scale = (np.maximum(peak, 1e-12) / 32767.0).astype(np.float32)
    q = np.round(basis / scale.astype(np.float64)[:, None, None]).astype(np.int16)
    return q, scale


def build_procedural_head() -> dict[str, np.ndarray]:
    """All arrays of the asset (deterministic)."""
    landmarks_xy = _symmetric_template()
    lay = _Layout(landmarks_xy)
    grid = _Grid(lay.mouth_y)
    verts, front_cos, kinds = _base_surface(grid)
    verts, front_cos, kinds, faces = _merge_closed_mouth(verts, front_cos, kinds, grid.faces(), lay)
    front = _smoothstep(0.2, 0.6, front_cos)
    verts[:, 2] += _facial_relief(verts[:, 0], verts[:, 1], lay) * front
    verts = np.round(verts / POSITION_QUANTUM) * POSITION_QUANTUM
    normals = vertex_normals_np(verts, faces)

    lm_ids = _snap_landmarks(verts, normals, kinds, landmarks_xy)
    lids = {1: _LidCurves(verts, lm_ids, 1), -1: _LidCurves(verts, lm_ids, -1)}
    verts[:, 2] += _lid_relief(verts, lids)
    verts = np.round(verts / POSITION_QUANTUM) * POSITION_QUANTUM
    normals = vertex_normals_np(verts, faces)
    expressions = _expression_deltas(verts, normals, kinds, lay, lids)
    identity = _orthonormal_identity(_identity_fields(verts, normals, lay)[:NUM_IDENTITY])
    albedo, regions, shading = _albedo_regions_shading(verts, front_cos, kinds, lay, lids)

    id_q, id_scale = _quantise_basis(identity)
    exp_q, exp_scale = _quantise_basis(expressions)
    return {
        "name": np.array(MODEL_NAME),
        "mean_shape": verts.astype(np.float32),
        "id_basis_q": id_q,
        "id_basis_scale": id_scale,
        "exp_basis_q": exp_q,
        "exp_basis_scale": exp_scale,
        "expression_names": np.array(EXPRESSION_NAMES),
        "faces": faces.astype(np.int32),
        "landmark_indices": lm_ids.astype(np.int32),
        "face_region": regions["face_region"],
        "eye_region": regions["eye_region"],
        "mouth_region": regions["mouth_region"],
        "albedo": np.round(np.clip(albedo, 0.0, 1.0) * 255.0).astype(np.uint8),
        "vertex_shading": np.round(np.clip(shading, 0.0, 1.0) * 255.0).astype(np.uint8),
        "row_kind": kinds.astype(np.uint8),
    }


def array_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the arrays (file-format independent)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(value.dtype.str).encode())
        h.update(str(value.shape).encode())
        h.update(value.tobytes())
    return h.hexdigest()


def write_asset(path: Path = ASSET_PATH) -> dict[str, object]:
    arrays = build_procedural_head()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "vertices": int(arrays["mean_shape"].shape[0]),
        "faces": int(arrays["faces"].shape[0]),
        "identity_components": int(arrays["id_basis_q"].shape[0]),
        "expressions": list(EXPRESSION_NAMES),
        "digest": array_digest(arrays),
    }


def main() -> None:
    print(json.dumps(write_asset()))


if __name__ == "__main__":
    main()
