"""A function decorated with ``@governed`` in an imported module (apart from task_helpers,
which every child imports and which must stay light)."""

from __future__ import annotations

import os

from governor import Limits, governed


@governed(limits=Limits(memory="256MiB", wall_time=120))
def governed_pid(fail: str | None = None) -> int:
    """Runs governed wherever it is called: its pid, or ``KeyError(fail)``."""
    if fail:
        raise KeyError(fail)
    return os.getpid()
