"""The ``governor`` command line: one parser, a module per group of subcommands.

run                                     cli/_run.py      one command, governed (exit statuses there)
serve, status, fire, history, report    cli/_service.py  the service and its database
top                                     cli/_top.py      the live view
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from governor.cli import _run, _service, _top
from runner import RunnerError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="governor",
        description="Run tasks in isolated child processes under CPU and memory limits.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run.add_command(commands)
    _service.add_commands(commands)
    _top.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``governor`` console script."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    try:
        return int(arguments.handler(arguments))
    except _run.UsageError as error:
        parser.exit(_run.EXIT_GOVERNOR_FAILED, f"governor: {error}\n")
    except RunnerError as error:  # EnforcementUnavailable, ForkServerError
        print(f"governor: {error}", file=sys.stderr)
        return _run.EXIT_GOVERNOR_FAILED


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
