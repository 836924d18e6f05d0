"""Triggers: fire times from fixed datetimes (never the wall clock), validation, event queues."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from governor.scheduling._triggers import (
    EventTrigger,
    OneTimeTrigger,
    PeriodicTrigger,
    PolledTrigger,
    Trigger,
    is_polled,
    validate_trigger,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def chain(trigger: PeriodicTrigger, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times, each asked for after the previous one (as the scheduler
    does)."""
    fires = []
    for _ in range(count):
        fire = trigger.next_fire(after)
        assert fire is not None
        fires.append(fire)
        after = fire
    return fires


# -- interval ----------------------------------------------------------------------------------


def test_interval_fires_at_a_fixed_rate_from_the_previous_fire() -> None:
    trigger = PeriodicTrigger("5m")
    assert trigger.interval == 300
    assert chain(trigger, T0, 4) == [T0 + timedelta(minutes=5 * k) for k in (1, 2, 3, 4)]


def test_interval_with_start_stays_on_its_grid() -> None:
    trigger = PeriodicTrigger(timedelta(seconds=90), start=T0)
    assert trigger.next_fire(T0 - timedelta(days=1)) == T0  # start itself is the first fire
    assert trigger.next_fire(T0) == T0 + timedelta(seconds=90)
    # A late caller (the loop woke 7 s late) gets the next grid point, not late + interval.
    assert trigger.next_fire(T0 + timedelta(seconds=97)) == T0 + timedelta(seconds=180)
    assert trigger.next_fire(T0 + timedelta(seconds=179, microseconds=999_999)) == T0 + timedelta(seconds=180)
    # A thousand fires later there is no accumulated drift, even with a fractional interval.
    fractional = PeriodicTrigger(0.1, start=T0)
    assert chain(fractional, T0, 1000)[-1] == T0 + timedelta(seconds=100)


def test_interval_is_exact_across_a_dst_change() -> None:
    # 2024-03-31 in Berlin: 02:00 CET becomes 03:00 CEST. An hourly interval is 3600 real seconds.
    trigger = PeriodicTrigger("1h", timezone="Europe/Berlin")
    start = datetime(2024, 3, 31, 0, 30, tzinfo=BERLIN)
    fires = chain(trigger, start, 3)
    assert [f.astimezone(BERLIN).isoformat() for f in fires] == [
        "2024-03-31T01:30:00+01:00",
        "2024-03-31T03:30:00+02:00",
        "2024-03-31T04:30:00+02:00",
    ]


def test_fire_times_are_in_utc_whatever_the_zones() -> None:
    after = T0.astimezone(BERLIN)
    for trigger in (
        PeriodicTrigger(60, timezone=NEW_YORK),
        PeriodicTrigger(60, timezone=NEW_YORK, start=after),
        PeriodicTrigger(cron="@hourly", timezone=NEW_YORK),
        OneTimeTrigger(60),
        OneTimeTrigger(at=(T0 + timedelta(hours=1)).astimezone(NEW_YORK)),
    ):
        fire = trigger.next_fire(after)
        assert fire is not None and fire.tzinfo is UTC, trigger
    assert PeriodicTrigger(60, jitter=1).jittered(after, 0.5).tzinfo is UTC


# -- cron --------------------------------------------------------------------------------------


def test_cron_every_five_minutes() -> None:
    trigger = PeriodicTrigger(cron="*/5 * * * *")
    after = datetime(2024, 1, 1, 12, 3, 20, tzinfo=UTC)
    assert chain(trigger, after, 3) == [datetime(2024, 1, 1, 12, m, tzinfo=UTC) for m in (5, 10, 15)]
    # Strictly after: a fire time is never returned for itself.
    on_the_dot = datetime(2024, 1, 1, 12, 5, tzinfo=UTC)
    assert trigger.next_fire(on_the_dot) == datetime(2024, 1, 1, 12, 10, tzinfo=UTC)
    assert trigger.next_fire(on_the_dot - timedelta(microseconds=1)) == on_the_dot


def test_cron_shortcuts() -> None:
    after = datetime(2024, 2, 28, 22, 59, 59, tzinfo=UTC)
    assert PeriodicTrigger(cron="@hourly").next_fire(after) == datetime(2024, 2, 28, 23, tzinfo=UTC)
    assert PeriodicTrigger(cron="@daily").next_fire(after) == datetime(2024, 2, 29, tzinfo=UTC)
    assert PeriodicTrigger(cron="@midnight").next_fire(after) == datetime(2024, 2, 29, tzinfo=UTC)
    assert PeriodicTrigger(cron="@monthly").next_fire(after) == datetime(2024, 3, 1, tzinfo=UTC)
    assert PeriodicTrigger(cron="@annually").next_fire(after) == datetime(2025, 1, 1, tzinfo=UTC)


def test_cron_in_a_time_zone() -> None:
    trigger = PeriodicTrigger(cron="0 9 * * 1-5", timezone="America/New_York")
    # Friday 2024-01-05 15:00 UTC is 10:00 in New York: next is Monday 09:00 EST (14:00 UTC).
    fire = trigger.next_fire(datetime(2024, 1, 5, 15, 0, tzinfo=UTC))
    assert fire == datetime(2024, 1, 8, 14, 0, tzinfo=UTC)
    assert fire.astimezone(NEW_YORK).isoformat() == "2024-01-08T09:00:00-05:00"


def test_cron_daily_across_spring_forward() -> None:
    # New York, 2024-03-10: 02:00 EST jumps to 03:00 EDT. 09:00 stays 09:00 local time.
    trigger = PeriodicTrigger(cron="0 9 * * *", timezone=NEW_YORK)
    fires = chain(trigger, datetime(2024, 3, 9, 12, 0, tzinfo=NEW_YORK), 3)
    assert [f.astimezone(NEW_YORK).isoformat() for f in fires] == [
        "2024-03-10T09:00:00-04:00",
        "2024-03-11T09:00:00-04:00",
        "2024-03-12T09:00:00-04:00",
    ]
    assert fires[0] - datetime(2024, 3, 9, 14, 0, tzinfo=UTC) == timedelta(hours=23)  # a short day


def test_cron_time_in_the_spring_gap_fires_after_the_gap() -> None:
    # Berlin, 2024-03-31: 02:30 does not exist; croniter runs it at 03:00 CEST.
    trigger = PeriodicTrigger(cron="30 2 * * *", timezone="Europe/Berlin")
    fires = chain(trigger, datetime(2024, 3, 30, 12, 0, tzinfo=BERLIN), 2)
    assert [f.astimezone(BERLIN).isoformat() for f in fires] == [
        "2024-03-31T03:00:00+02:00",
        "2024-04-01T02:30:00+02:00",
    ]


def test_cron_hourly_across_fall_back_fires_every_real_hour() -> None:
    # Berlin, 2024-10-27: 03:00 CEST becomes 02:00 CET, so 02:00 happens twice; an hourly
    # schedule must fire once per real hour, both times, and always move forward.
    trigger = PeriodicTrigger(cron="0 * * * *", timezone="Europe/Berlin")
    fires = chain(trigger, datetime(2024, 10, 27, 0, 30, tzinfo=BERLIN), 5)
    assert [f.astimezone(BERLIN).isoformat() for f in fires] == [
        "2024-10-27T01:00:00+02:00",
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:00:00+01:00",
        "2024-10-27T03:00:00+01:00",
        "2024-10-27T04:00:00+01:00",
    ]
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(fires))


@pytest.mark.parametrize("expression", ["*/15 * * * *", "0 * * * *", "30 2 * * *", "0 3 * * *", "@daily"])
@pytest.mark.parametrize(
    "day",
    [datetime(2024, 3, 30, 22, tzinfo=UTC), datetime(2024, 10, 26, 22, tzinfo=UTC)],
    ids=["spring", "fall"],
)
def test_cron_always_moves_forward_through_dst_days(expression: str, day: datetime) -> None:
    """Asked every 7 minutes through a transition day in Berlin, the answer is strictly later
    than the question and never earlier than the answer to an earlier question."""
    trigger = PeriodicTrigger(cron=expression, timezone=BERLIN)
    previous = None
    for step in range(0, 26 * 60, 7):
        after = day + timedelta(minutes=step)
        fire = trigger.next_fire(after)
        assert fire is not None and fire > after
        assert previous is None or fire >= previous
        previous = fire


def test_cron_answers_the_same_for_any_zone_of_the_question() -> None:
    trigger = PeriodicTrigger(cron="*/15 * * * *", timezone=BERLIN)
    moment = datetime(2024, 10, 27, 0, 50, tzinfo=UTC)  # 02:50 CEST, inside the repeated hour
    answers = {trigger.next_fire(moment.astimezone(zone)) for zone in (UTC, BERLIN, NEW_YORK)}
    assert answers == {datetime(2024, 10, 27, 1, 0, tzinfo=UTC)}  # 02:00 CET, the second 02:00


def test_cron_with_start() -> None:
    start = datetime(2024, 6, 1, 10, 0, tzinfo=UTC)
    trigger = PeriodicTrigger(cron="0 * * * *", start=start)
    assert trigger.next_fire(datetime(2024, 1, 1, tzinfo=UTC)) == start  # start itself matches
    assert trigger.next_fire(start) == start + timedelta(hours=1)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (
            "* * *",
            "cron: invalid expression '* * *': expected 5 fields (minute hour day-of-month month "
            "day-of-week), got 3",
        ),
        ("61 * * * *", "cron: invalid expression '61 * * * *': [61 * * * *] is not acceptable, out of range"),
        (
            "* * * * * * *",
            "cron: invalid expression '* * * * * * *': expected 5 fields (minute hour "
            "day-of-month month day-of-week), got 7 (fields for seconds or years are not supported)",
        ),
        ("* * * * * *", "cron: invalid expression '* * * * * *': expected 5 fields"),
        (
            "",
            "cron: invalid expression '': expected 5 fields (minute hour day-of-month month day-of-week), "
            "got 0",
        ),
        ("@reboot", "cron: invalid expression '@reboot': unknown shortcut (use one of @hourly, @daily, "),
        ("0 0 31 2 *", "cron: invalid expression '0 0 31 2 *': it never matches a date"),
        ("*/0 * * * *", "cron: invalid expression '*/0 * * * *': "),
        ("H * * * *", "cron: invalid expression 'H * * * *': "),
    ],
)
def test_invalid_cron_expressions(expression: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        PeriodicTrigger(cron=expression)
    assert str(caught.value).startswith(message)


def test_cron_spacing_is_normalised() -> None:
    assert PeriodicTrigger(cron="  0   9 * * * ").cron == "0 9 * * *"


# -- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "give either interval or cron, not neither"),
        ((60,), {"cron": "@hourly"}, "give either interval or cron, not both"),
        ((-1,), {}, "interval: must not be negative, got -1"),
        ((0,), {}, "interval: must be greater than zero, got 0"),
        (("0s",), {}, "interval: must be greater than zero, got '0s'"),
        ((1e-9,), {}, "interval: must be greater than zero, got 1e-09"),
        (("often",), {}, "interval: cannot read 'often' as a duration (try '90s' or '2m')"),
        ((60,), {"jitter": -5}, "jitter: must not be negative, got -5"),
        ((60,), {"timezone": "Mars/Olympus_Mons"}, "timezone: unknown time zone 'Mars/Olympus_Mons'"),
        ((60,), {"timezone": 5}, "timezone: expected a zone name or a tzinfo, got 5"),
        (
            (60,),
            {"start": datetime(2024, 1, 1)},
            "start: must be timezone-aware, got naive '2024-01-01T00:00:00'",
        ),
        ((None,), {"cron": 5}, "cron: expected a string, got 5"),
    ],
)
def test_invalid_periodic_triggers(args: tuple[object, ...], kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        PeriodicTrigger(*args, **kwargs)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^after: must be timezone-aware, got naive '2024-01-01T00:00:00'$"):
        PeriodicTrigger(60).next_fire(datetime(2024, 1, 1))


def test_reprs() -> None:
    assert repr(PeriodicTrigger("5m")) == "PeriodicTrigger(interval=5m00s)"
    assert (
        repr(PeriodicTrigger(cron="*/5 * * * *", timezone="Europe/Berlin"))
        == "PeriodicTrigger(cron='*/5 * * * *', timezone='Europe/Berlin')"
    )
    assert (
        repr(PeriodicTrigger(30, jitter=2, start=T0, timezone=timezone(timedelta(hours=2))))
        == "PeriodicTrigger(interval=30.00s, timezone='UTC+02:00', jitter=2.00s, "
        "start='2024-01-01T12:00:00+00:00')"
    )
    assert repr(OneTimeTrigger("30s")) == "OneTimeTrigger(delay=30.00s)"
    assert repr(OneTimeTrigger(at=T0)) == "OneTimeTrigger(at='2024-01-01T12:00:00+00:00')"
    event = EventTrigger("deploy")
    event.fire()
    assert repr(event) == "EventTrigger(name='deploy', pending=1)"
    assert repr(EventTrigger()) == "EventTrigger(pending=0)"


def test_periodic_triggers_are_frozen_values() -> None:
    trigger = PeriodicTrigger(cron="@hourly", timezone="Europe/Berlin")
    assert trigger == PeriodicTrigger(cron="@hourly", timezone=BERLIN)
    assert hash(trigger) == hash(PeriodicTrigger(cron="@hourly", timezone=BERLIN))
    with pytest.raises(AttributeError):
        trigger.cron = "@daily"  # type: ignore[misc]


# -- jitter ------------------------------------------------------------------------------------


def test_jitter_shifts_later_within_bounds_and_next_fire_stays_exact() -> None:
    trigger = PeriodicTrigger("1m", jitter="10s", timezone=BERLIN)
    fire = trigger.next_fire(T0)
    assert fire == T0 + timedelta(minutes=1)
    assert trigger.jitter == 10
    assert trigger.jittered(fire, 0.0) == fire
    assert trigger.jittered(fire, 0.5) == fire + timedelta(seconds=5)
    latest = trigger.jittered(fire, 0.999)
    assert fire < latest < fire + timedelta(seconds=10)
    assert PeriodicTrigger(60).jittered(fire, 0.7) == fire  # no jitter configured
    with pytest.raises(ValueError, match=r"^random_fraction: must be in \[0, 1\), got 1\.0$"):
        trigger.jittered(fire, 1.0)


# -- one-time ----------------------------------------------------------------------------------


def test_one_time_at() -> None:
    at = datetime(2024, 5, 1, 8, 0, tzinfo=BERLIN)
    trigger = OneTimeTrigger(at=at)
    assert trigger.next_fire(at - timedelta(days=3)) == at
    assert trigger.next_fire(at.astimezone(UTC) - timedelta(microseconds=1)) == at
    assert trigger.next_fire(at) is None
    assert trigger.next_fire(at + timedelta(seconds=1)) is None
    assert trigger.anchored(T0) is trigger


def test_one_time_delay() -> None:
    trigger = OneTimeTrigger("90s")
    assert trigger.delay == 90 and trigger.at is None
    assert trigger.next_fire(T0) == T0 + timedelta(seconds=90)  # relative to when it is added
    anchored = trigger.anchored(T0)
    assert anchored == OneTimeTrigger(at=T0 + timedelta(seconds=90))
    assert anchored.next_fire(T0) == T0 + timedelta(seconds=90)
    assert anchored.next_fire(T0 + timedelta(seconds=90)) is None  # fires once
    assert OneTimeTrigger().next_fire(T0) == T0  # no delay: at once


def test_one_time_delay_is_real_time_across_dst() -> None:
    before_gap = datetime(2024, 3, 31, 1, 30, tzinfo=BERLIN)
    anchored = OneTimeTrigger("1h").anchored(before_gap)
    assert anchored.next_fire(before_gap) == datetime(2024, 3, 31, 1, 30, tzinfo=UTC)
    assert (
        anchored.at is not None and anchored.at.astimezone(BERLIN).isoformat() == "2024-03-31T03:30:00+02:00"
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((-1,), {}, "delay: must not be negative, got -1"),
        ((5,), {"at": T0}, "give either delay or at, not both"),
        ((), {"at": datetime(2024, 1, 1)}, "at: must be timezone-aware, got naive '2024-01-01T00:00:00'"),
        ((), {"at": "2024-01-01"}, "at: expected a datetime, got '2024-01-01'"),
    ],
)
def test_invalid_one_time_triggers(args: tuple[object, ...], kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        OneTimeTrigger(*args, **kwargs)  # type: ignore[arg-type]
    assert str(caught.value) == message


# -- events ------------------------------------------------------------------------------------


def test_event_trigger_queues_every_fire() -> None:
    trigger = EventTrigger("deploy")
    assert trigger.next_fire(T0) is None and trigger.pending() == 0 and trigger.drain() == []
    trigger.fire({"sha": "abc"})
    trigger.fire()
    trigger.fire("x")
    assert trigger.pending() == 3
    assert trigger.drain() == [{"sha": "abc"}, None, "x"]
    assert trigger.pending() == 0 and trigger.drain() == []


def test_event_trigger_listener() -> None:
    trigger = EventTrigger()
    trigger.fire("early")  # before any listener: queued, nobody told
    first: list[int] = []
    second: list[int] = []
    trigger._attach(lambda: first.append(trigger.pending()))
    trigger.fire("a")
    trigger.fire("b")
    assert first == [2, 3]  # called once per fire, after the payload is queued
    trigger._attach(lambda: second.append(1))  # replaces
    trigger.fire("c")
    trigger._attach(None)
    trigger.fire("d")
    assert first == [2, 3] and second == [1]
    assert trigger.drain() == ["early", "a", "b", "c", "d"]


def test_event_trigger_from_many_threads_loses_nothing() -> None:
    trigger = EventTrigger()
    calls: list[None] = []
    lock = threading.Lock()

    def listener() -> None:
        with lock:
            calls.append(None)

    trigger._attach(listener)
    barrier = threading.Barrier(4)

    def fire_many(thread: int) -> None:
        barrier.wait()
        for n in range(100):
            trigger.fire((thread, n))

    threads = [threading.Thread(target=fire_many, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert trigger.pending() == 400 and len(calls) == 400
    payloads = trigger.drain()
    assert sorted(payloads) == [(t, n) for t in range(4) for n in range(100)]
    for t in range(4):
        assert [n for (thread, n) in payloads if thread == t] == list(range(100))


def test_event_trigger_drain_while_firing() -> None:
    trigger = EventTrigger()
    done = threading.Event()

    def fire_many() -> None:
        for n in range(2000):
            trigger.fire(n)
        done.set()

    thread = threading.Thread(target=fire_many)
    thread.start()
    seen: list[int] = []
    while not done.is_set():
        seen.extend(trigger.drain())
    thread.join()
    seen.extend(trigger.drain())
    assert seen == list(range(2000))


def test_event_trigger_name_must_be_text() -> None:
    with pytest.raises(ValueError, match=r"^name: expected a string, got 5$"):
        EventTrigger(5)  # type: ignore[arg-type]


# -- custom triggers ---------------------------------------------------------------------------


class Countdown:
    """The seed's shape: ready every third poll."""

    def __init__(self) -> None:
        self.polls = 0

    def is_ready(self) -> bool:
        self.polls += 1
        return self.polls >= 3

    def reset(self) -> None:
        self.polls = 0


class Tomorrow:
    """A custom time-based trigger."""

    def next_fire(self, after: datetime) -> datetime | None:
        return after + timedelta(days=1)


class HalfPolled:
    def is_ready(self) -> bool:
        return True


def test_custom_trigger_shapes() -> None:
    assert is_polled(Countdown()) and isinstance(Countdown(), PolledTrigger)
    assert not is_polled(Tomorrow()) and isinstance(Tomorrow(), Trigger)
    for builtin in (PeriodicTrigger(60), OneTimeTrigger(), EventTrigger()):
        assert not is_polled(builtin) and isinstance(builtin, Trigger)
        assert validate_trigger(builtin) is builtin
    countdown = Countdown()
    assert validate_trigger(countdown) is countdown
    assert not is_polled(Countdown)  # the class, not an instance


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        (
            5,
            r"^trigger: expected an object with next_fire\(after\), or with is_ready\(\) and reset\(\), "
            r"got 5 \(int\)$",
        ),
        ("@hourly", r"got '@hourly' \(str\)$"),
        (
            HalfPolled(),
            r"^trigger: <.*HalfPolled object at .*> has is_ready\(\) but no reset\(\); a polled trigger",
        ),
        (Countdown, r"^trigger: got the class Countdown, not an instance of it$"),
    ],
)
def test_validate_trigger_says_what_is_missing(trigger: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        validate_trigger(trigger)
