"""Face analysis for reenactment: a portrait -> ``PortraitAnalysis``; driving frames ->
``FrameAnalysis`` (streaming, chunk by chunk); and ``MotionRetargeter`` to map the driver's motion
onto the portrait.

Portrait: detect (typed errors) -> de-rolled similarity crop -> fit identity, expression and pose in
the crop's normalised coordinates -> EG3D camera + keep mask + soft person matte (source and crop).

Driving video: per chunk of frames, track landmarks (full detection every ``detect_every`` frames)
-> per-frame crop matrix that keeps roll (no image warp is needed for fitting) -> one batched fit of
expression and pose with the driver's identity fixed (estimated once from the first frames with a
face, or given) -> One-Euro smoothing in frame order. Frames without a usable face hold the last
good values and are counted. All per-video memory is in ``VideoState`` (a few small arrays), so a
clip is never held whole and the state can be carried across chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from shared.face.align import AlignedCrop, AlignmentTemplate, FaceAligner, apply_affine
from shared.face.detect import FaceDetector, make_detector, make_tracker
from shared.face.detection import DetectionReport, DetectorConfig, TrackerState
from shared.face.errors import ImageInvalidError
from shared.face.fit import (
    FRONTAL_ROTATION,
    FitConfig,
    LandmarkFitter,
    axis_angle_to_matrix,
    compose_pose,
    head_pose_angles,
    head_rotation,
    invert_pose,
    matrix_to_axis_angle,
    rotation_from_head,
    single_threaded,
)
from shared.face.masks import FaceParser, LandmarkFaceParser, MaskConfig
from shared.face.matte import MatteConfig, PortraitMatter
from shared.face.mesh import MeshFaceDetector
from shared.face.morphable import MorphableModel
from shared.face.smoothing import GroupSmoother, OneEuroState, SmoothingConfig
from shared.model import cameras

# Expression coefficients whose zero is a closed mouth (MotionRetargeter's ``opening``): in relative
# mode the output's mouth opens by as much as the driver's opens beyond its own rest (and at least as
# far as the driver's).
MOUTH_OPENING_EXPRESSIONS = ("jaw_open",)


@dataclass(frozen=True)
class AnalyzerConfig:
    detector: DetectorConfig = DetectorConfig()
    fit: FitConfig = FitConfig()
    smoothing: SmoothingConfig = SmoothingConfig()
    mask: MaskConfig = MaskConfig()
    matte: MatteConfig = MatteConfig()
    # dlib backend only: face detection (near the last face, ~4 ms) every k frames of a video; in
    # between only the 68 landmarks are re-estimated from the previous frame's box (~1 ms). The mesh
    # backend's tracking graph re-detects by itself when the face is lost.
    detect_every: int = 3
    identity_frames: int = 8  # driver frames (with a face) used to estimate the driver's identity
    # A frame whose fitted landmarks miss the detected ones by more than this RMS (normalised crop
    # units) is treated as "no face": the tracker has drifted or the detection is not a face.
    max_frame_rms: float = 0.05


@dataclass(frozen=True)
class PortraitAnalysis:
    crop: np.ndarray  # (S, S, 3) uint8 aligned crop
    crop_transform: AlignedCrop  # matrices to go between the source image and the crop
    landmarks: np.ndarray  # (68, 2) in crop pixel coordinates
    source_landmarks: np.ndarray  # (68, 2) in source image pixels
    alpha: Tensor  # (K_id,)
    beta: Tensor  # (K_exp,)
    rotation: Tensor  # (3, 3) head -> camera
    translation: Tensor  # (3,)
    camera: Tensor  # (25,) EG3D camera of the crop
    keep_mask: np.ndarray  # (S, S) float32, 1 keep, 0 = eyes / brows / mouth
    detection: DetectionReport
    rms_error: float  # landmark fit error, normalised crop units
    # Soft alpha of the person (head, hair, neck, shoulders), 1 = person (shared/face/matte.py):
    matte: np.ndarray  # (S, S) float32 in [0, 1], same framing as ``crop``
    source_matte: np.ndarray  # (H, W) float32 in [0, 1], the original image's pixels
    source_mesh: np.ndarray | None = None  # (478, 2) source px with the mesh backend

    @property
    def head_angles(self) -> tuple[float, float, float]:
        """(yaw, pitch, roll) in degrees (see ``fit.head_pose_angles``)."""
        yaw, pitch, roll = head_pose_angles(self.rotation.to(torch.float64)).tolist()
        return yaw, pitch, roll


@dataclass(frozen=True)
class FrameAnalysis:
    index: int  # frame index in the video (counted across chunks)
    face_found: bool  # False: values are held from the last good frame
    landmarks: np.ndarray | None  # (68, 2) source pixels, None without a face
    crop_matrix: np.ndarray | None  # (2, 3) source px -> crop px used for the fit
    beta: Tensor  # (K_exp,) smoothed
    rotation: Tensor  # (3, 3) smoothed
    translation: Tensor  # (3,) smoothed
    camera: Tensor  # (25,)
    raw_beta: Tensor | None  # unsmoothed fit, None without a face
    rms_error: float | None


@dataclass(frozen=True)
class TrackedLandmarks:
    landmarks: np.ndarray  # (68, 2) source pixels
    crop_matrix: np.ndarray  # (2, 3) source px -> crop px (roll kept)
    uv: np.ndarray  # (68, 2) normalised crop coordinates
    mesh: np.ndarray | None = None  # (478, 2) source pixels with the mesh backend


@dataclass
class VideoState:
    """Everything a video's analysis carries from one chunk to the next (small, picklable)."""

    identity: Tensor | None = None  # (K_id,) the driver's identity once known
    tracker: TrackerState = field(default_factory=TrackerState)
    smoothing: dict[str, OneEuroState] = field(default_factory=GroupSmoother.new_state)
    frames_seen: int = 0
    frames_without_face: int = 0
    # Last good smoothed output (held on frames without a face) and last raw fit (warm start).
    last_beta: Tensor | None = None
    last_rotation: Tensor | None = None
    last_translation: Tensor | None = None
    warm_rotation: Tensor | None = None
    warm_translation: Tensor | None = None
    warm_beta: Tensor | None = None


class FaceAnalyzer:
    def __init__(
        self,
        model: MorphableModel,
        crop_size: int,
        config: AnalyzerConfig | None = None,
        *,
        parser: FaceParser | None = None,
        detector: FaceDetector | MeshFaceDetector | None = None,
        matter: PortraitMatter | None = None,
    ) -> None:
        self.model = model
        self.crop_size = crop_size
        self.config = config or AnalyzerConfig()
        self.detector = detector or make_detector(self.config.detector)
        self.tracker = make_tracker(self.detector, self.config.detect_every)
        self.matter = matter or PortraitMatter(self.config.matte)
        self.template = AlignmentTemplate.from_model(model)
        self.aligner = FaceAligner(self.template, crop_size)
        self.fitter = LandmarkFitter(model, self.config.fit)
        self.parser: FaceParser = parser or LandmarkFaceParser(self.config.mask)
        self.smoother = GroupSmoother(self.config.smoothing)

    # --- portrait ------------------------------------------------------------------------------
    def analyze_portrait(self, image_rgb: np.ndarray) -> PortraitAnalysis:
        """Raises ``FaceError`` subclasses (image_invalid, no_face, face_too_small, face_at_border,
        fit_failed)."""
        detection = self.detector.detect(image_rgb)
        crop = self.aligner.crop(np.asarray(image_rgb), detection.landmarks)
        crop_landmarks = crop.to_crop(detection.landmarks)
        fit = self.fitter.fit_portrait(crop.to_normalized(crop_landmarks))
        keep = self.parser.keep_mask(crop.image, crop_landmarks)
        source_matte = self.matter.source_matte(image_rgb)
        return PortraitAnalysis(
            crop=crop.image,
            crop_transform=crop,
            landmarks=crop_landmarks.astype(np.float32),
            source_landmarks=detection.landmarks,
            alpha=fit.alpha[0],
            beta=fit.beta[0],
            rotation=fit.rotation[0],
            translation=fit.translation[0],
            camera=fit.camera[0],
            keep_mask=keep,
            detection=detection.report,
            rms_error=float(fit.rms_error[0]),
            matte=self.matter.crop_matte(source_matte, crop),
            source_matte=source_matte,
            source_mesh=detection.mesh,
        )

    # --- video ---------------------------------------------------------------------------------
    def start_video(self, identity: Tensor | None = None) -> VideoState:
        state = VideoState()
        if identity is not None:
            state.identity = torch.as_tensor(identity, dtype=torch.float32).reshape(-1)
        return state

    def analyze_frames(
        self, frames: list[np.ndarray], identity: Tensor | None = None, state: VideoState | None = None
    ) -> list[FrameAnalysis]:
        """Analyse one chunk of consecutive driving frames; ``state`` (updated in place) carries the
        tracker, the smoothing filters, the identity and the last good pose to the next chunk.

        ``identity``: the driver's alpha if known (overrides the state's); otherwise it is estimated
        from the first frames with a face and kept in the state.
        """
        state = state if state is not None else self.start_video()
        if identity is not None:
            state.identity = torch.as_tensor(identity, dtype=torch.float32).reshape(-1)
        return self.analyze_tracked(self.track_frames(frames, state), state)

    def track_frames(self, frames: list[np.ndarray], state: VideoState) -> list[TrackedLandmarks | None]:
        """Landmarks and the roll-keeping crop matrix of each frame (None: no face); first half of
        ``analyze_frames``."""
        tracked: list[TrackedLandmarks | None] = []
        for frame in frames:
            _check_frame(frame)
            face = None
            if int(frame.max()) - int(frame.min()) >= 8:  # a blank frame (fade, black) has no face
                face = self.tracker.track(frame, state.tracker)
            else:
                state.tracker.landmarks = None
            if face is None:
                tracked.append(None)
                continue
            matrix = self.aligner.matrix_for(face.landmarks, keep_roll=True)
            uv = (apply_affine(matrix, face.landmarks) + 0.5) / self.crop_size
            tracked.append(
                TrackedLandmarks(landmarks=face.landmarks, crop_matrix=matrix, uv=uv, mesh=face.mesh)
            )
        return tracked

    def analyze_tracked(
        self, tracked: list[TrackedLandmarks | None], state: VideoState
    ) -> list[FrameAnalysis]:
        """Second half of ``analyze_frames``: fit, smooth, hold, count."""
        return self._analyze_landmarks([None if t is None else t.uv for t in tracked], tracked, state)

    def analyze_landmarks(
        self,
        landmarks_uv: list[np.ndarray | None],
        identity: Tensor | None = None,
        state: VideoState | None = None,
    ) -> list[FrameAnalysis]:
        """``analyze_frames`` from landmarks already in normalised crop coordinates ((68, 2) per
        frame, None where no face was found): fitting, identity, smoothing, holding and counting."""
        state = state if state is not None else self.start_video()
        if identity is not None:
            state.identity = torch.as_tensor(identity, dtype=torch.float32).reshape(-1)
        return self._analyze_landmarks(landmarks_uv, [None] * len(landmarks_uv), state)

    def _analyze_landmarks(
        self,
        uv_items: list[np.ndarray | None],
        tracked: list[TrackedLandmarks | None],
        state: VideoState,
    ) -> list[FrameAnalysis]:
        # Many tiny tensor ops: one thread is faster (see fit.single_threaded).
        with single_threaded():
            return self._analyze_landmarks_unthreaded(uv_items, tracked, state)

    def _analyze_landmarks_unthreaded(
        self,
        uv_items: list[np.ndarray | None],
        tracked: list[TrackedLandmarks | None],
        state: VideoState,
    ) -> list[FrameAnalysis]:
        with_face = [i for i, item in enumerate(uv_items) if item is not None]
        uv = np.stack([uv_items[i] for i in with_face]) if with_face else np.zeros((0, 68, 2))

        if with_face and state.identity is None:
            # Spread the frames used for the identity over the chunk (different expressions/poses).
            picks = np.unique(
                np.linspace(0, len(with_face) - 1, min(self.config.identity_frames, len(with_face)))
                .round()
                .astype(int)
            )
            state.identity = self.fitter.fit_portrait(uv[picks]).alpha[0]

        raw = None
        if with_face:
            raw = self.fitter.fit_frames(
                uv,
                state.identity.unsqueeze(0),  # type: ignore[union-attr]
                initial_rotation=state.warm_rotation,
                initial_translation=state.warm_translation,
                initial_beta=state.warm_beta,
            )

        results: list[FrameAnalysis] = []
        raw_row = {frame_index: row for row, frame_index in enumerate(with_face)}
        for position, item in enumerate(tracked):
            index = state.frames_seen
            state.frames_seen += 1
            row = raw_row.get(position)
            good = (
                row is not None and raw is not None and float(raw.rms_error[row]) <= self.config.max_frame_rms
            )
            if not good:
                state.frames_without_face += 1
                beta, rotation, translation = self._held(state)
                results.append(
                    FrameAnalysis(
                        index=index,
                        face_found=False,
                        landmarks=None,
                        crop_matrix=None,
                        beta=beta,
                        rotation=rotation,
                        translation=translation,
                        camera=self.fitter.camera(rotation, translation),
                        raw_beta=None,
                        rms_error=None,
                    )
                )
                continue
            assert raw is not None and row is not None
            state.warm_rotation = raw.rotation[row].to(torch.float64)
            state.warm_translation = raw.translation[row].to(torch.float64)
            state.warm_beta = raw.beta[row].to(torch.float64)
            smoothed = self.smoother.step(
                {
                    "rotation": matrix_to_axis_angle(
                        head_rotation(raw.rotation[row].to(torch.float64))
                    ).numpy(),
                    "translation": raw.translation[row].numpy(),
                    "expression": raw.beta[row].numpy(),
                },
                state.smoothing,
            )
            rotation = rotation_from_head(axis_angle_to_matrix(torch.from_numpy(smoothed["rotation"]))).to(
                torch.float32
            )
            translation = torch.from_numpy(smoothed["translation"]).to(torch.float32)
            beta = torch.from_numpy(smoothed["expression"]).to(torch.float32)
            bounds = self.fitter.expression_bounds
            if bounds is not None:
                beta = beta.clamp(*bounds)
            state.last_beta, state.last_rotation, state.last_translation = beta, rotation, translation
            results.append(
                FrameAnalysis(
                    index=index,
                    face_found=True,
                    landmarks=None if item is None else item.landmarks,
                    crop_matrix=None if item is None else item.crop_matrix,
                    beta=beta,
                    rotation=rotation,
                    translation=translation,
                    camera=self.fitter.camera(rotation, translation),
                    raw_beta=raw.beta[row],
                    rms_error=float(raw.rms_error[row]),
                )
            )
        return results

    def retargeter(
        self,
        portrait: PortraitAnalysis,
        *,
        mode: Literal["relative", "absolute"] = "relative",
        expression_scale: float = 1.0,
    ) -> MotionRetargeter:
        """A ``MotionRetargeter`` with this analyzer's expression bounds and camera settings."""
        return MotionRetargeter(
            portrait,
            mode=mode,
            expression_scale=expression_scale,
            expression_bounds=self.fitter.expression_bounds,
            camera_radius=self.config.fit.camera_radius,
            focal=self.config.fit.focal,
            opening=tuple(
                self.model.expression_index(name)
                for name in MOUTH_OPENING_EXPRESSIONS
                if name in self.model.expression_names
            ),
        )

    def _held(self, state: VideoState) -> tuple[Tensor, Tensor, Tensor]:
        if (
            state.last_beta is not None
            and state.last_rotation is not None
            and state.last_translation is not None
        ):
            return state.last_beta, state.last_rotation, state.last_translation
        # No good frame yet: neutral expression, frontal head.
        return (
            torch.zeros(self.model.num_expression),
            FRONTAL_ROTATION.to(torch.float32).clone(),
            torch.tensor([0.0, 0.0, self.config.fit.initial_distance]),
        )


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        shape = getattr(frame, "shape", None)
        dtype = getattr(frame, "dtype", None)
        raise ImageInvalidError(
            f"driving frames must be (H, W, 3) uint8 RGB arrays, got shape {shape} dtype {dtype}"
        )
    if min(frame.shape[:2]) < 32:
        raise ImageInvalidError(f"driving frame is too small: {frame.shape[1]}x{frame.shape[0]}")


# --- retargeting -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RetargetedFrame:
    index: int
    beta: Tensor  # (K_exp,) expression for I_exp (with the portrait's identity)
    rotation: Tensor  # (3, 3)
    translation: Tensor  # (3,)
    camera: Tensor  # (25,) EG3D camera to render the avatar with


@dataclass
class DriverReference:
    """The driver's first frame with a face (relative mode), and ``opening_rest``: the least value of
    each ``opening`` coefficient seen so far (the driver's closed mouth, once it has closed)."""

    beta: Tensor
    rotation: Tensor
    translation: Tensor
    opening_rest: Tensor | None = None


class MotionRetargeter:
    """Maps a driver's expression and pose onto the portrait.

    * ``absolute``: beta_out = s * beta_t, pose_out = pose_t (the driver's own camera).
    * ``relative``: motion relative to the driver's first frame with a face, applied on top of the
      portrait's own expression and pose:
      beta_out = beta_portrait + s * (beta_t - beta_driver0);
      pose_out = pose_portrait ∘ (pose_driver0^-1 ∘ pose_t)  (the driver's head motion expressed in
      its own head frame, re-applied to the portrait's head).
      Except the ``opening`` coefficients (the procedural head's ``jaw_open``), whose zero is a
      closed mouth: there beta_out = max(beta_portrait + s * (beta_t - rest_t), s * beta_t), with
      rest_t the least value the driver has shown up to frame t (its closed mouth, once it has
      closed: speech closes the mouth every few syllables). The portrait's mouth opens by as much as
      the driver's opens beyond its rest, and never shuts below the portrait's own.
      Why: relative to the first frame, a driver that starts mid-sentence (mouth open) shut the
      portrait's mouth below its own whenever it opened less than at that frame; max(beta_portrait,
      s * beta_t) alone kept a smiling portrait's mouth (astronaut: jaw_open 0.22) at its own
      opening for most of a talking clip (its driver: 0.00-0.36, rest 0.00), the output's jaw
      followed the driver's only at its peaks.

    ``reference`` is public state (set it to resume a video in another process).
    Expressions are clamped to the model's bounds when it has them.
    """

    def __init__(
        self,
        portrait: PortraitAnalysis,
        *,
        mode: Literal["relative", "absolute"] = "relative",
        expression_scale: float = 1.0,
        expression_bounds: tuple[float, float] | None = None,
        camera_radius: float | None = cameras.DEFAULT_RADIUS,
        focal: float = cameras.DEFAULT_FOCAL,
        opening: tuple[int, ...] = (),
    ) -> None:
        if mode not in ("relative", "absolute"):
            raise ValueError(f"mode must be 'relative' or 'absolute', got {mode!r}")
        self.portrait = portrait
        self.mode = mode
        self.expression_scale = float(expression_scale)
        self.expression_bounds = expression_bounds
        self.camera_radius = camera_radius
        self.focal = focal
        self.opening = list(opening)
        self.reference: DriverReference | None = None

    def _camera(self, rotation: Tensor, translation: Tensor) -> Tensor:
        return cameras.camera_from_head_pose(
            rotation, translation, radius=self.camera_radius, focal=self.focal
        )

    def _opening(self, driver: Tensor, face_found: bool) -> Tensor:
        """The ``opening`` coefficients of the output (relative mode; see the class docstring)."""
        assert self.reference is not None
        ref = self.reference
        if ref.opening_rest is None:
            ref.opening_rest = driver.clone()
        elif face_found:  # a held frame (no face) repeats old values: nothing new about the rest
            ref.opening_rest = torch.minimum(ref.opening_rest, driver)
        scale = self.expression_scale
        portrait = self.portrait.beta[self.opening]
        return torch.maximum(portrait + scale * (driver - ref.opening_rest), scale * driver)

    def retarget(self, frames: list[FrameAnalysis]) -> list[RetargetedFrame]:
        out: list[RetargetedFrame] = []
        for frame in frames:
            if self.reference is None and frame.face_found:
                self.reference = DriverReference(
                    frame.beta.clone(), frame.rotation.clone(), frame.translation.clone()
                )
            if self.mode == "absolute":
                beta = self.expression_scale * frame.beta
                rotation, translation = frame.rotation, frame.translation
            elif self.reference is None:
                # Relative mode before the driver's face has been seen: the portrait as it is.
                beta = self.portrait.beta.clone()
                rotation, translation = self.portrait.rotation, self.portrait.translation
            else:
                ref = self.reference
                beta = self.portrait.beta + self.expression_scale * (frame.beta - ref.beta)
                if self.opening:
                    beta[self.opening] = self._opening(frame.beta[self.opening], frame.face_found)
                delta = compose_pose(
                    invert_pose(ref.rotation, ref.translation), (frame.rotation, frame.translation)
                )
                rotation, translation = compose_pose(
                    (self.portrait.rotation, self.portrait.translation), delta
                )
            if self.expression_bounds is not None:
                beta = beta.clamp(*self.expression_bounds)
            out.append(
                RetargetedFrame(
                    index=frame.index,
                    beta=beta,
                    rotation=rotation,
                    translation=translation,
                    camera=self._camera(rotation, translation),
                )
            )
        return out
