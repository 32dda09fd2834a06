"""``run_overlapped``, the three-stage frame loop of the worker: order, bounded memory, errors and
cancellation from any stage, and the input generator closed in every case."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from services.worker.errors import JobCancelled
from services.worker.pipeline import run_overlapped, torch_threads


class Source:
    """A generator-like source that records how far it was pulled and whether it was closed."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count, self.fail_at = count, fail_at
        self.pulled = 0
        self.closed = False
        self._gen = self._items()

    def _items(self) -> Iterator[int]:
        try:
            for index in range(self.count):
                if index == self.fail_at:
                    raise ValueError(f"bad chunk {index}")
                self.pulled += 1
                yield index
        finally:
            self.closed = True

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()


@pytest.mark.parametrize("stages", [1, 2])
def test_every_item_goes_through_in_order_with_bounded_items_in_flight(stages: int) -> None:
    source = Source(40)
    finished: list[int] = []
    in_flight_peak = 0
    lock = threading.Lock()

    def middle(item: int) -> int:
        time.sleep(0.002)
        return item * 10

    def relay(item: int) -> int:
        time.sleep(0.001)
        return item + 1

    def last(item: int) -> None:
        nonlocal in_flight_peak
        time.sleep(0.004)  # the slowest stage: the queues fill up
        with lock:
            in_flight_peak = max(in_flight_peak, source.pulled - len(finished))
        finished.append(item // 10)

    after = [relay] * (stages - 1) + [last]
    run_overlapped(source, middle, *after, depth=1)
    assert finished == list(range(40))
    # Pulled but not finished: one per queue slot and one in each stage (source, middle, after...).
    assert in_flight_peak <= (stages + 1) * 1 + stages + 2
    assert source.closed


def test_without_a_stage_after_middle_it_refuses() -> None:
    with pytest.raises(ValueError):
        run_overlapped(iter(range(3)), lambda item: item)


@pytest.mark.parametrize("stage", ["source", "middle", "mark", "write"])
def test_the_first_error_of_any_stage_is_raised_and_stops_the_others(stage: str) -> None:
    source = Source(1000, fail_at=5 if stage == "source" else None)
    finished: list[int] = []

    def middle(item: int) -> int:
        if stage == "middle" and item == 5:
            raise RuntimeError("animate failed")
        return item

    def mark(item: int) -> int:
        if stage == "mark" and item == 5:
            raise KeyError("watermark failed")
        return item

    def write(item: int) -> None:
        if stage == "write" and item == 5:
            raise OSError("disk full")
        finished.append(item)

    expected = {"source": ValueError, "middle": RuntimeError, "mark": KeyError, "write": OSError}[stage]
    with pytest.raises(expected):
        run_overlapped(source, middle, mark, write, depth=2)
    assert source.closed
    assert source.pulled < 25  # stopped early, not drained
    assert finished == list(range(len(finished))) and len(finished) <= 5
    assert not [t for t in threading.enumerate() if t.name.startswith(("goha-prepare", "goha-finish"))]


def test_a_cancellation_seen_after_a_written_chunk_ends_the_loop() -> None:
    source = Source(100)
    written: list[int] = []

    def last(item: int) -> None:
        written.append(item)
        if len(written) == 3:
            raise JobCancelled("job-1")

    with pytest.raises(JobCancelled):
        run_overlapped(source, lambda item: item, lambda item: item, last)
    assert written == [0, 1, 2]
    assert source.closed


def test_helper_threads_use_one_torch_thread_and_the_caller_keeps_its_own() -> None:
    import torch

    seen: dict[str, int] = {}
    before = torch.get_num_threads()

    def middle(item: int) -> int:
        seen["middle"] = torch.get_num_threads()
        return item

    def last(item: int) -> None:
        seen["last"] = torch.get_num_threads()

    with torch_threads(2):
        run_overlapped(iter(range(3)), middle, last)
        assert seen == {"middle": 2, "last": 1}
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("size", [128, 512])
def test_frame_conversion_matches_torch_bilinear_resize(size: int) -> None:
    import numpy as np

    from services.worker.pipeline import to_uint8_frames

    frames = np.tanh(np.random.default_rng(0).normal(size=(3, 3, 128, 128)) * 2).astype(np.float32)
    tensor = torch_reference(frames, size)
    got = np.stack(to_uint8_frames(frames, size))
    assert got.shape == (3, size, size, 3) and got.dtype == np.uint8
    difference = np.abs(got.astype(np.int16) - tensor.astype(np.int16))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-4  # rounding ties only


def torch_reference(frames, size: int):
    """The previous conversion: torch bilinear (align_corners=False), clamp, round."""
    import torch

    tensor = torch.from_numpy(frames)
    if size != frames.shape[-1]:
        tensor = torch.nn.functional.interpolate(
            tensor, size=(size, size), mode="bilinear", align_corners=False
        )
    return ((tensor.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
