"""Small pure pieces of the runner, tested alone: the CPU-rate duty cycle and frame reading."""

from __future__ import annotations

import os

import pytest

from runner._throttle import DutyCycle
from runner._wire import FrameReader, frame, write_frame


def _simulate(rate: float, seconds: float, tick: float = 0.1) -> float:
    """A busy single-threaded tree under the duty cycle, on a simulated clock."""
    cycle = DutyCycle(rate)
    now, cpu, running = 0.0, 0.0, True
    while now < seconds:
        action = cycle.update(now, cpu)
        if action == "stop":
            running = False
        elif action == "continue":
            running = True
        step = min(cycle.next_check(now), seconds) - now
        step = max(step, 1e-6)
        if running:
            cpu += step
        now += step
    return cpu / seconds


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 0.75])
def test_duty_cycle_holds_the_average_rate(rate: float) -> None:
    assert _simulate(rate, 60.0) == pytest.approx(rate, rel=0.05)


def test_duty_cycle_leaves_an_idle_tree_alone() -> None:
    cycle = DutyCycle(0.5)
    assert cycle.update(0.0, 0.0) is None
    assert cycle.update(0.1, 0.01) is None  # used less than its share
    assert cycle.stopped_until is None


def test_frames_survive_arbitrary_chunking() -> None:
    payloads = [b"", b"a", b"x" * 70000, b"tail"]
    stream = b"".join(frame(p) for p in payloads)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    reader = FrameReader()
    got: list[bytes] = []
    try:
        for start in range(0, len(stream), 777):  # a writer that stalls mid-frame
            os.write(write_end, stream[start : start + 777])
            got += reader.read_from(read_end)
        os.close(write_end)
        got += reader.read_from(read_end)
    finally:
        os.close(read_end)
    assert got == payloads
    assert reader.eof and reader.pending == 0


def test_truncated_frame_is_visible_at_eof() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.write(write_end, frame(b"complete") + frame(b"cut short")[:6])
    os.close(write_end)
    reader = FrameReader()
    assert reader.read_from(read_end) == [b"complete"]
    assert reader.eof and reader.pending > 0
    os.close(read_end)


def test_write_frame_round_trip() -> None:
    read_end, write_end = os.pipe()
    write_frame(write_end, b"hello")
    os.close(write_end)
    reader = FrameReader()
    assert reader.read_from(read_end) == [b"hello"]
    os.close(read_end)
