"""What is due when: the next fire of every armed trigger and every retry waiting out its
delay, in one deadline heap, plus the coarse poll of ``is_ready()`` triggers.

A time trigger has at most one pending fire. When it comes due, ``due`` arms the following
one (from the fire's own, un-jittered time, so a fixed rate does not drift; from now if the
loop was late, so catching up is one run, never a burst) before handing it over. Re-arming a
task (``arm``) discards its pending fires first; a removed task's fires are discarded with it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from governor.scheduling._deadlines import Deadlines, Entry
from governor.scheduling._task import Task
from governor.scheduling._triggers import EventTrigger, OneTimeTrigger, PeriodicTrigger, is_polled
from governor.scheduling._work import Run


@dataclass(frozen=True, slots=True)
class Fire:
    """A due fire of one trigger of a task; ``anchor`` is its un-jittered time."""

    task: Task
    index: int
    anchor: datetime


class Arming:
    """The armed triggers and delayed retries of one scheduler (see the module docstring)."""

    def __init__(self, poll_interval: float, chance: random.Random) -> None:
        self._poll_interval = timedelta(seconds=poll_interval)
        self._random = chance
        self._deadlines: Deadlines[Fire | Run] = Deadlines()
        # task id -> its one pending fire, or trigger index -> fire for a task of several
        # triggers (most tasks have one: no dict of its own for an idle task to carry)
        self._armed: dict[int, Entry[Fire | Run] | dict[int, Entry[Fire | Run]]] = {}
        self._fired_once: set[tuple[int, int]] = set()  # one-time triggers that have fired
        self._next_poll: datetime | None = None

    def arm(self, task: Task, now: datetime) -> None:
        """(Re)arm every time trigger of ``task`` from ``now``; a polled one is asked from then."""
        assert task.id is not None
        self.disarm(task.id)
        for index, trigger in enumerate(task.triggers):
            if is_polled(trigger):
                if self._next_poll is None:
                    self._next_poll = now + self._poll_interval
            elif not isinstance(trigger, EventTrigger) and (task.id, index) not in self._fired_once:
                fire = trigger.next_fire(now)
                if fire is not None:
                    self._schedule(task, index, fire)

    def disarm(self, task_id: int) -> None:
        """Discard the task's pending fires."""
        for entry in _entries(self._armed.pop(task_id, {})):
            self._deadlines.discard(entry)

    def armed(self, task_id: int) -> bool:
        """Whether the task has a fire pending."""
        return bool(self._armed.get(task_id))

    def retry(self, run: Run) -> None:
        """``run`` (the next attempt) comes due at its ``queued_at``."""
        self._deadlines.add(run.queued_at, run)

    def due(self, now: datetime) -> Iterator[Fire | Run]:
        """Every fire and retry due by ``now``, earliest first; each fire's follower is armed."""
        for item in self._deadlines.expire(now):
            if isinstance(item, Fire):
                self._fired(item, now)
            yield item

    def polled(self, now: datetime, tasks: Iterable[Task]) -> Iterator[Task]:
        """At the poll interval: the tasks one of whose ``is_ready()`` triggers says so (each
        such trigger is ``reset()``); paused tasks are not asked."""
        if self._next_poll is None or now < self._next_poll:
            return
        self._next_poll = None
        for task in tasks:
            for trigger in task.triggers:
                if not is_polled(trigger):
                    continue
                self._next_poll = now + self._poll_interval
                if not task.paused and trigger.is_ready():
                    trigger.reset()
                    yield task

    def next_wakeup(self) -> datetime | None:
        """The earliest time something here comes due, or ``None``."""
        times = [when for when in (self._deadlines.next_deadline(), self._next_poll) if when is not None]
        return min(times) if times else None

    def stop_firing(self) -> list[Run]:
        """Forget every fire and the poll, keeping the delayed retries; returns them."""
        self._next_poll = None
        for armed in self._armed.values():
            for entry in _entries(armed):
                self._deadlines.discard(entry)
        self._armed.clear()
        return [item for item in self._deadlines.items() if isinstance(item, Run)]

    def clear(self) -> list[Run]:
        """Forget everything; returns the retries that were waiting."""
        retries = self.stop_firing()
        self._deadlines.clear()
        return retries

    def pending_retries(self) -> int:
        return len(self._deadlines) - sum(len(_entries(armed)) for armed in self._armed.values())

    def _fired(self, fire: Fire, now: datetime) -> None:
        task, index = fire.task, fire.index
        armed = self._armed.get(task.id or 0)
        if isinstance(armed, dict):
            armed.pop(index, None)
            if not armed:
                del self._armed[task.id or 0]
        elif armed is not None and isinstance(armed.item, Fire) and armed.item.index == index:
            del self._armed[task.id or 0]
        trigger = task.triggers[index]
        if isinstance(trigger, OneTimeTrigger):
            self._fired_once.add((task.id or 0, index))
            return
        following = trigger.next_fire(fire.anchor)
        if following is not None and following <= now:  # we are late: skip what was missed
            following = trigger.next_fire(now)
        if following is not None:
            self._schedule(task, index, following)

    def _schedule(self, task: Task, index: int, fire: datetime) -> None:
        trigger = task.triggers[index]
        due = fire
        if isinstance(trigger, PeriodicTrigger) and trigger.jitter:
            due = trigger.jittered(fire, self._random.random())
        entry = self._deadlines.add(due, Fire(task, index, fire))
        task_id = task.id or 0
        armed = self._armed.get(task_id)
        if armed is None and len(task.triggers) == 1:
            self._armed[task_id] = entry
        elif isinstance(armed, dict):
            armed[index] = entry
        else:
            pending = {} if armed is None else {armed.item.index: armed}  # type: ignore[union-attr]
            pending[index] = entry
            self._armed[task_id] = pending


def _entries(armed: Entry[Fire | Run] | dict[int, Entry[Fire | Run]]) -> list[Entry[Fire | Run]]:
    return list(armed.values()) if isinstance(armed, dict) else [armed]
