"""``governor top``: the live view of what runs and what waits (drawn by ``governor.views``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_command(commands: Any) -> None:
    """Register ``top`` on the ``governor`` parser."""
    top = commands.add_parser(
        "top",
        help="running and queued executions, live",
        description="Running and queued executions, live. On a terminal: q quits, m/c/a sort by "
        "memory/CPU/age, / filters by task; piped, plain text.",
    )
    top.add_argument(
        "--db",
        type=Path,
        help="the database (default: $GOVERNOR_DB, else $XDG_STATE_HOME/governor/governor.db)",
    )
    top.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes")
    top.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="refreshes before exiting (default: for ever on a terminal, else 1)",
    )
    top.add_argument("--json", action="store_true", help="one JSON object per refresh")
    top.set_defaults(handler=_top)


def _top(arguments: argparse.Namespace) -> int:
    if not arguments.interval > 0:
        print(
            f"governor: --interval: must be a positive number of seconds, got {arguments.interval}",
            file=sys.stderr,
        )
        return 2
    from governor.service._store import default_db_path
    from governor.views._top import snapshot, watch

    db = Path(arguments.db) if arguments.db else default_db_path()
    live = sys.stdout.isatty() and not arguments.json
    count = arguments.count if arguments.count is not None else (None if live else 1)
    return watch(lambda: snapshot(db), sys.stdout, interval=arguments.interval, count=count,
                 live=live, as_json=arguments.json)  # fmt: skip
