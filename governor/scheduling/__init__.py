"""The scheduler and what it owns: tasks, triggers, the clock, the resource budget.

_scheduler.py   the loop thread, its commands, the task registry, the retry decision
_task.py        Task: what to run, when, under which limits, and its recent history
_triggers.py    PeriodicTrigger, OneTimeTrigger, EventTrigger
_clock.py       SystemClock, FakeClock
_budget.py      what the host can give (auto budgets) and its pressure
"""

from governor.scheduling._clock import FakeClock, SystemClock
from governor.scheduling._scheduler import Scheduler
from governor.scheduling._task import Task
from governor.scheduling._triggers import EventTrigger, OneTimeTrigger, PeriodicTrigger

__all__ = [
    "EventTrigger",
    "FakeClock",
    "OneTimeTrigger",
    "PeriodicTrigger",
    "Scheduler",
    "SystemClock",
    "Task",
]
