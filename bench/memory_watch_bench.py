"""How far past a 200 MiB limit a memory hog gets, by mechanism, at the default settings.

The hog allocates 16 MiB blocks as fast as it can (about 2 GB/s here) or paced to about
667 MiB/s (a 24 ms sleep after each block). Contenders, side by side in one run:

- governor with each mechanism this host offers (``auto``, ``rlimit``, ``watchdog``), the hog
  once as a command and once as a function defined in this script's ``__main__``;
- what one writes by hand without cgroups: ``subprocess.Popen`` plus a psutil loop that sums
  the tree's RSS every 100 ms (or 10 ms) and kills it once it is over.

The figures are the true peak (the kernel's, where a cgroup keeps it; else the larger of
``ru_maxrss`` and the samples) and, for governor, the record's ``memory_overshoot_bound_bytes``.
Medians and maxima of ``--runs`` runs; ``--busy`` adds two busy loops of ours on the host.

    python bench/memory_watch_bench.py [--runs 9] [--busy]
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
from host_load import bench_arguments, busy_loops

import governor
from governor import Limits
from runner._enforcement import cgroup_unavailable

MiB = 1 << 20
LIMIT = 200 * MiB
BLOCK = 16 * MiB
PACES = {"2 GB/s": 0.0, "667 MiB/s": 0.024}


def hog(pause: float) -> int:
    """Defined in ``__main__``: allocate and touch 16 MiB blocks, up to 2 GiB."""
    blocks = []
    for _ in range(128):
        blocks.append(bytearray(BLOCK))
        if pause:
            time.sleep(pause)
    return len(blocks)


def hog_command(pause: float) -> list[str]:
    code = (
        f"import time\nb = []\nfor _ in range(128):\n b.append(bytearray({BLOCK}))\n"
        f" if {pause}: time.sleep({pause})"
    )
    return [sys.executable, "-c", code]


def by_governor(mode: str, form: str) -> Callable[[float], tuple[int, int | None]]:
    def one(pause: float) -> tuple[int, int | None]:
        target: object = hog_command(pause) if form == "command" else hog
        args = () if form == "command" else (pause,)
        record = governor.run(target, *args, limits=Limits(memory=LIMIT), enforcement=mode)  # type: ignore[arg-type]
        assert record.outcome.value == "memory_exceeded", record
        return record.usage.peak_memory_bytes, record.usage.memory_overshoot_bound_bytes

    return one


def by_psutil(interval: float) -> Callable[[float], tuple[int, int | None]]:
    def one(pause: float) -> tuple[int, int | None]:
        child = subprocess.Popen(hog_command(pause))
        process, seen = psutil.Process(child.pid), 0
        with contextlib.suppress(psutil.NoSuchProcess):
            while child.poll() is None:
                rss = sum(p.memory_info().rss for p in (process, *process.children(recursive=True)))
                seen = max(seen, rss)
                if rss > LIMIT:
                    child.kill()
                    break
                time.sleep(interval)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = status
        return max(seen, usage.ru_maxrss * 1024), None

    return one


def main() -> None:
    arguments = bench_arguments(__doc__ or "", 9)
    modes = ["auto", "rlimit", "watchdog"]
    contenders: dict[str, Callable[[float], tuple[int, int | None]]] = {}
    for mode in modes:
        for form in ("command", "__main__ f"):
            contenders[f"governor {mode} ({form})"] = by_governor(mode, form)
    contenders["Popen + psutil, 100 ms"] = by_psutil(0.1)
    contenders["Popen + psutil, 10 ms"] = by_psutil(0.01)
    strongest = next((m for m in ("cgroup2", "cgroup1") if cgroup_unavailable(m) is None), "rlimit")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with busy_loops(2) if arguments.busy else contextlib.nullcontext():
        print(f"limit 200 MiB, {arguments.runs} runs each; auto = {strongest}; busy host: {arguments.busy}")
        print(f"{'contender':<34} {'pace':>10} {'peak median':>12} {'peak max':>9} {'bound median':>13}")
        for name, one in contenders.items():
            for pace, pause in PACES.items():
                measured = [one(pause) for _ in range(arguments.runs)]
                peaks = [peak / MiB for peak, _ in measured]
                bounds = [bound / MiB for _, bound in measured if bound is not None]
                bound = f"{statistics.median(bounds):.1f}" if bounds else "-"
                median = statistics.median(peaks)
                print(f"{name:<34} {pace:>10} {median:>12.1f} {max(peaks):>9.1f} {bound:>13}")


if __name__ == "__main__":
    main()
