"""The memory watch's schedule and bound, driven by an injected clock (no processes)."""

from __future__ import annotations

import itertools

import pytest

from runner._watch import FIRST, FLOOR, MemoryWatch

MiB = 1 << 20


def test_it_looks_sooner_as_a_growing_tree_nears_its_limit() -> None:
    watch = MemoryWatch(200 * MiB, ceiling=0.1, start=0.0)
    assert watch.due == pytest.approx(FIRST)
    now, used, gaps = 0.0, 0, []
    while used <= 200 * MiB:  # 1 GiB/s, looked at when the watch asks
        now = watch.due
        used = int(now * 1024 * MiB)
        gaps.append(watch.seen(now, used) - now)
    assert gaps[-1] == pytest.approx(FLOOR)  # over the limit: keep looking closely until the kill
    approach = gaps[gaps.index(max(gaps)) :]  # far from it, the gap may double; then it shrinks
    assert len(approach) > 3 and all(b <= a + 1e-12 for a, b in itertools.pairwise(approach))
    assert used - 200 * MiB <= 1024 * MiB * FLOOR + 1  # seen within one floor gap of the pace
    assert watch.bound >= used - 200 * MiB  # and the bound covers what it saw


def test_a_tree_that_stops_growing_is_looked_at_less_often_up_to_the_interval() -> None:
    watch = MemoryWatch(200 * MiB, ceiling=0.1, start=0.0)
    watch.seen(FIRST, 150 * MiB)  # fast at first
    gaps = []
    for _ in range(12):
        now = watch.due
        gaps.append(watch.seen(now, 150 * MiB) - now)
    assert all(b == pytest.approx(min(2 * a, 0.1)) for a, b in itertools.pairwise(gaps))
    assert gaps[-1] == pytest.approx(0.1)
    assert watch.bound == 0  # it never came near enough for its pace to carry it past


def test_the_bound_counts_a_true_peak_the_looks_missed() -> None:
    watch = MemoryWatch(200 * MiB, ceiling=0.1, start=0.0)
    watch.seen(0.05, 20 * MiB)
    assert watch.bound_with(20 * MiB) == 0
    assert watch.bound_with(300 * MiB) == 100 * MiB  # a spike between two looks
