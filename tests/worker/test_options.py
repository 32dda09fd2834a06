"""The worker's view of the job options: paste-back defaults on, and a bad value fails typed."""

from __future__ import annotations

import pytest

from services.worker.errors import JobFailure
from services.worker.options import JobOptions


def test_paste_back_is_on_unless_the_job_turns_it_off() -> None:
    assert JobOptions.from_job("reenact", {}).paste_back is True
    assert JobOptions.from_job("reenact", {"paste_back": None}).paste_back is True
    assert JobOptions.from_job("reenact", {"paste_back": False}).paste_back is False
    assert JobOptions.from_job("orbit", {"paste_back": True}).paste_back is True
    # A hand-written row may hold strings.
    assert JobOptions.from_job("reenact", {"paste_back": "false"}).paste_back is False
    assert JobOptions.from_job("reenact", {"paste_back": "1"}).paste_back is True


def test_an_unreadable_paste_back_value_fails_with_invalid_options() -> None:
    with pytest.raises(JobFailure) as info:
        JobOptions.from_job("reenact", {"paste_back": "sometimes"})
    assert info.value.code == "invalid_options"
