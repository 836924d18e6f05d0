"""Small pure pieces of the runner, tested alone: the CPU-rate duty cycle, frame reading, the
child's messages and the classifier of endings."""

from __future__ import annotations

import os
import pickle
import signal

import pytest

from policies import Limits
from runner._messages import ExecFailed, Exited, Ok, Raised, SetupFailed, Unreadable, from_wire
from runner._outcome import Ending, classify
from runner._records import Outcome, Usage
from runner._throttle import DutyCycle
from runner._wire import FrameReader, frame, write_frame


def _simulate(rate: float, seconds: float, tick: float = 0.1) -> float:
    """A busy single-threaded tree under the duty cycle, on a simulated clock."""
    cycle = DutyCycle(rate)
    now, cpu, running = 0.0, 0.0, True
    while now < seconds:
        action = cycle.update(now, cpu)
        if action == "stop":
            running = False
        elif action == "continue":
            running = True
        step = min(cycle.next_check(now), seconds) - now
        step = max(step, 1e-6)
        if running:
            cpu += step
        now += step
    return cpu / seconds


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 0.75])
def test_duty_cycle_holds_the_average_rate(rate: float) -> None:
    assert _simulate(rate, 60.0) == pytest.approx(rate, rel=0.05)


def test_duty_cycle_leaves_an_idle_tree_alone() -> None:
    cycle = DutyCycle(0.5)
    assert cycle.update(0.0, 0.0) is None
    assert cycle.update(0.1, 0.01) is None  # used less than its share
    assert cycle.stopped_until is None


def test_frames_survive_arbitrary_chunking() -> None:
    payloads = [b"", b"a", b"x" * 70000, b"tail"]
    stream = b"".join(frame(p) for p in payloads)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    reader = FrameReader()
    got: list[bytes] = []
    try:
        for start in range(0, len(stream), 777):  # a writer that stalls mid-frame
            os.write(write_end, stream[start : start + 777])
            got += reader.read_from(read_end)
        os.close(write_end)
        got += reader.read_from(read_end)
    finally:
        os.close(read_end)
    assert got == payloads
    assert reader.eof and reader.pending == 0


def test_truncated_frame_is_visible_at_eof() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.write(write_end, frame(b"complete") + frame(b"cut short")[:6])
    os.close(write_end)
    reader = FrameReader()
    assert reader.read_from(read_end) == [b"complete"]
    assert reader.eof and reader.pending > 0
    os.close(read_end)


def test_write_frame_round_trip() -> None:
    read_end, write_end = os.pipe()
    write_frame(write_end, b"hello")
    os.close(write_end)
    reader = FrameReader()
    assert reader.read_from(read_end) == [b"hello"]
    os.close(read_end)


# -- the child's messages and the pure classifier ---------------------------------------------


@pytest.mark.parametrize(
    "message",
    [Ok({"a": 1}), Raised(None, "builtins.ValueError", "bad", "Traceback ...", False),
     ExecFailed(2, "No such file"), SetupFailed("PermissionError: cgroup.procs")],
    ids=["ok", "raised", "exec_failed", "setup_failed"],
)  # fmt: skip
def test_messages_cross_the_wire_as_plain_tuples(message: object) -> None:
    data = pickle.dumps(message.wire())  # type: ignore[attr-defined]
    assert b"runner" not in data  # unpickling needs no import of ours, in either process
    back = from_wire(pickle.loads(data))
    assert type(back) is type(message)
    assert back.wire() == message.wire()  # type: ignore[union-attr]


@pytest.mark.parametrize("data", [None, "ok", ("ok",), ("nonsense", 1), ["ok", 1], {"ok": 1}])
def test_anything_else_on_the_wire_is_unreadable(data: object) -> None:
    assert isinstance(from_wire(data), Unreadable)


def _ending(**facts: object) -> Ending:
    defaults: dict[str, object] = {
        "is_command": False,
        "limits": Limits(memory="100MiB", cpu_time=5),
        "message": None,
        "exited": Exited(0, 0.01, 0.0, 1024, 1.0),
        "zygote_died": False,
        "cancelled": False,
        "violation": None,
        "usage": Usage.zero(),
        "memory_by_rlimit": False,
    }
    return Ending(**{**defaults, **facts})  # type: ignore[arg-type]


def _killed_by(signum: int) -> Exited:
    return Exited(signum, 0.0, 0.0, 0, 1.0)  # a wait status of "killed by signum"


@pytest.mark.parametrize(
    ("facts", "outcome", "limit"),
    [
        ({"message": Ok(1)}, Outcome.SUCCEEDED, None),
        ({"message": None}, Outcome.CRASHED, None),  # a callable that exited without a word
        ({"message": Ok(1), "cancelled": True}, Outcome.CANCELLED, None),  # cancelling wins
        ({"violation": "wall_time", "exited": _killed_by(signal.SIGTERM)}, Outcome.TIMED_OUT, "wall_time"),
        ({"violation": "pids"}, Outcome.FAILED, "pids"),
        ({"usage": Usage(peak_memory_bytes=1, cpu_user_seconds=0, cpu_system_seconds=0, wall_seconds=1,
                         peak_processes=1, oom_kills=1), "exited": _killed_by(signal.SIGKILL)},
         Outcome.MEMORY_EXCEEDED, "memory"),
        ({"exited": _killed_by(signal.SIGXCPU)}, Outcome.CPU_TIME_EXCEEDED, "cpu_time"),
        ({"exited": _killed_by(signal.SIGXFSZ), "limits": Limits(file_size="1M")},
         Outcome.FAILED, "file_size"),
        ({"exited": _killed_by(signal.SIGSEGV)}, Outcome.CRASHED, None),
        ({"exited": None, "zygote_died": True}, Outcome.CRASHED, None),
        ({"message": SetupFailed("no cgroup")}, Outcome.CRASHED, None),
        ({"message": Raised(None, "builtins.MemoryError", "", "", True), "memory_by_rlimit": True},
         Outcome.MEMORY_EXCEEDED, "memory"),
        ({"message": Raised(None, "builtins.MemoryError", "", "", True)}, Outcome.FAILED, None),
        ({"is_command": True, "exited": Exited(3 << 8, 0, 0, 0, 1.0), "memory_by_rlimit": True,
          "stderr_tail": b"fatal: Cannot allocate memory\n"}, Outcome.MEMORY_EXCEEDED, "memory"),
        ({"is_command": True, "exited": Exited(3 << 8, 0, 0, 0, 1.0),
          "stderr_tail": b"fatal: Cannot allocate memory\n"}, Outcome.FAILED, None),
        ({"is_command": True, "message": ExecFailed(2, "No such file")}, Outcome.FAILED, None),
    ],
)  # fmt: skip
def test_one_outcome_for_every_ending(facts: dict[str, object], outcome: Outcome, limit: str | None) -> None:
    verdict = classify(_ending(**facts))
    assert (verdict.outcome, verdict.breached_limit) == (outcome, limit)
    assert (verdict.error is None) == (outcome is Outcome.SUCCEEDED)
