"""The job's stage and the worker's estimate of the time left (``progress.stage`` / ``progress.eta_s``).

The estimate is made only from what was measured, never from a constant:

- while frames are being animated: this job's own rate so far (loop seconds per delivered frame) times
  the frames left, plus the tail (encoder flush + audio, C2PA signing, upload) the previous job of this
  worker process took;
- before the first chunk is delivered: the previous job's seconds per frame times this job's frames,
  plus its tail; after the loop: what is left of the previous job's tail;
- nothing measured yet (the process's first job, before its first chunk): no estimate (``None``).

The stages before the frame loop (portrait analysis, reconstruction, paste-back set-up) carry no
estimate: the frame count is not known until the driving clip is probed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class MeasuredRates:
    per_frame_s: float  # frame loop wall seconds per delivered frame
    tail_s: float  # from the end of the frame loop to the uploaded result


_last: MeasuredRates | None = None
_lock = threading.Lock()


def last_rates() -> MeasuredRates | None:
    """What the previous finished job of this process measured (None before the first)."""
    with _lock:
        return _last


def forget_rates() -> None:
    global _last
    with _lock:
        _last = None


class StageClock:
    """Times one job's frame loop and tail; ``eta`` answers the seconds left at any point."""

    def __init__(self, previous: MeasuredRates | None = None, clock=time.monotonic) -> None:  # noqa: ANN001
        self.previous = previous if previous is not None else last_rates()
        self.clock = clock
        self.loop_started: float | None = None
        self.tail_started: float | None = None

    def start_loop(self) -> None:
        self.loop_started = self.clock()

    def start_tail(self) -> None:
        self.tail_started = self.clock()

    def eta(self, done: int, total: int) -> float | None:
        previous = self.previous
        if self.tail_started is not None:
            if previous is None:
                return None
            return max(0.0, previous.tail_s - (self.clock() - self.tail_started))
        if self.loop_started is None:
            return None
        left = max(0, total - done)
        if done > 0:
            per_frame = (self.clock() - self.loop_started) / done
            return left * per_frame + (previous.tail_s if previous else 0.0)
        if previous is None:
            return None
        return left * previous.per_frame_s + previous.tail_s

    def finish(self, frames: int) -> MeasuredRates | None:
        """Record this job's rates for the next job of the process (after the result was uploaded)."""
        global _last
        if self.loop_started is None or self.tail_started is None or frames <= 0:
            return None
        rates = MeasuredRates(
            per_frame_s=(self.tail_started - self.loop_started) / frames,
            tail_s=self.clock() - self.tail_started,
        )
        with _lock:
            _last = rates
        return rates
