"""Paste-back in the worker pipeline: the portrait's framing by default, today's square crop with
``paste_back=false``, and a blanked network output blanks the face in the delivered video."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from services.inference.backend import AnimateOutput
from services.inference.engine import InProcessInference
from services.worker.context import signing_chain, watermark_secret
from services.worker.pipeline import PipelineConfig, PipelineContext, ReenactmentPipeline, to_uint8_frames
from shared.face.morphable import load_procedural_model
from shared.face.pipeline import FaceAnalyzer
from shared.platform.models import Job
from shared.platform.provenance import load_signing_key
from tests.worker.conftest import make_submitter

pytestmark = pytest.mark.slow

# A landscape crop of the astronaut, enlarged (smaller portraits are enlarged to a 512-px short side,
# where the watermark is calibrated): the output must keep this framing, not the model's square.
PORTRAIT = cv2.resize(data.astronaut()[:384], (768, 576), interpolation=cv2.INTER_CUBIC)


class RecordingInference:
    """The real in-process backend; remembers every animate output, optionally blanks it."""

    def __init__(self, inner: InProcessInference, *, blank: bool = False) -> None:
        self.inner, self.blank = inner, blank
        self.outputs: list[AnimateOutput] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def animate(self, planes: np.ndarray, expr_renders: np.ndarray, cameras: np.ndarray) -> AnimateOutput:
        output = self.inner.animate(planes, expr_renders, cameras)
        if self.blank:  # black head, fully opaque: what the network would return for a blank face
            output = AnimateOutput(output.low_res, -np.ones_like(output.frames), np.ones_like(output.alpha))
        self.outputs.append(output)
        return output


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def make_pipeline(embedded_settings, embedded_db, local_storage, tiny_checkpoint):
    inference = InProcessInference.from_checkpoint(tiny_checkpoint)
    key = load_signing_key(embedded_settings)
    context = PipelineContext(
        session_factory=embedded_db.sessionmaker,
        storage=local_storage,
        inference=inference,
        face_model=load_procedural_model(),
        image_size=128,
        signing_chain=signing_chain(embedded_settings),
        watermark_secret=watermark_secret(embedded_settings, key),
        provenance_key=key,
        config=PipelineConfig(chunk_frames=4),
    )

    def build(*, blank: bool = False) -> tuple[ReenactmentPipeline, RecordingInference]:
        recorder = RecordingInference(inference, blank=blank)
        return ReenactmentPipeline(dataclasses.replace(context, inference=recorder)), recorder

    return build


def _run_orbit(
    pipeline, embedded_settings, embedded_db, local_storage, tmp_path: Path, options: dict
) -> list:
    submit = make_submitter(embedded_settings, embedded_db, local_storage)
    job_id = submit(
        None,
        job_type="orbit",
        options={"frame_limit": 4, "output_fps": 4, **options},
        portrait=_png(PORTRAIT),
    )
    assert pipeline.run(job_id) == "succeeded"
    with embedded_db.session() as session:
        key = session.get(Job, job_id).result_key
    out = tmp_path / f"result-{job_id}.mp4"
    local_storage.download_to(key, out)
    with av.open(str(out)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_paste_back_keeps_the_portraits_framing_and_off_gives_the_square_crop(
    make_pipeline, embedded_settings, embedded_db, local_storage, tmp_path: Path
) -> None:
    pipeline, recorder = make_pipeline()
    pasted = _run_orbit(
        pipeline, embedded_settings, embedded_db, local_storage, tmp_path, {"output_size": 256}
    )
    assert len(pasted) == 4
    assert pasted[0].shape == (576, 768, 3)  # the portrait's size and aspect; output_size is for the crop
    # Away from the head (top-left corner, outside the crop) the frame is the portrait itself, up to
    # H.264 and the invisible watermark.
    corner = np.abs(pasted[0][:60, :80].astype(int) - PORTRAIT[:60, :80].astype(int))
    assert corner.mean() < 4, corner.mean()
    # The extra animate call (the head's opacity at the portrait's pose) came first.
    assert recorder.outputs[0].frames.shape[0] == 1

    pipeline, recorder = make_pipeline()
    cropped = _run_orbit(
        pipeline,
        embedded_settings,
        embedded_db,
        local_storage,
        tmp_path,
        {"output_size": 256, "paste_back": False},
    )
    assert cropped[0].shape == (256, 256, 3)
    assert all(output.frames.shape[0] > 1 for output in recorder.outputs)  # no paste-back set-up call
    # Today's output: the network's frames resized to the square, then labelled and watermarked.
    # Away from the label's corner they differ only by the watermark (strong at 256 px) and H.264.
    expected = to_uint8_frames(recorder.outputs[0].frames, 256)[0]
    difference = np.abs(cropped[0][:192, :192].astype(int) - expected[:192, :192].astype(int))
    assert difference.mean() < 8 and np.median(difference) <= 6, (difference.mean(), np.median(difference))


def test_a_blanked_network_output_blanks_the_face_in_the_video(
    make_pipeline, embedded_settings, embedded_db, local_storage, tmp_path: Path
) -> None:
    pipeline, _ = make_pipeline(blank=True)
    frames = _run_orbit(pipeline, embedded_settings, embedded_db, local_storage, tmp_path, {})
    analysis = FaceAnalyzer(load_procedural_model(), 128).analyze_portrait(PORTRAIT)
    landmarks = analysis.source_landmarks
    x0, y0 = landmarks.min(axis=0).astype(int)
    x1, y1 = landmarks.max(axis=0).astype(int)
    for frame in frames:
        face = frame[y0:y1, x0:x1].astype(int)
        assert face.mean() < 12 and np.percentile(face, 99) < 40, (face.mean(), np.percentile(face, 99))
        assert PORTRAIT[y0:y1, x0:x1].mean() > 80  # the portrait had a face there
