"""Load on the host that is not the governor's: busy loops of ours, ended by pid."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def busy_loops(count: int) -> Iterator[list[int]]:
    """``count`` busy loops, outside the governor, killed by pid on the way out."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield [loop.pid for loop in loops]
    finally:
        for loop in loops:
            os.kill(loop.pid, signal.SIGKILL)
            loop.wait()


def bench_arguments(description: str, runs: int) -> argparse.Namespace:
    """``--runs N`` (default ``runs``) and ``--busy`` (two busy loops of ours meanwhile)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--busy", action="store_true", help="two busy loops of ours on the host meanwhile")
    return parser.parse_args()
