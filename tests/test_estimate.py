"""The usage estimator: pure, no processes."""

from __future__ import annotations

import pytest

from policies import UsageEstimator

MiB = 1 << 20


def test_without_history_the_limit_then_the_default_stands_in() -> None:
    estimator = UsageEstimator(default_memory=256 * MiB, default_cpu=1.0)
    assert estimator.estimate("new", memory_limit=512 * MiB).memory_bytes == 512 * MiB
    assert estimator.estimate("new", memory_limit=512 * MiB).source == "limit"
    fallback = estimator.estimate("new")
    assert (fallback.memory_bytes, fallback.cpu_cores, fallback.source) == (256 * MiB, 1.0, "default")
    assert UsageEstimator().estimate("new").memory_bytes is None


def test_a_high_quantile_of_measured_peaks() -> None:
    estimator = UsageEstimator(quantile=0.9, decay=1.0)
    for peak in range(1, 11):  # 1..10 MiB, equal weights
        estimator.observe("t", peak_memory_bytes=peak * MiB, cpu_seconds=0.5, wall_seconds=1.0)
    estimate = estimator.estimate("t", memory_limit=1024 * MiB)
    assert estimate.memory_bytes == 9 * MiB and estimate.source == "history"
    assert estimate.cpu_cores == pytest.approx(0.5)


def test_recent_runs_weigh_more() -> None:
    estimator = UsageEstimator(quantile=0.95, decay=0.5)
    for _ in range(10):
        estimator.observe("t", peak_memory_bytes=500 * MiB, cpu_seconds=1, wall_seconds=1)
    for _ in range(6):
        estimator.observe("t", peak_memory_bytes=100 * MiB, cpu_seconds=1, wall_seconds=1)
    # The old 500 MiB runs now carry less than 2% of the weight.
    assert estimator.estimate("t").memory_bytes == 100 * MiB


def test_a_memory_kill_raises_the_estimate_until_a_success() -> None:
    estimator = UsageEstimator(growth_after_oom=1.5)
    estimator.observe("t", peak_memory_bytes=80 * MiB, cpu_seconds=1, wall_seconds=1)
    estimator.observe(
        "t",
        peak_memory_bytes=100 * MiB,
        cpu_seconds=1,
        wall_seconds=1,
        outcome="memory_exceeded",
        memory_limit=100 * MiB,
    )
    raised = estimator.estimate("t", memory_limit=100 * MiB)
    assert raised.memory_bytes == 150 * MiB and raised.source == "oom"
    estimator.observe("t", peak_memory_bytes=140 * MiB, cpu_seconds=1, wall_seconds=1)
    settled = estimator.estimate("t")
    assert (
        settled.source == "history" and settled.memory_bytes == 150 * MiB
    )  # the quantile still sees the floor


def test_an_eviction_makes_its_measured_peak_a_floor() -> None:
    estimator = UsageEstimator()
    estimator.observe("t", peak_memory_bytes=100 * MiB, cpu_seconds=1, wall_seconds=10)
    estimator.observe("t", peak_memory_bytes=700 * MiB, cpu_seconds=1, wall_seconds=2, outcome="evicted")
    raised = estimator.estimate("t", memory_limit=2048 * MiB)
    assert (raised.memory_bytes, raised.source) == (700 * MiB, "evicted")
    assert raised.duration_seconds == 10  # a stopped run says nothing of how long a run takes


def test_jobs_of_many_sizes_are_learned_as_a_share_of_their_limit() -> None:
    estimator = UsageEstimator(decay=1.0)
    for limit in (100, 200, 400):  # one callable, each job's limit 1.25x its peak
        estimator.observe("hold", peak_memory_bytes=limit * MiB * 4 // 5, cpu_seconds=1, wall_seconds=1,
                          memory_limit=limit * MiB)  # fmt: skip
    assert estimator.estimate("hold", memory_limit=1000 * MiB).memory_bytes == 800 * MiB
    same = UsageEstimator()  # one limit only: the measured peaks themselves
    for peak in (50, 60):
        same.observe("t", peak_memory_bytes=peak * MiB, cpu_seconds=1, wall_seconds=1, memory_limit=1 << 30)
    assert same.estimate("t", memory_limit=2 << 30).memory_bytes == 60 * MiB


def test_cpu_rate_is_capped_by_the_quota() -> None:
    estimator = UsageEstimator()
    estimator.observe("t", peak_memory_bytes=MiB, cpu_seconds=4, wall_seconds=1)  # 4 cores busy
    assert estimator.estimate("t", cpu_limit=1.5).cpu_cores == 1.5


def test_a_rate_is_learned_only_from_runs_long_enough_to_measure_one() -> None:
    """A 1 ms run with one 4 ms tick of CPU accounting is not four cores busy."""
    estimator = UsageEstimator(min_rate_seconds=0.3)
    for _ in range(5):
        estimator.observe("t", peak_memory_bytes=MiB, cpu_seconds=0.004, wall_seconds=0.001)
    assert estimator.estimate("t").cpu_cores is None
    assert estimator.estimate("t", cpu_limit=0.5).cpu_cores == 0.5  # the limit stands in
    estimator.observe("t", peak_memory_bytes=MiB, cpu_seconds=0.2, wall_seconds=1.0)
    assert estimator.estimate("t").cpu_cores == pytest.approx(0.2)


def test_a_rate_never_exceeds_the_cores_a_run_may_use() -> None:
    estimator = UsageEstimator(max_cores=2.0)
    estimator.observe("wide", peak_memory_bytes=MiB, cpu_seconds=15, wall_seconds=1)
    assert estimator.estimate("wide").cpu_cores == 2.0
    estimator.observe("capped", peak_memory_bytes=MiB, cpu_seconds=1.9, wall_seconds=1, cpu_limit=0.5)
    assert estimator.estimate("capped").cpu_cores == 0.5


@pytest.mark.parametrize("outcome", ["cancelled", "lost"])
def test_runs_stopped_from_outside_teach_nothing(outcome: str) -> None:
    estimator = UsageEstimator()
    estimator.observe("t", peak_memory_bytes=MiB, cpu_seconds=0.1, wall_seconds=1, outcome=outcome)
    assert estimator.tasks() == [] and estimator.version_of("t") == 0


def test_an_estimate_is_worked_out_once_per_thing_learned() -> None:
    estimator = UsageEstimator()
    estimator.observe("t", peak_memory_bytes=10 * MiB, cpu_seconds=0.1, wall_seconds=1)
    first = estimator.estimate("t", memory_limit=100 * MiB)
    assert estimator.estimate("t", memory_limit=100 * MiB) is first  # no work until "t" learns
    estimator.observe("other", peak_memory_bytes=MiB, cpu_seconds=0.1, wall_seconds=1)
    assert estimator.estimate("t", memory_limit=100 * MiB) is first  # another key learned
    estimator.observe("t", peak_memory_bytes=20 * MiB, cpu_seconds=0.1, wall_seconds=1)
    assert estimator.version_of("t") == 2
    assert estimator.estimate("t", memory_limit=100 * MiB).memory_bytes == 20 * MiB


def test_window_forgets_the_oldest() -> None:
    estimator = UsageEstimator(window=3, decay=1.0, quantile=1.0)
    for peak in (900, 10, 20, 30):
        estimator.observe("t", peak_memory_bytes=peak * MiB, cpu_seconds=0, wall_seconds=1)
    assert estimator.estimate("t").memory_bytes == 30 * MiB


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantile": 0.2}, "quantile: must be between 0.5 and 1"),
        ({"decay": 0}, "decay: must be in (0, 1]"),
        ({"window": 0}, "window: must be at least 1"),
        ({"growth_after_oom": 0.5}, "growth_after_oom: must be at least 1.0"),
        ({"default_memory": -1}, "default_memory: must not be negative"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        UsageEstimator(**kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)
