"""``RetryPolicy``: validation, which outcomes retry, delays, limit growth. Pure, no processes."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from policies import Limits, RetryPolicy
from runner import Outcome

MiB = 1 << 20


def test_defaults_never_retry() -> None:
    policy = RetryPolicy()
    assert policy.max_retries == 0 and policy.delay == 0 and policy.backoff == 1.0
    assert policy.retry_on == frozenset({"failed", "crashed"})
    assert not policy.should_retry("failed", 1)
    assert repr(policy) == "RetryPolicy(max_retries=0)"


def test_values_are_parsed_and_stored_plainly() -> None:
    policy = RetryPolicy(
        max_retries=3,
        delay="30s",
        backoff=2,
        max_delay=timedelta(minutes=5),
        jitter=0.1,
        retry_on=[Outcome.FAILED, "memory_exceeded"],
        memory_growth=1.5,
    )
    assert policy.delay == 30.0 and policy.max_delay == 300.0 and policy.backoff == 2.0
    assert policy.retry_on == frozenset({"failed", "memory_exceeded"})
    assert all(type(name) is str for name in policy.retry_on)
    assert repr(policy) == (
        "RetryPolicy(max_retries=3, delay=30.00s, backoff=2, max_delay=5m00s, jitter=0.1, "
        "retry_on=('failed', 'memory_exceeded'), memory_growth=1.5)"
    )
    assert policy == RetryPolicy(
        max_retries=3,
        delay=30,
        backoff=2.0,
        max_delay=300,
        jitter=0.1,
        retry_on=("memory_exceeded", "failed"),
        memory_growth=1.5,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_retries = 5  # type: ignore[misc]


def test_a_lone_string_is_one_outcome() -> None:
    assert RetryPolicy(retry_on="timed_out").retry_on == frozenset({"timed_out"})
    assert RetryPolicy(retry_on=()).retry_on == frozenset()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_retries": -1}, "max_retries: must not be negative, got -1"),
        ({"max_retries": True}, "max_retries: expected a whole number, got True"),
        ({"max_retries": 1.5}, "max_retries: expected a whole number, got 1.5"),
        ({"delay": -1}, "delay: must not be negative, got -1"),
        ({"delay": "soon"}, "delay: cannot read 'soon' as a duration"),
        ({"backoff": 0.5}, "backoff: must be at least 1.0, got 0.5"),
        ({"backoff": float("nan")}, "backoff: must be a finite number, got nan"),
        ({"backoff": "2"}, "backoff: expected a number, got '2'"),
        ({"delay": 60, "max_delay": 10}, "max_delay: must not be less than delay (1m00s), got 10"),
        ({"max_delay": "-5s"}, "max_delay: cannot read '-5s' as a duration"),
        ({"jitter": 1.5}, "jitter: must be between 0 and 1, got 1.5"),
        ({"jitter": -0.1}, "jitter: must be between 0 and 1, got -0.1"),
        ({"retry_on": ["cancelled"]}, "retry_on: cannot retry 'cancelled': a cancelled run was stopped"),
        ({"retry_on": [Outcome.CANCELLED]}, "retry_on: cannot retry 'cancelled'"),
        ({"retry_on": ["succeeded"]}, "retry_on: cannot retry 'succeeded': it is not a failure"),
        ({"retry_on": ["failed", "boom"]}, "retry_on: unknown outcome 'boom' (retryable: failed, crashed, "),
        ({"retry_on": [1]}, "retry_on: expected outcome names, got 1 in [1]"),
        ({"retry_on": 5}, "retry_on: expected outcome names, got 5"),
        ({"memory_growth": 0.9}, "memory_growth: must be at least 1.0, got 0.9"),
        ({"memory_growth": float("inf")}, "memory_growth: must be a finite number, got inf"),
    ],
)
def test_invalid_values_name_the_field_and_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


def test_every_retryable_outcome_is_accepted() -> None:
    names = ["failed", "crashed", "memory_exceeded", "cpu_time_exceeded", "timed_out", "lost"]
    assert RetryPolicy(retry_on=names).retry_on == frozenset(names)
    retryable = {o for o in Outcome if o not in (Outcome.SUCCEEDED, Outcome.CANCELLED, Outcome.EVICTED)}
    assert {str(o) for o in retryable} == set(names)


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        RetryPolicy(2)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("max_retries", "attempt", "expected"),
    [(0, 1, False), (1, 1, True), (1, 2, False), (2, 1, True), (2, 2, True), (2, 3, False), (2, 9, False)],
)
def test_should_retry_counts_attempts(max_retries: int, attempt: int, expected: bool) -> None:
    assert RetryPolicy(max_retries=max_retries).should_retry("failed", attempt) is expected


def test_should_retry_only_listed_outcomes() -> None:
    policy = RetryPolicy(max_retries=5)
    assert policy.should_retry(Outcome.FAILED, 1) and policy.should_retry(Outcome.CRASHED, 1)
    for outcome in ("succeeded", "cancelled", "memory_exceeded", "timed_out", "lost", "nonsense"):
        assert not policy.should_retry(outcome, 1)
    assert RetryPolicy(max_retries=1, retry_on=["timed_out"]).should_retry("timed_out", 1)
    with pytest.raises(ValueError, match=r"^attempt: must be at least 1 \(the first try\), got 0$"):
        policy.should_retry("failed", 0)


def test_delay_sequence_with_backoff_and_cap() -> None:
    policy = RetryPolicy(max_retries=10, delay=1, backoff=2.0, max_delay=10)
    delays = [policy.delay_before(attempt, 0.5) for attempt in range(2, 9)]
    assert delays == [1, 2, 4, 8, 10, 10, 10]


def test_delay_without_backoff_is_constant_and_zero_stays_zero() -> None:
    assert [RetryPolicy(delay="5s").delay_before(n, 0.5) for n in (2, 3, 4)] == [5, 5, 5]
    assert RetryPolicy(backoff=3, jitter=1).delay_before(7, 0.9) == 0


def test_delay_survives_a_huge_attempt_number() -> None:
    assert RetryPolicy(delay=1, backoff=2, max_delay=60).delay_before(100_000, 0.5) == 60


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.0, 8.0), (0.5, 10.0), (0.999, 11.996)],
)
def test_jitter_bounds(fraction: float, expected: float) -> None:
    policy = RetryPolicy(delay=10, jitter=0.2)
    assert policy.delay_before(2, fraction) == pytest.approx(expected)
    assert 8.0 <= policy.delay_before(2, fraction) < 12.0


def test_jitter_applies_after_the_cap_and_never_goes_negative() -> None:
    capped = RetryPolicy(delay=10, backoff=10, max_delay=20, jitter=0.5)
    assert capped.delay_before(4, 0.999) == pytest.approx(20 * 1.499)
    assert RetryPolicy(delay=10, jitter=1.0).delay_before(2, 0.0) == 0.0


@pytest.mark.parametrize(("attempt", "fraction"), [(1, 0.5), (2, 1.0), (2, -0.1)])
def test_delay_before_rejects_bad_arguments(attempt: int, fraction: float) -> None:
    with pytest.raises(ValueError, match=r"^(attempt|random_fraction): "):
        RetryPolicy(delay=1).delay_before(attempt, fraction)


def test_memory_grows_after_a_memory_kill() -> None:
    policy = RetryPolicy(max_retries=3, retry_on=["memory_exceeded"], memory_growth=1.5)
    limits = Limits(memory="100MiB", wall_time=60)
    grown = policy.limits_for(Outcome.MEMORY_EXCEEDED, limits)
    assert grown.memory == 150 * MiB and grown.wall_time == 60
    again = policy.limits_for("memory_exceeded", grown)
    assert again.memory == 225 * MiB
    assert policy.limits_for("memory_exceeded", Limits(memory=3)).memory == 4  # round(4.5), half-even


def test_memory_is_unchanged_otherwise() -> None:
    limits = Limits(memory="100MiB")
    growing = RetryPolicy(retry_on=["memory_exceeded", "failed"], memory_growth=2)
    assert growing.limits_for("failed", limits) is limits
    assert growing.limits_for("memory_exceeded", Limits(wall_time=5)) == Limits(wall_time=5)
    assert RetryPolicy(retry_on=["memory_exceeded"]).limits_for("memory_exceeded", limits) is limits


def test_from_mapping_reads_a_toml_table() -> None:
    policy = RetryPolicy.from_mapping(
        {"max_retries": 2, "delay": "30s", "backoff": 2.0, "memory_growth": 1.5, "retry_on": ["lost"]}
    )
    assert policy == RetryPolicy(max_retries=2, delay=30, backoff=2, memory_growth=1.5, retry_on=["lost"])


def test_from_mapping_names_where_and_the_key() -> None:
    with pytest.raises(ValueError, match=r"^task\.retry: unknown key 'retries' \(known: backoff, delay, "):
        RetryPolicy.from_mapping({"retries": 2}, where="task.retry")
    with pytest.raises(ValueError, match=r"^retry\.delay: must not be negative, got -1$"):
        RetryPolicy.from_mapping({"delay": -1})
    with pytest.raises(ValueError, match=r"^jobs\.backup\.retry\.retry_on: cannot retry 'cancelled'"):
        RetryPolicy.from_mapping({"retry_on": ["cancelled"]}, where="jobs.backup.retry")
