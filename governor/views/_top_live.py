"""The interactive ``governor top``, on a terminal: rich draws it, keys change it.

    q            quit (Ctrl-C too)
    m / c / a    sort the running executions by memory, by CPU, by age (the longest first);
                 the same key again goes back to start order
    /            filter by task name: type, then Enter (Esc drops the filter)

A value within 20% of its limit is yellow, within 5% red. The terminal is put in cbreak
mode (keys arrive one by one, unechoed; Ctrl-C still interrupts) and restored on the way out.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from governor.views._top import (
    ALARM_AT,
    EXIT_NO_SOURCE,
    WARN_AT,
    add_cpu_rates,
    arrange,
    header_text,
    limit_shares,
    matching,
    name_of,
    size_text,
    summary_text,
)
from policies import format_duration

KEYS = "q quit  m memory  c cpu  a age  / filter"
_SORT_KEYS = {"m": "memory", "c": "cpu", "a": "age"}
_ESCAPE, _ENTER, _BACKSPACE = "\x1b", ("\r", "\n"), ("\x7f", "\b")


@dataclass
class State:
    """What the keys have set: the order, the filter, and whether one is being typed."""

    sort: str | None = None
    task: str = ""
    typing: str | None = None  # the filter being typed, until Enter
    done: bool = False

    def key(self, key: str) -> None:
        """Take one key."""
        if self.typing is not None:
            if key in _ENTER:
                self.task, self.typing = self.typing, None
            elif key == _ESCAPE:
                self.task, self.typing = "", None
            elif key in _BACKSPACE:
                self.typing = self.typing[:-1]
            elif key.isprintable():
                self.typing += key
        elif key == "q":
            self.done = True
        elif key in _SORT_KEYS:
            chosen = _SORT_KEYS[key]
            self.sort = None if self.sort == chosen else chosen
        elif key == "/":
            self.typing = ""
        elif key == _ESCAPE:
            self.task = ""


def style_for(share: float | None) -> str:
    """The colour of a value at ``share`` of its limit."""
    if share is None or share < WARN_AT:
        return ""
    return "bold red" if share >= ALARM_AT else "yellow"


def view_of(view: dict[str, Any], state: State, now: datetime | None = None) -> Group:
    """The whole screen for one refresh."""
    now = now or datetime.now(UTC)
    running = arrange(view.get("running", []), sort=state.sort, task=state.task)
    queued = matching(view.get("queued", []), state.task)
    header = Text(header_text(view, now), style="bold")
    summary = summary_text(view)
    table = Table(expand=False, box=None, header_style="bold reverse", pad_edge=False)
    for title, justify in (("TASK", "left"), ("TRY", "right"), ("PID", "right"), ("ELAPSED", "right"),
                           ("MEMORY", "right"), ("LIMIT", "right"), ("%LIM", "right"), ("CPU", "right"),
                           ("CPU LIM", "right")):  # fmt: skip
        table.add_column(title, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for run in running:
        limits = run.get("limits") or {}
        memory_share, cpu_share = limit_shares(run)
        elapsed = (now - datetime.fromisoformat(run["started_at"])).total_seconds()
        rate, cpu_limit = run.get("cpu_rate"), limits.get("cpu_rate")
        table.add_row(
            name_of(run) + (" (evicting)" if run.get("evicting") else ""),
            str(run.get("attempt", 1)),
            str(run.get("pid") or "-"),
            format_duration(max(elapsed, 0.0)),
            Text(size_text(run.get("memory_bytes")), style=style_for(memory_share)),
            size_text(limits.get("memory")),
            Text("-" if memory_share is None else f"{memory_share:.0%}", style=style_for(memory_share)),
            Text("-" if rate is None else f"{rate:.2f}", style=style_for(cpu_share)),
            "-" if cpu_limit is None else f"{cpu_limit:g}",
        )
    parts: list[Any] = [header, Text(summary), Text(""), table]
    if queued:
        waiting = Table(expand=False, box=None, header_style="bold reverse", pad_edge=False)
        for title in ("QUEUED", "TRY", "PRIO", "WAITING", "NEEDS", "WHY"):
            waiting.add_column(title, justify="left" if title in ("QUEUED", "WHY") else "right")
        for item in queued:
            waited = (now - datetime.fromisoformat(item["queued_at"])).total_seconds()
            waiting.add_row(
                name_of(item), str(item.get("attempt", 1)), str(item.get("priority", 0)),
                format_duration(max(waited, 0.0)), size_text(item.get("estimate_bytes")),
                item.get("wait_reason") or "next in line",
            )  # fmt: skip
        parts += [Text(""), waiting]
    sort = f"sorted by {state.sort}" if state.sort else "in start order"
    shown = f"; tasks matching {state.task!r}" if state.task else ""
    prompt = f"  filter: {state.typing}_" if state.typing is not None else ""
    parts += [Text(""), Text(f"{KEYS}   ({sort}{shown}){prompt}", style="dim")]
    return Group(*parts)


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def interactive(
    source: Callable[[], dict[str, Any]],
    *,
    interval: float,
    count: int | None,
    console: Console | None = None,
) -> int:
    """Refresh every ``interval`` seconds (``count`` times at most, ``None``: until ``q``),
    acting on keys as they come."""
    console = console or Console()
    fd = sys.stdin.fileno()
    state = State()
    previous: dict[str, tuple[float, float]] = {}
    shown = 0
    try:
        with _cbreak(fd), Live(console=console, auto_refresh=False, screen=True) as live:
            view: dict[str, Any] | None = None
            next_refresh = time.monotonic()
            while not state.done and (count is None or shown < count):
                if time.monotonic() >= next_refresh:
                    try:
                        view = source()
                    except LookupError as error:
                        live.stop()
                        print(f"governor: {error}", file=sys.stderr)
                        return EXIT_NO_SOURCE
                    add_cpu_rates(view, previous, time.monotonic())
                    shown += 1
                    next_refresh = time.monotonic() + interval
                assert view is not None
                live.update(view_of(view, state), refresh=True)
                if count is not None and shown >= count:
                    break
                ready, _, _ = select.select([fd], [], [], max(0.0, next_refresh - time.monotonic()))
                if ready:
                    for key in os.read(fd, 64).decode(errors="replace"):
                        state.key(key)
    except KeyboardInterrupt:
        return 0
    return 0
