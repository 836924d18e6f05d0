"""Triggers: when a task fires.

A trigger is an object that answers one question, as in APScheduler 4. There are two shapes:

- time-based (``Trigger``): ``next_fire(after) -> datetime | None``, the first fire time
  strictly after ``after``, or ``None`` when it will not fire again. The scheduler keeps that
  time in its deadline heap and sleeps until then. ``PeriodicTrigger`` and ``OneTimeTrigger``
  are pure: they hold no state and never read a clock; the scheduler passes every time in.
- polled (``PolledTrigger``): the seed's ``is_ready() -> bool`` and ``reset() -> None``. Such a
  trigger cannot say when it will be ready, so the scheduler asks it at a coarse interval.

``EventTrigger`` fires when something calls ``fire()``, from any thread. It is not time-based
(``next_fire`` is always ``None``): its events wait in a queue until the scheduler drains them,
and a listener it attaches wakes the loop after each fire. Events are never lost.

All datetimes are timezone-aware; a naive one raises ``ValueError``, since guessing its zone
would move fire times by hours. A trigger's time zone (UTC unless one is given) decides what
"09:00" or "daily" means, but every datetime a trigger returns is in UTC: Python compares and
subtracts two datetimes of the same zone by wall clock, ignoring ``fold``, so during the hour
repeated when DST ends two Berlin times would sort wrongly in the scheduler's heap (and by
PEP 495 such a time never even equals one in another zone). Interval arithmetic is done in
UTC too, so a DST change neither stretches nor shrinks an interval.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from governor.abc import PolledTrigger, Trigger
from policies import format_duration, parse_duration

DurationLike = int | float | str | timedelta

_CRON_SHORTCUTS = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight")
_CRON_FIELDS = "minute hour day-of-month month day-of-week"
# A fixed instant to try a cron expression from at construction, so that one which can never
# fire (``0 0 31 2 *``) is refused when it is written rather than the first time it is used.
_PROBE = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def is_polled(trigger: object) -> bool:
    """True for a trigger of the polled shape: ``is_ready()`` and ``reset()`` but no
    ``next_fire``. A trigger with both shapes is treated as time-based."""
    return (
        not isinstance(trigger, type)
        and not _has(trigger, "next_fire")
        and _has(trigger, "is_ready")
        and _has(trigger, "reset")
    )


def validate_trigger(trigger: object) -> Trigger | PolledTrigger:
    """Return ``trigger`` if it has one of the two trigger shapes; else raise ``TypeError``
    saying what is missing."""
    if isinstance(trigger, type):
        raise TypeError(f"trigger: got the class {trigger.__name__}, not an instance of it")
    if _has(trigger, "next_fire"):
        return trigger  # type: ignore[return-value]  # the shape is checked; mypy cannot see it
    ready, reset = _has(trigger, "is_ready"), _has(trigger, "reset")
    if ready and reset:
        return trigger  # type: ignore[return-value]
    if ready or reset:
        have, lack = ("is_ready()", "reset()") if ready else ("reset()", "is_ready()")
        raise TypeError(f"trigger: {trigger!r} has {have} but no {lack}; a polled trigger needs both")
    raise TypeError(
        "trigger: expected an object with next_fire(after), or with is_ready() and reset(), "
        f"got {trigger!r} ({type(trigger).__name__})"
    )


@dataclass(frozen=True, slots=True, init=False)
class PeriodicTrigger:
    """Fires at a fixed interval or on a cron schedule; give exactly one of the two.

    - ``interval``: seconds, ``timedelta`` or ``"5m"``; must be greater than zero. With
      ``start``, fire times are the grid ``start + k * interval``; without it,
      ``next_fire(after)`` is ``after + interval``, and since the scheduler passes the previous
      fire time as ``after`` the schedule keeps a fixed rate without drift.
    - ``cron``: a standard five-field expression (``"*/5 * * * *"``) or one of ``@hourly``,
      ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``, ``@annually``, ``@midnight``. Fields
      for seconds or years are refused. Fire times are computed in ``timezone`` by croniter: a
      wall time skipped by a DST change fires at the first time after the gap, and a wall time
      that occurs twice fires at both occurrences.
    - ``timezone``: a ``tzinfo`` or a zone name such as ``"Europe/Berlin"``; UTC by default.
      It gives cron fields their meaning; fire times are returned in UTC all the same.
    - ``jitter``: a duration; ``next_fire`` stays exact and the scheduler shifts each fire later
      by ``jittered(fire, random_fraction)`` with its own random source.
    - ``start``: an aware datetime; no fire is earlier than it.
    """

    interval: float | None
    cron: str | None
    timezone: tzinfo
    jitter: float
    start: datetime | None

    def __init__(
        self,
        interval: DurationLike | None = None,
        *,
        cron: str | None = None,
        timezone: tzinfo | str | None = None,
        jitter: DurationLike = 0,
        start: datetime | None = None,
    ) -> None:
        if (interval is None) == (cron is None):
            which = "both" if interval is not None else "neither"
            raise ValueError(f"give either interval or cron, not {which}")
        setattr_ = object.__setattr__
        setattr_(self, "interval", None if interval is None else _interval(interval))
        setattr_(self, "timezone", _zone(timezone))
        setattr_(self, "cron", None if cron is None else _cron(cron))
        setattr_(self, "jitter", parse_duration(jitter, field="jitter"))
        setattr_(self, "start", None if start is None else _aware("start", start))

    def next_fire(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after``, in UTC; ``None`` only for a cron
        expression that has no further match."""
        moment = _aware("after", after).astimezone(UTC)
        if self.interval is not None:
            return self._next_on_grid(moment, timedelta(seconds=self.interval))
        return self._next_cron(moment)

    def jittered(self, fire: datetime, random_fraction: float) -> datetime:
        """``fire`` moved later by ``jitter * random_fraction`` seconds, in UTC;
        ``random_fraction`` in [0, 1) comes from the caller's random source."""
        if not 0.0 <= random_fraction < 1.0:
            raise ValueError(f"random_fraction: must be in [0, 1), got {random_fraction!r}")
        return _aware("fire", fire).astimezone(UTC) + timedelta(seconds=self.jitter * random_fraction)

    def _next_on_grid(self, after: datetime, step: timedelta) -> datetime:
        if self.start is None:
            return after + step
        anchor = self.start.astimezone(UTC)
        if after < anchor:
            return anchor
        # Whole steps since the anchor, in exact integer microseconds (timedelta // timedelta).
        return anchor + ((after - anchor) // step + 1) * step

    def _next_cron(self, after: datetime) -> datetime | None:
        assert self.cron is not None
        if self.start is not None and after < self.start:
            # Just before ``start``, so that ``start`` itself fires if it matches.
            after = self.start.astimezone(UTC) - _MICROSECOND
        local = after.astimezone(self.timezone)
        try:
            fire: datetime = croniter(self.cron, local).get_next(datetime)
            # croniter steps through wall-clock time; around a DST change make sure the answer
            # is strictly later as an instant, not only as a wall-clock reading.
            for _ in range(3):
                if fire > after:
                    break
                fire = croniter(self.cron, fire).get_next(datetime)
            else:
                raise AssertionError(f"croniter did not advance past {after} for {self.cron!r}")
        except CroniterBadDateError:
            return None
        return fire.astimezone(UTC)

    def __repr__(self) -> str:
        if self.interval is not None:
            shown = [f"interval={format_duration(self.interval)}"]
        else:
            shown = [f"cron={self.cron!r}"]
        if self.timezone is not UTC:
            shown.append(f"timezone={_zone_name(self.timezone)!r}")
        if self.jitter:
            shown.append(f"jitter={format_duration(self.jitter)}")
        if self.start is not None:
            shown.append(f"start={self.start.isoformat()!r}")
        return f"PeriodicTrigger({', '.join(shown)})"


@dataclass(frozen=True, slots=True, init=False)
class OneTimeTrigger:
    """Fires once: at the aware datetime ``at``, or ``delay`` after it is anchored.

    With ``at``, ``next_fire(after)`` is ``at`` (in UTC) while ``after < at``, then ``None``.
    With ``delay`` (seconds, ``timedelta`` or ``"30s"``; default ``0``, i.e. at once), the fire
    time is relative to when the task is added. ``anchored(now)`` turns it into a trigger with
    ``at = now + delay``; the scheduler should anchor it when the task is added. An unanchored
    one answers ``next_fire(after) = after + delay``, which is right only for that first call:
    asked again with the fire time it would fire again.
    """

    delay: float
    at: datetime | None

    def __init__(self, delay: DurationLike = 0, *, at: datetime | None = None) -> None:
        seconds = parse_duration(delay, field="delay")
        if at is not None and seconds:
            raise ValueError("give either delay or at, not both")
        object.__setattr__(self, "delay", seconds)
        object.__setattr__(self, "at", None if at is None else _aware("at", at))

    def anchored(self, now: datetime) -> OneTimeTrigger:
        """This trigger with its fire time fixed: ``now + delay`` (itself if ``at`` is set)."""
        if self.at is not None:
            return self
        moment = _aware("now", now)
        fire = moment.astimezone(UTC) + timedelta(seconds=self.delay)
        return OneTimeTrigger(at=fire.astimezone(moment.tzinfo))

    def next_fire(self, after: datetime) -> datetime | None:
        """``at`` if it is later than ``after``, else ``None``; unanchored, ``after + delay``.
        In UTC either way."""
        moment = _aware("after", after).astimezone(UTC)
        if self.at is None:
            return moment + timedelta(seconds=self.delay)
        return self.at.astimezone(UTC) if moment < self.at else None

    def __repr__(self) -> str:
        if self.at is not None:
            return f"OneTimeTrigger(at={self.at.isoformat()!r})"
        return f"OneTimeTrigger(delay={format_duration(self.delay)})"


class EventTrigger:
    """Fires each time ``fire(payload)`` is called, from any thread; nothing is ever lost.

    Every fire queues its payload: three fires before the scheduler looks are three pending
    events, run one after another as slots free. The scheduler attaches one listener with
    ``_attach``; it is called with no arguments in the firing thread after each fire, so it
    must be quick (it wakes the loop). Fires before a listener is attached are still queued.
    ``next_fire`` is always ``None``: an event trigger has no schedule.
    """

    __slots__ = ("_listener", "_lock", "_pending", "name")

    def __init__(self, name: str | None = None) -> None:
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name: expected a string, got {name!r}")
        self.name = name
        self._lock = threading.Lock()
        self._pending: deque[Any] = deque()
        self._listener: Callable[[], None] | None = None

    def fire(self, payload: Any = None, *, cause: str | None = None) -> None:
        """Queue one event carrying ``payload`` and tell the listener, if one is attached.
        ``cause`` names the fire for the runs it queues (a service's durable fire id)."""
        with self._lock:
            self._pending.append((payload, cause))
            listener = self._listener
        # Outside the lock: the listener may take the scheduler's own locks.
        if listener is not None:
            listener()

    def drain(self) -> list[Any]:
        """Take all pending payloads, oldest first."""
        return [payload for payload, _cause in self.take()]

    def take(self) -> list[tuple[Any, str | None]]:
        """Take all pending (payload, cause) pairs, oldest first."""
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        return pending

    def pending(self) -> int:
        """How many events wait to be drained."""
        with self._lock:
            return len(self._pending)

    def next_fire(self, after: datetime) -> datetime | None:
        """Always ``None``: events come from ``fire()``, not from the clock."""
        return None

    def _attach(self, listener: Callable[[], None] | None) -> None:
        # For the scheduler only: one listener at a time; attaching replaces, None detaches.
        with self._lock:
            self._listener = listener

    def __repr__(self) -> str:
        name = "" if self.name is None else f"name={self.name!r}, "
        return f"EventTrigger({name}pending={self.pending()})"


def _has(obj: object, name: str) -> bool:
    return callable(getattr(obj, name, None))


def _aware(field: str, value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{field}: expected a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{field}: must be timezone-aware, got naive {value.isoformat()!r}")
    return value


def _interval(value: DurationLike) -> float:
    seconds = parse_duration(value, field="interval")
    # timedelta keeps microseconds; a shorter interval would be a step of zero.
    if timedelta(seconds=seconds) <= timedelta(0):
        raise ValueError(f"interval: must be greater than zero, got {value!r}")
    return seconds


def _zone(value: tzinfo | str | None) -> tzinfo:
    if value is None:
        return UTC
    if isinstance(value, tzinfo):
        return value
    if not isinstance(value, str):
        raise ValueError(f"timezone: expected a zone name or a tzinfo, got {value!r}")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone: unknown time zone {value!r}") from None


def _zone_name(zone: tzinfo) -> str:
    return zone.key if isinstance(zone, ZoneInfo) else str(zone)


def _cron(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"cron: expected a string, got {value!r}")
    text = " ".join(value.split())
    reason = None
    if text.startswith("@"):
        if text.lower() not in _CRON_SHORTCUTS:
            reason = f"unknown shortcut (use one of {', '.join(_CRON_SHORTCUTS)})"
    elif len(text.split()) != 5:
        count = len(text.split())
        reason = f"expected 5 fields ({_CRON_FIELDS}), got {count}"
        if count in (6, 7):
            reason += " (fields for seconds or years are not supported)"
    if reason is None:
        try:
            croniter(text, _PROBE).get_next(datetime)
        except CroniterBadDateError:
            reason = "it never matches a date"
        except ValueError as error:  # croniter's errors are ValueErrors
            reason = str(error)
    if reason is not None:
        raise ValueError(f"cron: invalid expression {value!r}: {reason}")
    return text
