"""The eviction policy: whom to stop when running work outgrows the memory budget. Pure."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies import RunningUsage, choose_evictions

GiB = 1 << 30


def run(key: str, measured: float, estimate: float | None, **changes: object) -> RunningUsage:
    return RunningUsage(
        key,
        int(measured * GiB),
        None if estimate is None else int(estimate * GiB),
        **changes,  # type: ignore[arg-type]
    )


def test_nothing_is_stopped_within_the_budget() -> None:
    assert choose_evictions([run("a", 1.5, 1), run("b", 1.4, 1)], 3 * GiB) == []


def test_only_runs_past_their_estimate_are_candidates() -> None:
    chosen = choose_evictions([run("grew", 2, 1), run("as expected", 1.5, 1.5)], 3 * GiB)
    assert [key for key, _ in chosen] == ["grew"]
    reason = chosen[0][1]
    assert "3.5 GiB of 3.0 GiB" in reason and "measured 2.0 GiB against an estimate of 1.0 GiB" in reason


def test_retryable_then_low_priority_then_largest_overage_go_first() -> None:
    runs = [
        run("important", 1, 0.5, priority=5, retryable=True),
        run("precious", 1, 0.1, priority=0, retryable=False),
        run("small overage", 1, 0.8, priority=0, retryable=True),
        run("big overage", 1, 0.2, priority=0, retryable=True),
    ]
    order = [key for key, _ in choose_evictions(runs, int(0.5 * GiB))]
    assert order == ["big overage", "small overage", "important"]  # one run always keeps going


def test_stops_only_as_many_as_needed() -> None:
    runs = [run("a", 1, 0.5), run("b", 1, 0.4), run("c", 1, 0.3)]
    assert [key for key, _ in choose_evictions(runs, int(2.5 * GiB))] == ["c"]


def test_a_lone_run_and_a_run_evicted_too_often_are_spared() -> None:
    assert choose_evictions([run("alone", 8, 1)], 3 * GiB) == []
    runs = [run("again", 2, 0.5, evictions=3), run("other", 2, 1.9)]
    assert [key for key, _ in choose_evictions(runs, 3 * GiB, max_evictions=3)] == ["other"]


def test_a_run_without_estimate_counts_as_over_by_all_it_holds() -> None:
    assert [key for key, _ in choose_evictions([run("unknown", 2, None), run("known", 2, 1)], 3 * GiB)] == [
        "unknown"
    ]


runs_strategy = st.lists(
    st.builds(
        RunningUsage,
        key=st.uuids(),
        memory_bytes=st.integers(0, 8 * GiB),
        estimate_bytes=st.none() | st.integers(0, 8 * GiB),
        priority=st.integers(-5, 5),
        retryable=st.booleans(),
        evictions=st.integers(0, 4),
    ),
    max_size=12,
)


@given(runs_strategy, st.integers(0, 16 * GiB))
def test_evictions_are_minimal_sound_and_spare_one(runs: list[RunningUsage], budget: int) -> None:
    chosen = choose_evictions(runs, budget, max_evictions=3)
    keys = [key for key, _ in chosen]
    by_key = {run.key: run for run in runs}
    assert len(set(keys)) == len(keys) and len(keys) < max(len(runs), 1)
    for key in keys:  # only runs past their estimate, and not evicted too often
        assert by_key[key].overage > 0 and by_key[key].evictions < 3
    total = sum(run.memory_bytes for run in runs)
    if total <= budget:
        assert keys == []
    freed = [by_key[key].memory_bytes for key in keys]
    # Minimal: before the last choice the budget was still exceeded.
    if keys:
        assert total - sum(freed[:-1]) > budget
