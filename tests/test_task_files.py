"""Task files: what loads, and the message for each way a file can be wrong."""

from __future__ import annotations

import os
import pickle
import textwrap
from pathlib import Path

import pytest

from governor import EventTrigger, OneTimeTrigger, PeriodicTrigger
from governor.service._taskfile import TaskFileError, load_task_file

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tasks.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tasks.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_demo_schedule_loads() -> None:
    definitions = load_task_file(EXAMPLE)
    assert [d.name for d in definitions] == ["checksums", "report", "index", "reindex"]
    tasks = {d.name: d.build() for d in definitions}
    assert isinstance(tasks["checksums"].triggers[0], PeriodicTrigger)
    assert tasks["report"].triggers[0].cron == "* * * * *"  # type: ignore[attr-defined]
    assert isinstance(tasks["index"].triggers[0], OneTimeTrigger)
    assert tasks["index"].limits.memory == 100 << 20
    assert tasks["index"].retry_policy.memory_growth == 2.0
    assert definitions[3].events == ("reindex",)
    assert isinstance(tasks["reindex"].triggers[0], EventTrigger)


def test_every_field_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[task]]
        name = "full"
        command = ["echo", "hi"]
        cron = "0 9 * * 1-5"
        timezone = "Europe/Berlin"
        jitter = "30s"
        priority = 7
        max_instances = 2
        description = "weekday mornings"
        cwd = "/tmp"
        env = { EXTRA = "1" }
        [task.limits]
        memory = "512MiB"
        cpu = 1.5
        timeout = "20m"
        [task.retry]
        max_retries = 2
        delay = "30s"
        backoff = 2.0
        """,
    )
    (definition,) = load_task_file(path)
    task = definition.build()
    assert task.priority == 7 and task.max_instances == 2 and task.description == "weekday mornings"
    assert task.limits.cpu_rate == 1.5 and task.limits.wall_time == 1200
    assert task.retry_policy.max_retries == 2 and task.retry_policy.delay == 30
    assert (
        task.spec.env is not None
        and task.spec.env["EXTRA"] == "1"
        and task.spec.env["PATH"] == os.environ["PATH"]
    )
    assert task.spec.cwd == "/tmp"


def test_build_makes_fresh_tasks_and_the_fingerprint_tracks_changes(tmp_path: Path) -> None:
    path = write(tmp_path, '[[task]]\nname = "t"\ncommand = ["true"]\ninterval = "5m"\n')
    (first,) = load_task_file(path)
    (again,) = load_task_file(path)
    assert first.fingerprint == again.fingerprint
    one, two = first.build(), first.build()
    assert one is not two and one.triggers[0] is not two.triggers[0]
    path.write_text('[[task]]\nname = "t"\ncommand = ["true"]\ninterval = "6m"\n')
    (changed,) = load_task_file(path)
    assert changed.fingerprint != first.fingerprint


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[task]]\nname = "t"\ncommand = "ls -l"\n', "task t: command: give a list, e.g. ['ls', '-l']"),
        ('[[task]]\nname = "t"\n', "task t: command: give exactly one of command"),
        ('[[task]]\nname = "t"\ncommand = ["a"]\nfunction = "os:getpid"\n', "give exactly one of command"),
        ('[[task]]\nname = "t"\ncommand = ["a"]\nargs = [1]\n', "task t: args: put arguments in command"),
        (
            '[[task]]\nname = "t"\nfunction = "no_such_module_xyz:f"\n',
            "task t: function: cannot import 'no_such_module_xyz'",
        ),
        (
            '[[task]]\nname = "t"\nfunction = "os:no_such_thing"\n',
            "task t: function: 'os' has no 'no_such_thing'",
        ),
        (
            '[[task]]\nname = "t"\ncommand = ["a"]\ncron = "61 * * * *"\n',
            "task t: cron: invalid expression '61 * * * *'",
        ),
        ('[[task]]\nname = "t"\ncommand = ["a"]\ninterval = "-5s"\n', "task t: interval:"),
        (
            '[[task]]\nname = "t"\ncommand = ["a"]\ncron = "* * * * *"\nevent = "x"\n',
            "task t: event: give one of",
        ),
        (
            '[[task]]\nname = "t"\ncommand = ["a"]\ntimezone = "UTC"\n',
            "task t: timezone: goes with cron or interval",
        ),
        ('[[task]]\nname = "t"\ncommand = ["a"]\ncrom = "* * * * *"\n', "task t: crom: unknown key"),
        (
            '[[task]]\nname = "t"\ncommand = ["a"]\npriority = "high"\n',
            "task t: priority: must be a whole number",
        ),
        ('[[task]]\nname = "t"\ncommand = ["a"]\nmax_instances = 0\n', "task t: max_instances:"),
        (
            '[[task]]\nname = "t"\ncommand = ["a"]\n[task.limits]\nmemory = "12XB"\n',
            "task t: limits.memory: unknown size unit",
        ),
        (
            '[[task]]\nname = "t"\ncommand = ["a"]\n[task.limits]\nmemroy = "1G"\n',
            "task t: limits: unknown limit 'memroy'",
        ),
        (
            '[[task]]\nname = "t"\ncommand = ["a"]\n[task.retry]\nmax_retries = -1\n',
            "task t: retry.max_retries:",
        ),
        (
            '[[task]]\nname = "t"\ncommand = ["a"]\n[[task]]\nname = "t"\ncommand = ["b"]\n',
            "task t: name: a task of this name is defined twice",
        ),
        ('[[task]]\ncommand = ["a"]\n', "task #1: name: must be a non-empty string"),
        ("title = 'x'\n", "unknown top-level key(s) title"),
        ("", "no [[task]] tables"),
        ("[[task]\n", "not valid TOML"),
    ],
)
def test_each_mistake_names_the_file_the_task_and_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TaskFileError) as caught:
        load_task_file(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


NR_OPEN = int(Path("/proc/sys/fs/nr_open").read_text())
HOSTILE = r"""
[[task]]
name = "limits"
command = ["true"]
[task.limits]
pids = 99999999999999999
cpu = 1e9
cpu_time = 1e300
open_files = 99999999999999
memory = 1e30
timeout = -1

[[task]]
name = "schedule"
command = ["true"]
delay = 1e300

[[task]]
name = "interval"
command = ["true"]
interval = 1e12

[[task]]
name = "nul-argv"
command = ["echo", "a\u0000b"]

[[task]]
name = "nul-env"
command = ["true"]
env = { X = "a\u0000b" }

[[task]]
name = "fine"
command = ["true"]
"""


def test_every_problem_of_a_file_at_once_each_under_the_key_written(tmp_path: Path) -> None:
    path = write(tmp_path, HOSTILE)
    with pytest.raises(TaskFileError) as caught:
        load_task_file(path)
    problems = [str(problem).removeprefix(f"{path}: ") for problem in caught.value.problems]
    kernel = "(what the kernel accepts here)"
    assert problems == [
        f"task limits: limits.pids: at most 4194304 {kernel}, got 99999999999999999",
        "task limits: limits.cpu: at most 4096 cores, got 1000000000.0",
        "task limits: limits.cpu_time: at most 100 years (3155760000s), got 1e+300",
        f"task limits: limits.open_files: at most {NR_OPEN} {kernel}, got 99999999999999",
        "task limits: limits.memory: at most 1 EiB, got 1e+30",
        "task limits: limits.timeout: must not be negative, got -1",
        "task schedule: delay: at most 100 years (3155760000s), got 1e+300",
        "task interval: interval: at most 100 years (3155760000s), got 1000000000000.0",
        "task nul-argv: command: argv[1] contains a NUL byte: 'a\\x00b'",
        "task nul-env: env.X: a variable name must be non-empty without '=', and neither may hold a NUL byte",
    ]
    assert str(caught.value).startswith(f"{path}: 10 problems:\n  {path}: task limits:")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert str(copy) == str(caught.value) and len(copy.problems) == 10


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ("cpu = 1e9", "limits.cpu: at most 4096 cores"),
        ("cpu_time = 1e300", "limits.cpu_time: at most 100 years"),
        ("open_files = 99999999999999", "limits.open_files: at most"),
        ("memory = 1e30", "limits.memory: at most 1 EiB"),
        ("timeout = -1", "limits.timeout: must not be negative"),
        ("processes = 0", "limits.processes: must be greater than zero"),
        ("timeout = 5\nwall_time = 6", "limits.wall_time: the same limit as 'timeout'"),
    ],
)
def test_limits_are_bounded_by_what_the_kernel_accepts(tmp_path: Path, limit: str, message: str) -> None:
    path = write(tmp_path, f'[[task]]\nname = "t"\ncommand = ["a"]\n[task.limits]\n{limit}\n')
    with pytest.raises(TaskFileError) as caught:
        load_task_file(path)
    assert f"{path}: task t: {message}" in str(caught.value)


def test_a_binary_file_is_named_in_its_error(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe")
    with pytest.raises(TaskFileError) as caught:
        load_task_file(path)
    assert str(caught.value) == f"{path}: not UTF-8 text (byte 8): is it a TOML task file?"


def test_missing_file_and_pickling(tmp_path: Path) -> None:
    with pytest.raises(TaskFileError, match="no such file") as caught:
        load_task_file(tmp_path / "absent.toml")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert str(copy) == str(caught.value) and copy.path == caught.value.path
