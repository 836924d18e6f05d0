"""The admission policy: pure, no processes; time and measurements are handed in."""

from __future__ import annotations

import pytest

from policies import AdmissionPolicy, Budget, Need, QueuedWork, RunningWork

GiB = 1 << 30
policy = AdmissionPolicy()


def queued(key: str, gib: float, duration: float | None = None, cores: float = 0.0) -> QueuedWork:
    return QueuedWork(key, Need(int(gib * GiB), cores), duration, name=key)


def running(key: str, gib: float, ends_in: float | None, measured_gib: float = 0.0) -> RunningWork:
    return RunningWork(
        key,
        Need(int(gib * GiB), 0.0),
        int(measured_gib * GiB),
        0.0,
        None if ends_in is None else 100 + ends_in,
    )


def test_starts_in_order_while_the_budget_lasts() -> None:
    decision = policy.decide(
        now=100,
        slots=4,
        budget=Budget(3 * GiB),
        running=[],
        queue=[queued("a", 1), queued("b", 1.5), queued("c", 1)],
    )
    assert decision.start == ("a", "b")
    assert "waits for" in decision.waiting["c"]


def test_slots_bound_starts() -> None:
    decision = policy.decide(
        now=100, slots=1, budget=Budget(), running=[], queue=[queued("a", 1), queued("b", 1)]
    )
    assert decision.start == ("a",) and decision.waiting["b"] == "no free slot"


def test_running_work_holds_the_larger_of_estimate_and_measurement() -> None:
    grown = running("r", 1, ends_in=10, measured_gib=2.5)
    decision = policy.decide(
        now=100, slots=2, budget=Budget(3 * GiB), running=[grown], queue=[queued("a", 1)]
    )
    assert decision.start == ()


def test_a_short_job_backfills_when_it_cannot_delay_the_head() -> None:
    busy = running("r", 2, ends_in=10)  # the head can start in 10 s
    head, short, long = queued("head", 2.5, 30), queued("short", 0.3, 5), queued("long", 0.6, 60)
    # At the shadow time (in 10 s) 3 GiB are free and the head takes 2.5: 0.5 GiB spare.
    decision = policy.decide(
        now=100, slots=4, budget=Budget(3 * GiB), running=[busy], queue=[head, short, long]
    )
    assert decision.start == ("short",)  # ends before the shadow time; "long" would not fit beside the head
    assert decision.waiting["long"] == "held back for head, which needs the resources first"


def test_a_job_that_fits_beside_the_head_backfills_whatever_its_length() -> None:
    busy = running("r", 2, ends_in=10)
    head, small = queued("head", 1.5, 30), queued("small", 0.5, None)
    # At the shadow time 3 GiB are free; the head takes 1.5: 1.5 GiB stay spare for "small".
    decision = policy.decide(now=100, slots=4, budget=Budget(3 * GiB), running=[busy], queue=[head, small])
    assert decision.start == ("small",)


def test_unknown_ends_allow_no_backfill_that_could_delay_the_head() -> None:
    busy = running("r", 2, ends_in=None)
    decision = policy.decide(
        now=100,
        slots=4,
        budget=Budget(3 * GiB),
        running=[busy],
        queue=[queued("head", 2), queued("x", 0.5, None)],
    )
    assert decision.start == ()


def test_a_need_beyond_the_whole_budget_runs_alone() -> None:
    huge = queued("huge", 8)
    waiting = policy.decide(
        now=100,
        slots=4,
        budget=Budget(3 * GiB),
        running=[running("r", 1, 5)],
        queue=[huge, queued("s", 0.1, 1)],
    )
    assert waiting.start == () and "runs alone" in waiting.waiting["huge"]
    alone = policy.decide(
        now=100, slots=4, budget=Budget(3 * GiB), running=[], queue=[huge, queued("s", 0.1, 1)]
    )
    assert alone.start == ("huge",)


def test_pressure_tightens_the_budget_while_something_runs() -> None:
    busy = [running("r", 0.5, ends_in=10)]
    work = [queued("a", 2)]
    assert policy.decide(now=100, slots=2, budget=Budget(3 * GiB), running=busy, queue=work).start == ("a",)
    tight = policy.decide(now=100, slots=2, budget=Budget(3 * GiB), running=busy, queue=work, pressure=0.8)
    assert tight.start == ()


def test_pressure_and_cpu_never_leave_the_pool_idle() -> None:
    """CPU is compressible: with nothing of ours running, the head starts however high the
    pressure and whatever its CPU estimate; pressure narrows concurrency to one, not zero."""
    work = [queued("a", 2, cores=1.9), queued("b", 0.1, cores=1.9)]
    decision = policy.decide(
        now=0, slots=2, budget=Budget(3 * GiB, 2.0), running=[], queue=work, pressure=1.0
    )
    assert decision.start == ("a",)
    assert "waits for" in decision.waiting["b"]


def test_with_nothing_running_the_head_waits_only_for_memory_the_host_lacks() -> None:
    work = [queued("big", 2), queued("small", 0.5, duration=1)]
    short = policy.decide(
        now=0, slots=2, budget=Budget(3 * GiB), running=[], queue=work, available_memory=GiB
    )
    assert short.start == ("small",)  # it ends before the host could free memory for "big"
    assert short.waiting["big"] == "waits for 2.0 GiB; the host has 1.0 GiB available"
    roomy = policy.decide(
        now=0, slots=2, budget=Budget(3 * GiB), running=[], queue=work, available_memory=8 * GiB
    )
    assert roomy.start == ("big", "small")


def test_the_host_s_available_memory_caps_what_starts_beside_running_work() -> None:
    grower = running("r", 1.5, ends_in=10, measured_gib=0.5)  # may still grow by 1 GiB
    decision = policy.decide(
        now=100,
        slots=3,
        budget=Budget(8 * GiB),
        running=[grower],
        queue=[queued("a", 1), queued("b", 1)],
        available_memory=int(2.5 * GiB),
    )
    assert decision.start == ("a",)  # 2.5 GiB free on the host, 1 GiB of it promised to "r"


def test_a_pass_behind_a_blocked_head_looks_only_at_its_window() -> None:
    narrow = AdmissionPolicy(window=3)
    busy = running("r", 2.5, ends_in=None)
    assessment = narrow.begin(now=100, slots=8, budget=Budget(3 * GiB), running=[busy])
    assert assessment.offer(queued("head", 1)) is not None  # blocked: 0.5 GiB free
    offered = 0
    while not assessment.exhausted:
        assessment.offer(queued(f"x{offered}", 2))
        offered += 1
    assert offered == 3  # the window, then the pass stops
    assert assessment.why_exhausted == "held back for head, which needs the resources first"


def test_cpu_budget_counts_too() -> None:
    decision = policy.decide(
        now=0,
        slots=4,
        budget=Budget(None, 2.0),
        running=[],
        queue=[queued("a", 0, cores=1.5), queued("b", 0, cores=1.0)],
    )
    assert decision.start == ("a",)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="pressure_strength: must be between 0 and 1"):
        AdmissionPolicy(pressure_strength=2)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_sizes = st.integers(min_value=0, max_value=8).map(lambda n: n * GiB // 4)
_running = st.lists(
    st.builds(
        lambda key, size, ends: RunningWork(
            f"r{key}", Need(size, 0.0), 0, 0.0, None if ends is None else 100 + ends
        ),
        st.integers(0, 10_000),
        _sizes,
        st.one_of(st.none(), st.integers(1, 100)),
    ),
    max_size=4,
    unique_by=lambda r: r.key,
)
_queue = st.lists(
    st.builds(
        lambda key, size, duration: QueuedWork(f"q{key}", Need(size, 0.0), duration),
        st.integers(0, 10_000),
        _sizes,
        st.one_of(st.none(), st.integers(1, 100)),
    ),
    max_size=6,
    unique_by=lambda q: q.key,
)


@settings(max_examples=300, deadline=None)
@given(running=_running, queue=_queue, slots=st.integers(1, 4))
def test_admitted_work_always_fits_and_never_delays_the_head(
    running: list[RunningWork], queue: list[QueuedWork], slots: int
) -> None:
    budget = Budget(3 * GiB)
    decision = policy.decide(now=100, slots=slots, budget=budget, running=running, queue=queue)
    assert len(decision.start) <= slots
    held = sum(r.holds().memory_bytes or 0 for r in running)
    started = [q for q in queue if q.key in decision.start]
    oversized = [q for q in started if (q.need.memory_bytes or 0) > budget.memory_bytes]  # type: ignore[operator]
    if oversized:  # runs alone: only when nothing else runs or starts
        assert not running and started == oversized[:1]
        return
    if started:  # running work alone may exceed the budget (it outgrew its estimate)
        assert held + sum(q.need.memory_bytes or 0 for q in started) <= budget.memory_bytes  # type: ignore[operator]
    # Every queued item is either started or has a reason; the first one not started (the
    # head) is passed only by work that the policy judged unable to delay it.
    assert set(decision.start) | set(decision.waiting) == {q.key for q in queue}


@settings(max_examples=200, deadline=None)
@given(queue=_queue.filter(bool))
def test_with_nothing_running_the_head_always_starts(queue: list[QueuedWork]) -> None:
    decision = policy.decide(now=0, slots=1, budget=Budget(3 * GiB), running=[], queue=queue)
    assert decision.start == (queue[0].key,)
