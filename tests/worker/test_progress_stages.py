"""progress.stage and progress.eta_s (issue 18): the worker's stages in order, estimates only from
measured rates, and the API's view of them."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from services.gateway.service import job_progress
from services.worker import progress
from services.worker.progress import MeasuredRates, StageClock
from shared.platform.jobs import STAGES
from tests.worker.conftest import make_submitter
from tests.worker.test_pipeline import pipeline  # noqa: F401 - the fixture


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_estimates_come_only_from_measurements() -> None:
    clock = FakeClock()
    first = StageClock(previous=None, clock=clock)
    first.previous = None
    assert first.eta(0, 50) is None  # before the loop: the frame count is all there is
    first.start_loop()
    assert first.eta(0, 50) is None  # nothing measured in this process yet
    clock.now += 10.0
    assert first.eta(10, 50) == pytest.approx(40.0)  # 1 s per frame so far, 40 frames left, no tail known
    clock.now += 40.0
    first.start_tail()
    assert first.eta(0, 0) is None
    clock.now += 3.0
    progress.forget_rates()
    rates = first.finish(50)
    assert rates == MeasuredRates(per_frame_s=1.0, tail_s=3.0) and progress.last_rates() == rates

    second = StageClock(clock=clock)  # the next job of the process starts from those rates
    second.start_loop()
    assert second.eta(0, 20) == pytest.approx(23.0)
    clock.now += 1.0
    assert second.eta(2, 20) == pytest.approx(18 * 0.5 + 3.0)  # its own rate once it has one
    second.start_tail()
    clock.now += 1.0
    assert second.eta(0, 0) == pytest.approx(2.0)
    progress.forget_rates()


def test_the_api_shows_the_stage_in_words_and_counts_the_estimate_down() -> None:
    now = dt.datetime(2026, 12, 7, 12, 0, 0, tzinfo=dt.UTC)
    job = SimpleNamespace(
        state="running",
        progress_stage="animating",
        progress_eta_s=20.0,
        frames_done=40,
        frames_total=75,
        updated_at=now - dt.timedelta(seconds=5),
    )
    shown = job_progress(job, 0.53, now)
    assert (shown.stage, shown.stage_text, shown.eta_s) == ("animating", "animating 40/75", 15.0)
    job.progress_stage = "analysing_portrait"
    job.progress_eta_s = None
    shown = job_progress(job, 0.0, now)
    assert (shown.stage, shown.stage_text, shown.eta_s) == ("analysing_portrait", "analysing portrait", None)
    for state in ("queued", "succeeded", "failed", "cancelled"):
        job.state = state
        job.progress_eta_s = 3.0
        shown = job_progress(job, None, now)
        assert (shown.stage, shown.stage_text, shown.eta_s) == (state, state, None)


@pytest.mark.slow
def test_a_job_goes_through_its_stages(
    pipeline,  # noqa: F811
    embedded_settings,
    embedded_db,
    local_storage,
    monkeypatch,
) -> None:
    written: list[tuple[str, float | None]] = []
    original = pipeline._progress

    def spy(job_id, done, total, **stage):
        if "stage" in stage:
            written.append((stage["stage"], stage.get("eta_s")))
        return original(job_id, done, total, **stage)

    monkeypatch.setattr(pipeline, "_progress", spy)
    progress.forget_rates()
    submit = make_submitter(embedded_settings, embedded_db, local_storage)
    options = {"frame_limit": 16, "output_fps": 10}
    assert pipeline.run(submit(None, job_type="orbit", options=options)) == "succeeded"
    stages = [stage for stage, _ in written]
    assert set(stages) <= set(STAGES)
    order = ["analysing_portrait", "reconstructing", "preparing_paste_back", "animating", "encoding"]
    assert [stages.index(name) for name in order] == sorted(stages.index(name) for name in order)
    assert stages[-2:] == ["signing", "uploading"]
    etas = dict(written)
    assert etas["analysing_portrait"] is None and etas["encoding"] is None  # first job: no tail measured
    assert written[stages.index("animating")][1] is None  # ... nor a rate before its first chunk
    assert any(eta is not None for stage, eta in written if stage in ("animating", "marking"))

    written.clear()
    assert pipeline.run(submit(None, job_type="orbit", options=options)) == "succeeded"
    stages = [stage for stage, _ in written]
    assert written[stages.index("animating")][1] is not None  # the previous job's rates
    assert dict(written)["encoding"] is not None
    progress.forget_rates()
