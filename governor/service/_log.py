"""The service's log: one record per line that a machine can trust, as text or as JSON.

Every record of the ``governor`` loggers (the service, the store, the control socket, the
scheduler) goes to one stream, with a UTC timestamp and a level::

    text:  2026-12-02T01:23:45.678Z INFO ended task=backup attempt=1 outcome=succeeded wall=1.2s
    json:  {"time": "2026-12-02T01:23:45.678Z", "level": "info", "logger": "governor.serve",
            "message": "ended", "task": "backup", "attempt": 1, "outcome": "succeeded", ...}

Names and messages come from task files and tasks, so nothing is written raw: in text, control
characters in a message are escaped (``\\n`` stays two characters) and a field value that is
not a plain word is JSON-quoted; a task named ``"a\\nb task=evil"`` cannot forge a line or a
field. Structured fields travel as ``extra={"fields": {...}}``.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, TextIO

from governor.service import FORMATS, LEVELS

_PLAIN = re.compile(r"[A-Za-z0-9_.,:/@%+-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def configure(stream: TextIO, level: str = "info", form: str = "text") -> logging.Handler:
    """Send the ``governor`` loggers' records at ``level`` and above to ``stream``, one line
    each, as ``form`` (``text`` or ``json``); returns the handler (remove it to undo)."""
    if level not in LEVELS:
        raise ValueError(f"log_level: expected one of {', '.join(LEVELS)}, got {level!r}")
    if form not in FORMATS:
        raise ValueError(f"log_format: expected one of {', '.join(FORMATS)}, got {form!r}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if form == "json" else TextFormatter())
    root = logging.getLogger("governor")
    root.setLevel(level.upper())
    root.addHandler(handler)
    root.propagate = False  # one line per record, not a second copy through the root logger
    return handler


def unconfigure(handler: logging.Handler) -> None:
    root = logging.getLogger("governor")
    root.removeHandler(handler)
    root.propagate = True


def escape(text: str) -> str:
    """``text`` with every control character written as an escape: never a line break."""
    return _CONTROL.sub(lambda match: json.dumps(match.group())[1:-1], text)


def value(item: Any) -> str:
    """A field value as text: bare if a plain word, else JSON-quoted (escapes and all)."""
    text = item if isinstance(item, str) else json.dumps(item, default=str)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


def _time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        parts = [_time(record), record.levelname, escape(record.getMessage())]
        parts += [f"{key}={value(item)}" for key, item in fields.items() if item is not None]
        line = " ".join(parts)
        if record.exc_info:
            line += " exception=" + value(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, item in (getattr(record, "fields", None) or {}).items():
            entry.setdefault(key, item)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
