"""The floor of fork-per-task: os.fork() per task, the result over a pipe, 2 at a time.

Imported, it measures from the importing process; run as a script it measures from a fresh
interpreter that has imported only the modules named (``python bench/raw_fork.py 1000
governor``), since what the forking process holds decides what a fork costs.
"""

from __future__ import annotations

import os
import pickle
import select
import sys
import time

IN_FLIGHT = 2


def trivial(index: int) -> int:
    return index * 2


def raw_fork(tasks: int) -> float:
    """Tasks per second of fork, compute, write the pickled result, exit; 2 at a time."""
    running: dict[int, int] = {}  # read fd -> pid
    submitted = done = 0
    start = time.perf_counter()
    while done < tasks:
        while submitted < tasks and len(running) < IN_FLIGHT:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                os.write(write_end, pickle.dumps(trivial(submitted)))
                os._exit(0)
            os.close(write_end)
            running[read_end] = pid
            submitted += 1
        for fd in select.select(list(running), [], [])[0]:
            pickle.loads(os.read(fd, 65536))
            os.waitpid(running.pop(fd), 0)
            os.close(fd)
            done += 1
    return tasks / (time.perf_counter() - start)


if __name__ == "__main__":
    for module in sys.argv[2:]:
        __import__(module)
    print(raw_fork(int(sys.argv[1])))
