"""What ``governor run`` costs to start and end a trivial command, beside the tools it stands
in for, each timed as a fresh process from this script, the rows in turn (median and p90
of ``--runs``).

    python bench/cli_startup_bench.py [--runs 30] [--busy]

``governor`` is the console script beside the interpreter running this benchmark: run it
with a venv's python to time that venv's install (``pip install .`` for a wheel; the
checkout's ``.venv`` is an editable one). Python's byte-code cache matters here: with
``PYTHONDONTWRITEBYTECODE`` set and no ``__pycache__`` yet, every start compiles the sources
again, so this script unsets it, compiles the checkout, and says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from host_load import bench_arguments, busy_loops


def timed(contenders: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """Each contender ``runs`` times, in turn (one of each, then again), so that a burst of
    load on a shared host slows every row alike rather than one row's whole series."""
    for argv in contenders.values():  # warm: the page cache, the byte-code cache
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, argv in contenders.items():
            start = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def loaded_by_a_run() -> list[str]:
    """The modules, not ours, that ``governor run -q -- true`` loads (standard library and
    cgroup-utils): imported alone, they are the floor of any run that uses them."""
    code = (
        "import sys; from governor.cli import main; sys.argv[1:] = ['run', '-q', '--', 'true']; main(); "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} - {'governor', 'runner', 'policies', "
        "'__main__'} - set(sys.builtin_module_names))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [name for name in done.stdout.split() if not name.startswith("_")]


# The least any Python command line that wraps a command costs: parse its options, then fork,
# exec and wait. No limit, no measurement, no record.
BARE_WRAPPER = (
    "import argparse, os, sys; parser = argparse.ArgumentParser(); parser.add_argument('argv', nargs='+'); "
    "argv = parser.parse_args().argv; pid = os.fork(); pid or os.execvp(argv[0], argv); "
    "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))"
)


def main() -> None:
    arguments = bench_arguments(__doc__ or "", 30)
    governor = str(Path(sys.executable).with_name("governor"))
    floor = loaded_by_a_run()
    contenders = {
        "timeout 10 true": ["timeout", "10", "true"],
        "prlimit --as=1G true": ["prlimit", "--as=1073741824", "true"],
        "python3 -c pass": [sys.executable, "-c", "pass"],
        "python3 -S -c pass": [sys.executable, "-S", "-c", "pass"],
        "python3 argparse + fork, exec, wait true": [sys.executable, "-c", BARE_WRAPPER, "true"],
        "python3 importing what a run loads, but ours": [sys.executable, "-c", "import " + ", ".join(floor)],
        "governor --version": [governor, "--version"],
        "governor run -q -- true": [governor, "run", "-q", "--", "true"],
        "governor run -q --enforce rlimit -- true": [
            governor,
            "run",
            "-q",
            "--enforce",
            "rlimit",
            "--",
            "true",
        ],
        "governor run -q --memory 100M -- true": [governor, "run", "-q", "--memory", "100M", "--", "true"],
    }
    if shutil.which("systemd-run") and Path("/run/systemd/system").exists():
        contenders["systemd-run --scope -q true"] = ["systemd-run", "--scope", "-q", "true"]
    environment = os.environ.copy()
    if environment.pop("PYTHONDONTWRITEBYTECODE", None):
        print("(PYTHONDONTWRITEBYTECODE was set: unset for these runs, so the cache is written and used)")
        os.environ.pop("PYTHONDONTWRITEBYTECODE")
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(__file__).resolve().parents[1])],
                       stdout=subprocess.DEVNULL, check=False)  # fmt: skip
    with busy_loops(2) if arguments.busy else contextlib.nullcontext():
        results = timed(contenders, arguments.runs)
    base = statistics.median(results["python3 -c pass"])
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, {arguments.runs} runs each, "
          f"busy host: {arguments.busy}")  # fmt: skip
    print(f"| {'command':<44} | {'median ms':>9} | {'p90 ms':>7} | {'x python3 -c pass':>17} |")
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 9}|{'-' * 19}|")
    for name, times in results.items():
        median = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        print(f"| {name:<44} | {median:>9.1f} | {p90:>7.1f} | {median / base:>17.1f} |")
    print(f"\n(what a run loads, but ours: {', '.join(floor)})")


if __name__ == "__main__":
    main()
