"""The README's enforcement table, read as the records should show it: for one column, the
mechanism each limit's record names (``None``: listed in ``unenforced``)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
LIMITS = ("memory", "memory_high", "cpu_time", "cpu_rate", "wall_time", "pids", "open_files", "file_size")


def _rows() -> tuple[list[str], dict[str, list[str]]]:
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| limit | cgroup v2, root |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        name = re.match(r"`(\w+)`", cells[0])
        if name and name.group(1) in LIMITS:
            rows[name.group(1)] = cells
    return header, rows


def enforcement_column(column: str) -> dict[str, str | None]:
    """Limit -> mechanism, as the README's column ``column`` (its header's start) describes it."""
    header, rows = _rows()
    index = next(i for i, title in enumerate(header) if title.startswith(column))
    cgroup = "cgroup1" if "v1" in header[index] else "cgroup2"
    found: dict[str, str | None] = {}
    for limit, cells in rows.items():
        cell = cells[index]
        if cell.startswith("same as root"):
            cell = cells[header.index("cgroup v2, root")]
        if cell.startswith("not enforced"):
            found[limit] = None
        elif cell.startswith("monotonic deadline"):
            found[limit] = "deadline"
        elif cell.startswith("`RLIMIT_"):
            found[limit] = "rlimit"
        elif cell.startswith(("tree watch", "SIGSTOP")):
            found[limit] = "watchdog"
        else:
            found[limit] = cgroup
    assert set(found) == set(LIMITS), f"the README's table lacks rows for {set(LIMITS) - set(found)}"
    return found
