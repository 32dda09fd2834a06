import numpy as np
import pytest
import torch

from shared.face.align import (
    AlignmentTemplate,
    FaceAligner,
    anchor_points,
    apply_affine,
    estimate_similarity,
    paste_back,
)
from shared.model import cameras
from tests.face.analysis_support import analyzer, astronaut, astronaut_portrait, model


def test_similarity_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, size=(5, 2))
    angle, scale, shift = np.deg2rad(17.0), 1.7, np.array([12.0, -4.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = scale * points @ rotation.T + shift
    matrix = estimate_similarity(points, target)
    assert np.allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    assert np.allclose(matrix[:, 2], shift, atol=1e-9)


def test_template_is_the_projected_mean_shape_at_the_frontal_camera() -> None:
    template = AlignmentTemplate.from_model(model())
    alpha, beta = model().zero_coefficients(1)
    uv, _ = cameras.project_points(model().landmarks(alpha, beta), cameras.frontal_camera().unsqueeze(0))
    assert np.allclose(template.anchors, anchor_points(uv[0].numpy()), atol=1e-6)
    right_eye, left_eye, mouth = template.anchors
    # A symmetric frontal face: eyes level, mouth centred below, the face filling about half the crop.
    assert abs(right_eye[1] - left_eye[1]) < 1e-6 and abs(mouth[0] - 0.5) < 1e-6
    assert right_eye[0] < 0.5 < left_eye[0] and mouth[1] > right_eye[1]
    assert 0.15 < left_eye[0] - right_eye[0] < 0.35


def test_astronaut_crop_puts_the_anchors_on_the_template_and_is_reproducible() -> None:
    portrait = astronaut_portrait()
    crop = portrait.crop_transform
    assert portrait.crop.shape == (128, 128, 3) and portrait.crop.dtype == np.uint8
    template_px = analyzer().template.pixel_anchors(128)
    # Three anchors, four similarity degrees of freedom: a least-squares fit lands within a few px.
    assert np.abs(anchor_points(portrait.landmarks) - template_px).max() < 4.0
    again = analyzer().aligner.crop(astronaut(), portrait.source_landmarks)
    assert np.array_equal(again.image, portrait.crop)
    assert np.allclose(again.matrix, crop.matrix)
    # The inverse maps crop points back to the source.
    assert np.allclose(
        crop.to_source(crop.to_crop(portrait.source_landmarks)), portrait.source_landmarks, atol=1e-6
    )


def test_keep_roll_crop_has_no_rotation() -> None:
    landmarks = astronaut_portrait().source_landmarks
    matrix = analyzer().aligner.matrix_for(landmarks, keep_roll=True)
    assert (
        abs(matrix[0, 1]) < 1e-12
        and abs(matrix[1, 0]) < 1e-12
        and matrix[0, 0] == pytest.approx(matrix[1, 1])
    )
    similarity = analyzer().aligner.matrix_for(landmarks)
    assert np.sqrt(abs(np.linalg.det(similarity[:, :2]))) == pytest.approx(matrix[0, 0])
    centroid = anchor_points(landmarks).mean(0)
    target = analyzer().template.pixel_anchors(128).mean(0)
    assert np.allclose(apply_affine(matrix, centroid[None])[0], target)


def test_large_faces_are_shrunk_without_aliasing_artifacts() -> None:
    # A 4x crop (scale < 0.5 triggers the area pre-shrink): the result must match a direct
    # area-resampled reference closely, where a plain bilinear warp would alias the hair texture.
    image = astronaut()
    aligner = FaceAligner(analyzer().template, 64)
    landmarks = astronaut_portrait().source_landmarks
    crop = aligner.crop(image, landmarks)
    assert crop.scale < 0.5
    fine = FaceAligner(analyzer().template, 512).crop(image, landmarks).image
    reference = fine.reshape(64, 8, 64, 8, 3).mean(axis=(1, 3))
    assert np.abs(crop.image.astype(float) - reference).mean() < 6.0


@pytest.mark.parametrize("frame_size", [128, 256])
def test_paste_back_restores_the_original_under_the_crop(frame_size: int) -> None:
    portrait = astronaut_portrait()
    original = astronaut()
    frame = torch.nn.functional.interpolate(
        torch.from_numpy(portrait.crop).permute(2, 0, 1)[None].float(), size=frame_size, mode="bilinear"
    )[0].permute(1, 2, 0)
    pasted = paste_back(frame.numpy().clip(0, 255).astype(np.uint8), portrait.crop_transform, original)
    assert pasted.shape == original.shape and pasted.dtype == np.uint8
    # Inside the face the pasted pixels are the original resampled twice: close, not identical.
    face = portrait.source_landmarks.astype(int)
    x0, y0 = face.min(0)
    x1, y1 = face.max(0)
    difference = np.abs(pasted[y0:y1, x0:x1].astype(int) - original[y0:y1, x0:x1].astype(int))
    assert difference.mean() < 6.0
    # Far outside the crop nothing changes.
    assert np.array_equal(pasted[480:, 480:], original[480:, 480:])


def test_paste_back_places_a_marked_frame_where_the_face_was() -> None:
    portrait = astronaut_portrait()
    original = astronaut()
    frame = np.zeros((128, 128, 3), np.uint8)
    frame[..., 1] = 255  # solid green
    pasted = paste_back(frame, portrait.crop_transform, original)
    nose = portrait.source_landmarks[30].round().astype(int)
    assert tuple(pasted[nose[1], nose[0]]) == (0, 255, 0)
    with pytest.raises(ValueError):
        paste_back(frame, portrait.crop_transform, original[:100])
