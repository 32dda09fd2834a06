import numpy as np

from shared.face.masks import FaceParser, LandmarkFaceParser, MaskConfig
from tests.face.analysis_support import astronaut_portrait


def test_keep_mask_removes_eyes_brows_and_mouth_and_keeps_skin() -> None:
    portrait = astronaut_portrait()
    keep = portrait.keep_mask
    lm = portrait.landmarks
    assert keep.shape == (128, 128) and keep.dtype == np.float32
    assert set(np.unique(keep)) <= {0.0, 1.0}

    def at(point: np.ndarray) -> float:
        x, y = np.round(point).astype(int)
        return float(keep[y, x])

    for removed in (lm[36:42].mean(0), lm[42:48].mean(0), lm[48:60].mean(0), lm[19], lm[24], lm[51], lm[57]):
        assert at(removed) == 0.0
    # Nose tip, nose bridge, cheeks (between eye and jaw) and the forehead above the brows stay.
    cheek_right = 0.5 * (lm[41] + lm[3])
    cheek_left = 0.5 * (lm[46] + lm[13])
    forehead = lm[27] + 1.2 * (lm[27] - lm[30])
    for kept in (lm[30], lm[28], cheek_right, cheek_left, forehead):
        assert at(kept) == 1.0
    removed_fraction = 1.0 - keep.mean()
    assert 0.02 < removed_fraction < 0.2


def test_eyes_are_dilated_beyond_the_eye_outline() -> None:
    lm = astronaut_portrait().landmarks
    undilated = LandmarkFaceParser(MaskConfig(eye_dilation=0.0)).regions(128, lm)["eyes"]
    dilated = LandmarkFaceParser(MaskConfig(eye_dilation=4.0 / 128)).regions(128, lm)["eyes"]
    assert undilated.sum() > 0
    assert (dilated >= undilated).all() and dilated.sum() > 1.5 * undilated.sum()


def test_landmark_parser_satisfies_the_protocol_and_scales_with_the_crop() -> None:
    parser = LandmarkFaceParser()
    assert isinstance(parser, FaceParser)
    lm = astronaut_portrait().landmarks
    small = parser.keep_mask(np.zeros((128, 128, 3), np.uint8), lm)
    large = parser.keep_mask(np.zeros((512, 512, 3), np.uint8), lm * 4.0 + 1.5)
    # The same face at 4x resolution removes about the same fraction of the image.
    assert abs((1 - small.mean()) - (1 - large.mean())) < 0.01
