"""Task bodies the tests run in child processes: crashes, hogs, bombs, well-behaved work.

Kept free of pytest and of heavy imports: every child that calls one imports this module.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path


def add(a: int, b: int) -> int:
    return a + b


def echo_kwargs(**kwargs: object) -> dict[str, object]:
    return kwargs


def raise_value_error(text: str) -> None:
    def deeper() -> None:
        raise ValueError(text)

    deeper()


class PickyError(Exception):
    """An exception whose __init__ needs two arguments: unpickling it by default fails."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def raise_picky() -> None:
    raise PickyError(1, 2)


def segfault() -> None:
    ctypes.string_at(0)


def exit_without_result(code: int = 0) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def memory_hog(total: int = 2 << 30, step: int = 16 << 20, ready: str | None = None) -> int:
    """Allocate and touch ``total`` bytes in ``step`` chunks (about 2 GB/s here)."""
    chunks = []
    for _ in range(total // step):
        chunks.append(bytearray(step))  # bytearray zero-fills: the pages are touched
    return len(chunks)


def spike(size: int) -> str:
    """Touch ``size`` bytes once and free them at once: a spike no sampler would see."""
    block = bytearray(size)
    del block
    return "spiked"


def busy(seconds: float) -> float:
    """Spin for ``seconds`` of wall time; return the CPU seconds this process got."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return time.process_time()


def busy_forever() -> None:
    while True:
        pass


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def wait_for_ever(ready: str) -> None:
    """Signal readiness by creating ``ready``, then block."""
    Path(ready).touch()
    threading.Event().wait()


def ignore_term_and_wait(ready: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(ready).touch()
    while True:
        time.sleep(3600)


def big_result(size: int) -> bytes:
    return b"x" * size


def return_lock() -> object:
    return threading.Lock()


def fork_bomb(limit: int = 300) -> int:
    """Fork sleeping children until fork fails or ``limit`` (a safety bound) is reached."""
    count = 0
    while count < limit:
        try:
            pid = os.fork()
        except OSError:
            return count  # refused: the limit held
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        count += 1
    time.sleep(60)  # the safety bound was reached: wait to be killed
    return count


def open_files(count: int) -> int:
    handles = [open(os.devnull) for _ in range(count)]  # noqa: SIM115
    return len(handles)


def write_file(path: str, size: int) -> int:
    with open(path, "wb") as handle:
        handle.write(b"\0" * size)
    return size


def run_a_governor_inside() -> dict[str, str]:
    """Run a governed command from inside a governed child: the inner governor makes its own
    cgroups under the child's. Returns the inner outcome and the child's cgroups."""
    import governor

    inner = governor.run(["true"])
    with open("/proc/self/cgroup") as handle:
        return {"inner": str(inner.outcome), "cgroups": handle.read()}


def describe_self() -> dict[str, object]:
    """Facts about the child's own confinement, for the isolation tests."""
    libc = ctypes.CDLL(None, use_errno=True)
    signum = ctypes.c_int(0)
    libc.prctl(2, ctypes.byref(signum), 0, 0, 0)  # PR_GET_PDEATHSIG
    with open("/proc/self/cgroup") as handle:
        cgroups = handle.read()
    return {
        "pid": os.getpid(),
        "sid": os.getsid(0),
        "pdeathsig": signum.value,
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "cgroups": cgroups,
        "threads": threading.active_count(),
        "modules": len(sys.modules),
    }


def print_and_return(text: str) -> str:
    print(text)
    print("to stderr", file=sys.stderr)
    return text


def wait_for_release(fifo: str, ready: str | None = None) -> str:
    """Block until the test opens ``fifo`` for writing and closes it (no sleeping, no polling)."""
    if ready is not None:
        Path(ready).touch()
    with open(fifo, "rb") as pipe:
        pipe.read()
    return "released"


def fail_until(counter: str, successes_after: int) -> int:
    """Fail on the first ``successes_after`` calls (counted in a file), then succeed."""
    path = Path(counter)
    calls = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(calls))
    if calls <= successes_after:
        raise RuntimeError(f"attempt {calls} fails on purpose")
    return calls


def hold_memory(size: int) -> int:
    """Touch ``size`` bytes and keep them until returning."""
    block = bytearray(size)
    return len(block)


def hold_memory_until_released(
    size: int, fifo: str, ready: str, after: str | None = None, then: str | None = None
) -> int:
    """Touch ``size`` bytes, say so through ``ready``, and keep them until the test releases ``fifo``.

    With ``after`` (a FIFO), allocate only once another process has opened and closed it; with
    ``then``, open and close that FIFO once the bytes are touched: two children order their
    growth through it.
    """
    if after is not None:
        with open(after, "rb") as waiting:
            waiting.read()
    block = bytearray(size)
    block[:: 1 << 12] = b"\x01" * len(block[:: 1 << 12])  # every page really touched
    if then is not None:
        with open(then, "wb"):
            pass
    wait_for_release(fifo, ready)
    return len(block)


def append_line(path: str, text: str, payload: object = None) -> str:
    with open(path, "a") as handle:
        handle.write(f"{text}\n" if payload is None else f"{text}:{payload}\n")
    return text


def own_cgroup_file(name: str) -> str:
    """The contents of ``name`` in this process's cgroup v2 directory."""
    with open("/proc/self/cgroup") as cgroups:
        path = next(line.split(":", 2)[2].strip() for line in cgroups if line.startswith("0::"))
    with open(f"/sys/fs/cgroup{path}/{name}") as file:
        return file.read().strip()


def press_on_memory(stop: str, total: int = 96 << 20, step: int = 4 << 20) -> int:
    """Hold ``total`` bytes (touched in ``step`` chunks), then keep charging fresh pages (1 MiB
    allocated and freed over and over) until ``stop`` exists: above a ``memory_high`` the kernel
    reclaims and throttles every new charge, and the task stalls on memory."""
    held = []
    while not os.path.exists(stop):
        if len(held) * step < total:
            held.append(bytearray(step))
        else:
            bytearray(1 << 20)
    return len(held)


def say_pid_and_wait(ready: str) -> None:
    """Write this process's pid to ``ready`` (whole, by rename), then block for ever."""
    Path(f"{ready}.tmp").write_text(str(os.getpid()))
    os.rename(f"{ready}.tmp", ready)
    threading.Event().wait()
