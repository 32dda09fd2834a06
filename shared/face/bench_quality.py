"""Tracking and matte quality for ``make bench-face`` (``shared.face.bench`` adds these keys).

Definitions (all on 2 CPU threads, no download):

* ``pose_err_deg``: mean |yaw|, |pitch|, |roll| error of the smoothed video fit on synthetic renders
  (``shared.training.synthetic``, 256², one holdout identity) whose head pose is known: yaw ±20°,
  pitch ±10°, roll ±8° sinusoids, while the jaw opens and the eyes blink.
* ``mouth_corr_fit``: Pearson r, over those frames, between the driver's mouth opening measured on the
  detected mesh (inner-lip gap / mouth width) and the same ratio on the fitted 3DMM's projected
  landmarks (iBUG 61-63 / 67-65 over 60-64). ``mouth_corr_fit_talking``: the same on the generated
  talking clip (``shared.media.samples.astronaut_frame(talk=True)``).
* ``eye_corr_fit``: the same for eye openness (lid gaps / eye width, both eyes) on the synthetic frames.
* ``jitter_px``: on a static face (the astronaut at 256², a fresh sensor-like noise of σ = 2 grey
  levels per frame), the per-landmark standard deviation over frames of the tracked 68 landmarks, in
  frame pixels, averaged over landmarks; ``jitter_px_fit``: the same for the smoothed fit's projected
  landmarks (what drives the output).
* ``matte_iou``: the portrait matte on the astronaut against the hand-drawn head-and-hair polygon
  (``shared.face.matte_reference``).
"""

from __future__ import annotations

import numpy as np
import torch

from shared.face.fit import head_pose_angles, pose_from_angles
from shared.face.mesh import eye_openness, mouth_openness
from shared.face.morphable import MorphableModel
from shared.face.pipeline import FaceAnalyzer, FrameAnalysis, TrackedLandmarks

SIZE = 256


def fitted_landmarks_px(analyzer: FaceAnalyzer, identity: torch.Tensor, frame: FrameAnalysis) -> np.ndarray:
    """(68, 2) source-frame pixels of the fitted model's landmarks under the frame's smoothed pose."""
    uv = analyzer.fitter.project(
        identity.unsqueeze(0),
        frame.beta.unsqueeze(0),
        frame.rotation.unsqueeze(0),
        frame.translation.unsqueeze(0),
    )[0].numpy()
    crop_px = uv * analyzer.crop_size - 0.5
    matrix = np.asarray(frame.crop_matrix, dtype=np.float64)
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    return crop_px @ inverse[:, :2].T + inverse[:, 2]


def ibug_mouth_openness(points: np.ndarray) -> float:
    gaps = [np.linalg.norm(points[a] - points[b]) for a, b in ((61, 67), (62, 66), (63, 65))]
    return float(np.mean(gaps) / max(np.linalg.norm(points[60] - points[64]), 1e-6))


def ibug_eye_openness(points: np.ndarray) -> float:
    right = np.mean([np.linalg.norm(points[a] - points[b]) for a, b in ((37, 41), (38, 40))])
    left = np.mean([np.linalg.norm(points[a] - points[b]) for a, b in ((43, 47), (44, 46))])
    return float(
        0.5
        * (right / np.linalg.norm(points[36] - points[39]) + left / np.linalg.norm(points[42] - points[45]))
    )


def _pearson(a: list[float], b: list[float]) -> float | None:
    x, y = np.asarray(a), np.asarray(b)
    if len(x) < 3 or x.std() < 1e-9 or y.std() < 1e-9:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def synthetic_sequence(model: MorphableModel, num_frames: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames (256² RGB) of one synthetic head and the true (yaw, pitch, roll) per frame."""
    from shared.model import cameras
    from shared.training import synthetic

    config = synthetic.SyntheticConfig(image_size=SIZE)
    identity = next(
        i
        for i in (synthetic.sample_identity(model, config, 0, "holdout", k) for k in range(50))
        if not (i.glasses or i.hat)
    )
    jaw, blink_l, blink_r = (model.expression_index(n) for n in ("jaw_open", "blink_left", "blink_right"))
    frames, angles = [], []
    for t in range(num_frames):
        yaw, pitch, roll = 20.0 * np.sin(t / 5.0), 10.0 * np.sin(t / 7.0 + 1.0), 8.0 * np.sin(t / 6.0 + 2.0)
        beta = np.zeros(model.num_expression, np.float32)
        beta[jaw] = 0.45 + 0.45 * np.sin(t / 2.3)
        beta[blink_l] = beta[blink_r] = 0.9 if t % 6 in (2, 3) else 0.0
        rotation, translation = pose_from_angles(yaw, pitch, roll)
        camera = (
            cameras.camera_from_head_pose(rotation.float(), translation.float()).numpy().astype(np.float32)
        )
        scene = synthetic.build_scene(model, identity, beta)
        with torch.no_grad():
            image = synthetic.render_scene(scene, camera.reshape(-1), identity.light, SIZE, 1)[0]
        frames.append(
            np.ascontiguousarray(((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
        )
        angles.append((yaw, pitch, roll))
    return frames, np.asarray(angles)


def _track(
    analyzer: FaceAnalyzer, frames: list[np.ndarray]
) -> tuple[list[TrackedLandmarks | None], list[FrameAnalysis], torch.Tensor]:
    state = analyzer.start_video()
    tracked_all: list[TrackedLandmarks | None] = []
    results: list[FrameAnalysis] = []
    for start in range(0, len(frames), 16):
        tracked = analyzer.track_frames(frames[start : start + 16], state)
        tracked_all += tracked
        results += analyzer.analyze_tracked(tracked, state)
    assert state.identity is not None
    return tracked_all, results, state.identity


def measure(
    model: MorphableModel, analyzer_factory, num_synthetic: int = 36, num_talking: int = 48
) -> dict[str, object]:
    """The quality keys of ``make bench-face`` (see the module docstring)."""
    out: dict[str, object] = {}
    # Synthetic renders with known pose and expression.
    analyzer = analyzer_factory()
    frames, truth = synthetic_sequence(model, num_synthetic)
    tracked, results, identity = _track(analyzer, frames)
    mouth_d, mouth_f, eye_d, eye_f, errors = [], [], [], [], []
    for t, (item, frame) in enumerate(zip(tracked, results, strict=True)):
        if item is None or item.mesh is None or not frame.face_found:
            continue
        fitted = fitted_landmarks_px(analyzer, identity, frame)
        mouth_d.append(mouth_openness(item.mesh))
        mouth_f.append(ibug_mouth_openness(fitted))
        eye_d.append(eye_openness(item.mesh))
        eye_f.append(ibug_eye_openness(fitted))
        angles = head_pose_angles(frame.rotation.to(torch.float64)).numpy()
        errors.append(np.abs(angles - truth[t]))
    out["mouth_corr_fit"] = _pearson(mouth_d, mouth_f)
    out["eye_corr_fit"] = _pearson(eye_d, eye_f)
    out["pose_err_deg"] = float(np.mean(errors)) if errors else None
    out["pose_err_deg_yaw_pitch_roll"] = np.mean(errors, axis=0).round(3).tolist() if errors else None
    out["synthetic_frames_with_face"] = len(errors)
    out["synthetic_frames"] = num_synthetic

    # The generated talking clip.
    from shared.media.samples import astronaut_frame

    analyzer = analyzer_factory()
    tracked, results, identity = _track(
        analyzer, [astronaut_frame(i, SIZE, talk=True) for i in range(num_talking)]
    )
    pairs = [
        (mouth_openness(item.mesh), ibug_mouth_openness(fitted_landmarks_px(analyzer, identity, frame)))
        for item, frame in zip(tracked, results, strict=True)
        if item is not None and item.mesh is not None and frame.face_found
    ]
    out["mouth_corr_fit_talking"] = _pearson([p[0] for p in pairs], [p[1] for p in pairs])

    # A static face with per-frame noise.
    analyzer = analyzer_factory()
    base = astronaut_frame(0, SIZE).astype(np.float32)
    rng = np.random.default_rng(0)
    noisy = [np.clip(base + rng.normal(0, 2.0, base.shape), 0, 255).astype(np.uint8) for _ in range(32)]
    tracked, results, identity = _track(analyzer, noisy)
    raw = np.stack([t.landmarks for t in tracked if t is not None])
    fitted = np.stack(
        [
            fitted_landmarks_px(analyzer, identity, f)
            for t, f in zip(tracked, results, strict=True)
            if t is not None
        ]
    )
    out["jitter_px"] = float(np.sqrt(raw.var(axis=0).sum(-1)).mean())
    out["jitter_px_fit"] = float(np.sqrt(fitted[4:].var(axis=0).sum(-1)).mean())

    from skimage import data

    from shared.face.matte import PortraitMatter
    from shared.face.matte_reference import EAR_ROW, head_iou, head_mask

    out["matte_iou"] = head_iou(PortraitMatter().source_matte(data.astronaut()), head_mask(), EAR_ROW)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}
