"""``governor run`` as a user types it: a real subprocess of the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from guards import guard

GOVERNOR = [sys.executable, "-m", "governor"]


def governor(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GOVERNOR, *args], capture_output=True, text=True, timeout=timeout)


def test_readme_promise_memory_hog_ends_as_memory_exceeded() -> None:
    done = governor("run", "--memory", "100M", "--", sys.executable, "-c", "b = bytearray(10**9)")
    assert done.returncode == 121, done.stderr
    assert "memory_exceeded" in done.stderr
    assert "peak memory" in done.stderr and "MiB" in done.stderr


@pytest.mark.parametrize("mode", ["rlimit", "watchdog"])
def test_memory_hog_without_cgroups_still_ends_as_memory_exceeded(mode: str) -> None:
    done = governor(
        "run", "--enforce", mode, "--memory", "100M", "--", sys.executable, "-c", "b = bytearray(10**9)"
    )
    assert done.returncode == 121, done.stderr
    assert f"memory={mode}" in done.stderr


def test_json_record_is_the_last_line_of_stdout() -> None:
    done = governor("run", "--json", "--", "sh", "-c", "printf 'no newline'")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0] == "no newline"
    record = json.loads(lines[-1])
    for key in (
        "outcome",
        "exit_code",
        "signal",
        "peak_memory_bytes",
        "cpu_user_seconds",
        "cpu_system_seconds",
        "wall_seconds",
        "enforcement",
    ):
        assert key in record
    assert record["outcome"] == "succeeded" and record["exit_code"] == 0


def test_output_passes_through_and_summary_goes_to_stderr() -> None:
    done = governor("run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert done.returncode == 3
    assert done.stdout == "out\n"
    assert done.stderr.startswith("err\n")
    assert "governor: outcome" in done.stderr and "failed" in done.stderr


@pytest.mark.parametrize(
    ("arguments", "status"),
    [
        (["--timeout", "0.2", "--", "sleep", "30"], 124),
        (["--", "no-such-command-xyz"], 127),
        (["--", "sh", "-c", "exit 9"], 9),
        (["--", "sh", "-c", "kill -SEGV $$"], 128 + 11),
        (
            [
                "--cpu-time",
                "0.3",
                "--sample-interval",
                "0.05",
                "--",
                sys.executable,
                "-c",
                "while True: pass",
            ],
            122,
        ),
        (["--memory", "12XB", "--", "true"], 125),
        (["--"], 125),
    ],
)
def test_exit_statuses(arguments: list[str], status: int) -> None:
    assert governor("run", *arguments).returncode == status


def test_not_executable_is_126(tmp_path: os.PathLike[str]) -> None:
    script = os.path.join(tmp_path, "script.sh")
    with open(script, "w") as handle:
        handle.write("#!/bin/sh\necho hi\n")
    assert governor("run", "--", script).returncode == 126


def test_bad_limit_names_the_field() -> None:
    done = governor("run", "--cpu", "-1", "--", "true")
    assert done.returncode == 125
    assert "cpu_rate" in done.stderr and "-1" in done.stderr


def test_sigterm_to_the_governor_cancels_the_command(tmp_path: os.PathLike[str]) -> None:
    ready = os.path.join(tmp_path, "ready")
    process = subprocess.Popen(
        [
            *GOVERNOR,
            "run",
            "--json",
            "--kill-grace",
            "0.2",
            "--",
            "sh",
            "-c",
            f"touch {ready}; exec sleep 30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    from conftest import wait_until

    wait_until(lambda: os.path.exists(ready), timeout=guard(30))
    process.terminate()
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 143
    assert json.loads(stdout.splitlines()[-1])["outcome"] == "cancelled"
