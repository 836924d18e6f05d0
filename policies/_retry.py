"""``RetryPolicy``: whether a finished attempt runs again, after how long, under what limits.

Pure: the caller passes in the outcome (as its string value, e.g. ``"failed"``), the attempt
number, a random fraction for jitter and the limits of the attempt that just ended. Outcomes
are plain strings here because ``policies`` imports nothing from ``runner``; ``runner.Outcome``
is a ``StrEnum``, so its members can be passed as they are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from policies._limits import Limits
from policies._units import finite_number, format_duration, parse_duration, whole_number

DurationLike = int | float | str | timedelta

# Outcomes a run may end in that are worth another attempt. ``succeeded`` is not a failure and
# ``cancelled`` was asked for, so retrying either would undo what happened on purpose.
# In the order ``runner.Outcome`` lists them, for error messages.
RETRYABLE_OUTCOMES = ("failed", "crashed", "memory_exceeded", "cpu_time_exceeded", "timed_out", "lost")
_NEVER_RETRIED = {
    "succeeded": "it is not a failure",
    "cancelled": "a cancelled run was stopped on request and is never retried",
    "evicted": "an evicted run is always queued again by the governor; no retry policy decides it",
}
_DEFAULT_RETRY_ON = frozenset({"failed", "crashed"})


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """When and how a task's failed attempt is tried again.

    - ``max_retries``: attempts after the first; ``0`` never retries, ``2`` allows 3 attempts.
    - ``delay``: wait before the first retry (seconds, ``timedelta`` or ``"30s"``).
    - ``backoff``: factor (>= 1) applied to the delay for each further retry.
    - ``max_delay``: cap on the delay before jitter; ``None`` for no cap.
    - ``jitter``: fraction in [0, 1]; the delay is multiplied by a factor drawn uniformly from
      ``[1 - jitter, 1 + jitter]`` so that tasks failing together do not retry together.
    - ``retry_on``: outcome names that are retried (default ``failed`` and ``crashed``); any of
      ``failed``, ``crashed``, ``memory_exceeded``, ``cpu_time_exceeded``, ``timed_out``, ``lost``.
    - ``memory_growth``: factor (>= 1) applied to the memory limit after a ``memory_exceeded``
      attempt. It only has an effect when ``memory_exceeded`` is in ``retry_on``, since
      otherwise that attempt is not retried at all.

    Invalid values raise ``ValueError`` naming the field and the value.
    """

    max_retries: int = 0
    delay: float = 0.0
    backoff: float = 1.0
    max_delay: float | None = None
    jitter: float = 0.0
    retry_on: frozenset[str] = _DEFAULT_RETRY_ON
    memory_growth: float = 1.0

    def __init__(
        self,
        *,
        max_retries: int = 0,
        delay: DurationLike = 0,
        backoff: float = 1.0,
        max_delay: DurationLike | None = None,
        jitter: float = 0.0,
        retry_on: Iterable[str] | str = _DEFAULT_RETRY_ON,
        memory_growth: float = 1.0,
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "max_retries", whole_number("max_retries", max_retries))
        setattr_(self, "delay", parse_duration(delay, field="delay"))
        setattr_(self, "backoff", _at_least_one("backoff", backoff))
        cap = None if max_delay is None else parse_duration(max_delay, field="max_delay")
        if cap is not None and cap < self.delay:
            raise ValueError(
                f"max_delay: must not be less than delay ({format_duration(self.delay)}), got {max_delay!r}"
            )
        setattr_(self, "max_delay", cap)
        setattr_(self, "jitter", _fraction("jitter", jitter))
        setattr_(self, "retry_on", _outcomes(retry_on))
        setattr_(self, "memory_growth", _at_least_one("memory_growth", memory_growth))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "retry") -> RetryPolicy:
        """Build from a mapping such as the TOML table
        ``{max_retries = 2, delay = "30s", backoff = 2.0, memory_growth = 1.5}``.

        Unknown keys raise ``ValueError`` naming ``where`` and the key; a bad value raises
        ``ValueError`` prefixed with ``where``, e.g. ``"retry.delay: must not be negative"``.
        """
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ValueError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        try:
            return cls(**dict(values))
        except ValueError as error:
            raise ValueError(f"{where}.{error}") from None

    def should_retry(self, outcome: str, attempt: int) -> bool:
        """True if the attempt numbered ``attempt`` (1 is the first try) that just ended in
        ``outcome`` is to be followed by another."""
        if whole_number("attempt", attempt) < 1:
            raise ValueError(f"attempt: must be at least 1 (the first try), got {attempt!r}")
        return str(outcome) in self.retry_on and attempt <= self.max_retries

    def delay_before(self, attempt: int, random_fraction: float) -> float:
        """Seconds to wait before attempt number ``attempt`` (2 is the first retry).

        ``delay * backoff ** (attempt - 2)``, capped at ``max_delay``, then scaled by the jitter
        factor ``1 + jitter * (2 * random_fraction - 1)``; ``random_fraction`` in [0, 1) comes
        from the caller's random source. Jitter is applied after the cap, so a jittered delay
        may exceed ``max_delay`` by at most the ``jitter`` fraction.
        """
        if whole_number("attempt", attempt) < 2:
            raise ValueError(f"attempt: a retry is attempt 2 or later, got {attempt!r}")
        if not 0.0 <= random_fraction < 1.0:
            raise ValueError(f"random_fraction: must be in [0, 1), got {random_fraction!r}")
        if self.delay == 0:
            return 0.0
        try:
            base = self.delay * self.backoff ** (attempt - 2)
        except OverflowError:
            # A large attempt number with backoff > 1; only the cap can make it finite.
            base = math.inf
        if self.max_delay is not None:
            base = min(base, self.max_delay)
        return max(0.0, base * (1.0 + self.jitter * (2.0 * random_fraction - 1.0)))

    def limits_for(self, attempt_outcome: str, limits: Limits) -> Limits:
        """The limits for the attempt after one that ended in ``attempt_outcome`` under
        ``limits``: memory grown by ``memory_growth`` after ``memory_exceeded``, else unchanged."""
        if str(attempt_outcome) != "memory_exceeded" or limits.memory is None or self.memory_growth == 1.0:
            return limits
        return dataclasses.replace(limits, memory=round(limits.memory * self.memory_growth))

    def __repr__(self) -> str:
        shown = [f"max_retries={self.max_retries}"]
        if self.delay:
            shown.append(f"delay={format_duration(self.delay)}")
        if self.backoff != 1.0:
            shown.append(f"backoff={self.backoff:g}")
        if self.max_delay is not None:
            shown.append(f"max_delay={format_duration(self.max_delay)}")
        if self.jitter:
            shown.append(f"jitter={self.jitter:g}")
        if self.retry_on != _DEFAULT_RETRY_ON:
            shown.append(f"retry_on={tuple(sorted(self.retry_on))!r}")
        if self.memory_growth != 1.0:
            shown.append(f"memory_growth={self.memory_growth:g}")
        return f"RetryPolicy({', '.join(shown)})"


def _at_least_one(field: str, value: Any) -> float:
    number = finite_number(field, value)
    if number < 1.0:
        raise ValueError(f"{field}: must be at least 1.0, got {value!r}")
    return number


def _fraction(field: str, value: Any) -> float:
    number = finite_number(field, value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{field}: must be between 0 and 1, got {value!r}")
    return number


def _outcomes(value: Any) -> frozenset[str]:
    # A lone string is one outcome name (``retry_on = "failed"`` in TOML), not its letters.
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, Iterable):
        raise ValueError(f"retry_on: expected outcome names, got {value!r}")
    chosen = set()
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"retry_on: expected outcome names, got {name!r} in {value!r}")
        text = str(name)  # an ``Outcome`` member becomes its plain value
        if text in _NEVER_RETRIED:
            raise ValueError(f"retry_on: cannot retry {text!r}: {_NEVER_RETRIED[text]}")
        if text not in RETRYABLE_OUTCOMES:
            allowed = ", ".join(RETRYABLE_OUTCOMES)
            raise ValueError(f"retry_on: unknown outcome {text!r} (retryable: {allowed})")
        chosen.add(text)
    return _DEFAULT_RETRY_ON if chosen == _DEFAULT_RETRY_ON else frozenset(chosen)  # shared when default
