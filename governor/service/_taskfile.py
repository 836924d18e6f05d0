"""Task files: the schedule of ``governor serve``, in TOML (read with ``tomllib``).

    [[task]]
    name = "thumbnails"
    command = ["python3", "make_thumbs.py", "--all"]   # or function = "module:callable", args, kwargs
    cron = "*/10 * * * *"                              # or interval = "15m" | delay = "10s" | event = "x"
    priority = 5
    [task.limits]                                      # Limits.from_mapping
    memory = "512MiB"
    [task.retry]                                       # RetryPolicy.from_mapping
    max_retries = 2

Everything is checked when the file is read, every task built once, so an invalid file fails
fast and starts nothing; the error lists every problem of the file at once, each naming the
file, the task and the key as written there (``limits.timeout``, not an internal field). The
file's directory is put on ``sys.path`` so that ``function = "jobs:nightly"`` finds a
``jobs.py`` beside it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from governor.scheduling._task import Task
from governor.scheduling._triggers import EventTrigger, OneTimeTrigger, PeriodicTrigger
from policies import Limits, RetryPolicy, Sandbox

_KNOWN = {
    "name", "description", "command", "function", "args", "kwargs", "cron", "interval", "delay", "event",
    "timezone", "jitter", "priority", "max_instances", "cwd", "env", "limits", "retry", "enforcement",
    "sandbox",
}  # fmt: skip
_TRIGGER_KEYS = ("cron", "interval", "delay", "event")


class TaskFileError(ValueError):
    """A task file that cannot be served; the message names the file, the task and the field.

    One error may hold several problems (``problems``, each a ``TaskFileError`` of its own):
    its message then lists them all, one per line."""

    def __init__(
        self,
        path: str,
        message: str,
        task: str | None = None,
        field: str | None = None,
        problems: tuple[TaskFileError, ...] = (),
    ) -> None:
        where = f"{path}: " + (f"task {task}: " if task is not None else "") + (f"{field}: " if field else "")
        super().__init__(where + message)
        self.path = path
        self.task = task
        self.field = field
        self.message = message
        self.problems = problems or (self,)

    @classmethod
    def of(cls, path: str, problems: list[TaskFileError]) -> TaskFileError:
        """One error for every problem found (itself, if there is one)."""
        flat = tuple(problem for error in problems for problem in error.problems)
        if len(flat) == 1:
            return flat[0]
        listed = "".join(f"\n  {problem}" for problem in flat)
        return cls(path, f"{len(flat)} problems:{listed}", problems=flat)

    def __reduce__(self) -> tuple[object, ...]:
        problems = () if self.problems == (self,) else self.problems
        return (type(self), (self.path, self.message, self.task, self.field, problems))


@dataclass(frozen=True)
class TaskDefinition:
    """One ``[[task]]`` table, checked. ``build()`` makes a fresh ``Task`` (fresh triggers)
    each time; ``fingerprint`` tells a reload whether the definition changed."""

    name: str
    source: dict[str, Any]
    events: tuple[str, ...]
    path: str

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(self.source, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def build(self, **settings: Any) -> Task:
        """A new ``Task`` for this definition; ``settings`` are ``Task`` options the file does
        not set (``keep_output``, ``output_cap``, ``keep_executions``)."""
        return _build(self.path, self.name, self.source, settings)


def load_task_file(path: str | os.PathLike[str]) -> list[TaskDefinition]:
    """Read and check a task file; ``TaskFileError`` on the first problem."""
    file = Path(path)
    shown = str(path)
    try:
        with open(file, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise TaskFileError(shown, "no such file") from None
    except OSError as error:
        raise TaskFileError(shown, f"cannot read it: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise TaskFileError(shown, f"not valid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise TaskFileError(shown, f"not UTF-8 text (byte {error.start}): is it a TOML task file?") from None
    unknown = set(document) - {"task"}
    if unknown:
        raise TaskFileError(
            shown, f"unknown top-level key(s) {', '.join(sorted(unknown))} (expected [[task]] tables)"
        )
    tables = document.get("task")
    if not isinstance(tables, list) or not tables:
        raise TaskFileError(shown, "no [[task]] tables")
    directory = str(file.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # so that function = "jobs:nightly" finds jobs.py here
    definitions: list[TaskDefinition] = []
    problems: list[TaskFileError] = []
    seen: set[str] = set()
    for index, table in enumerate(tables, start=1):
        label = f"#{index}"
        if not isinstance(table, dict):
            problems.append(TaskFileError(shown, "expected a table", label))
            continue
        name = table.get("name")
        if not isinstance(name, str) or not name.strip() or "\0" in name:
            problems.append(TaskFileError(shown, f"must be a non-empty string, got {name!r}", label, "name"))
            continue
        if name in seen:
            problems.append(TaskFileError(shown, "a task of this name is defined twice", name, "name"))
            continue
        seen.add(name)
        try:
            _build(shown, name, table)  # checks everything, now
        except TaskFileError as error:
            problems.append(error)
            continue
        events = (table["event"],) if isinstance(table.get("event"), str) else ()
        definitions.append(TaskDefinition(name, dict(table), events, shown))
    if problems:
        raise TaskFileError.of(shown, problems)
    return definitions


def _build(path: str, name: str, table: dict[str, Any], settings: dict[str, Any] | None = None) -> Task:
    def fail(field: str, message: str) -> TaskFileError:
        return TaskFileError(path, message, name, field)

    problems: list[TaskFileError] = []

    def check(step: Callable[[], Any]) -> Any:
        """Run one independent check; keep its problem and go on to the next."""
        try:
            return step()
        except TaskFileError as problem:
            problems.append(problem)
            return None

    problems += [
        fail(key, f"unknown key (known: {', '.join(sorted(_KNOWN))})") for key in sorted(set(table) - _KNOWN)
    ]
    target = check(lambda: _target(table, fail))
    triggers = check(lambda: _triggers(table, fail))
    limits = check(lambda: _limits(table, fail, problems))
    retry = check(lambda: _section(table, "retry", RetryPolicy.from_mapping, fail))
    env = check(lambda: _env(table, fail))
    sandbox = check(lambda: _sandbox(table, fail))
    kwargs = table.get("kwargs", {})
    if not isinstance(kwargs, dict):
        problems.append(fail("kwargs", f"expected a table, got {kwargs!r}"))
    args = table.get("args", [])
    if not isinstance(args, list):
        problems.append(fail("args", f"expected a list, got {args!r}"))
    if problems:
        raise TaskFileError.of(path, problems)
    options = {
        key: table[key]
        for key in ("description", "priority", "max_instances", "cwd", "enforcement")
        if key in table
    }
    try:
        return Task(
            name, target, args=args, kwargs=kwargs, triggers=triggers, retry_policy=retry, limits=limits,
            env=env, payload_kwarg="payload" if "function" in table and "event" in table else None, **options,
            sandbox=sandbox,
            **(settings or {}),
        )  # fmt: skip
    except (ValueError, TypeError) as error:
        text = str(error)
        field, _, message = text.partition(": ")
        key = _KEY_OF.get(field, field)
        if key == "command" and "function" in table:
            key = "function"
        if key in _KNOWN:
            raise fail(key, message) from None
        raise fail("task", text) from None


# Internal field names in errors from Task and ExecutionSpec -> the task-file key they come from.
_KEY_OF = {"target": "command", "retry_policy": "retry", "args/kwargs": "args"}


def _sandbox(table: dict[str, Any], fail: Callable[[str, str], TaskFileError]) -> Sandbox | None:
    """``sandbox = true``, or a ``[task.sandbox]`` table of its settings."""
    try:
        return Sandbox.coerce(table.get("sandbox"))
    except ValueError as error:
        field, _, message = str(error).partition(": ")
        raise fail(field, message) from None


def _env(table: dict[str, Any], fail: Callable[[str, str], TaskFileError]) -> dict[str, str] | None:
    env = table.get("env")
    if env is None:
        return None
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise fail("env", f"expected a table of strings, got {env!r}")
    for key, value in env.items():
        if "\0" in key or "\0" in value or "=" in key or not key:
            raise fail(
                f"env.{key}", "a variable name must be non-empty without '=', and neither may hold a NUL byte"
            )
    return {**os.environ, **env}  # added to the server's environment, not replacing PATH & co


def _target(table: dict[str, Any], fail: Callable[[str, str], TaskFileError]) -> Any:
    command, function = table.get("command"), table.get("function")
    if (command is None) == (function is None):
        raise fail("command", "give exactly one of command (an argv list) or function ('module:callable')")
    if command is not None:
        if isinstance(command, str):
            raise fail("command", f"give a list, e.g. {command.split()!r}, not the string {command!r}")
        if not isinstance(command, list) or not command or not all(isinstance(part, str) for part in command):
            raise fail("command", f"expected a non-empty list of strings, got {command!r}")
        if "args" in table or "kwargs" in table:
            raise fail("args", "put arguments in command; args and kwargs go with function")
        return command
    if not isinstance(function, str) or ":" not in function:
        raise fail("function", f"expected 'module:callable', got {function!r}")
    module_name, _, attribute = function.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import failure of user code is a reason to refuse the file
        raise fail("function", f"cannot import {module_name!r}: {type(error).__name__}: {error}") from None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise fail("function", f"{module_name!r} has no {attribute!r}")
    if not callable(target):
        raise fail("function", f"{function!r} is not callable")
    return target


def _triggers(table: dict[str, Any], fail: Callable[[str, str], TaskFileError]) -> list[Any]:
    given = [key for key in _TRIGGER_KEYS if key in table]
    if len(given) > 1:
        raise fail(given[1], f"give one of {', '.join(_TRIGGER_KEYS)}, not {' and '.join(given)}")
    for option in ("timezone", "jitter"):
        if option in table and not (given and given[0] in ("cron", "interval")):
            raise fail(option, "goes with cron or interval")
    if not given:
        return []  # fired by hand only
    key = given[0]
    value = table[key]
    try:
        if key == "cron":
            return [
                PeriodicTrigger(cron=value, timezone=table.get("timezone"), jitter=table.get("jitter", 0))
            ]
        if key == "interval":
            return [PeriodicTrigger(interval=value, jitter=table.get("jitter", 0))]
        if key == "delay":
            return [OneTimeTrigger(delay=value)]
        if not isinstance(value, str) or not value:
            raise ValueError(f"event: expected an event name, got {value!r}")
        return [EventTrigger(name=value)]
    except (ValueError, TypeError) as error:
        field, _, message = str(error).partition(": ")
        raise fail(field if field in _KNOWN else key, message or str(error)) from None


def _limits(
    table: dict[str, Any], fail: Callable[[str, str], TaskFileError], problems: list[TaskFileError]
) -> Limits | None:
    """The ``[task.limits]`` table; each limit is checked on its own, so all their problems show."""
    section = table.get("limits")
    if isinstance(section, dict) and len(section) > 1:
        found = len(problems)
        for key, value in section.items():
            try:
                Limits.from_mapping({key: value}, where="limits")
            except ValueError as error:
                field, _, message = str(error).partition(": ")
                problems.append(fail(field, message))
        if len(problems) > found:
            return None
    return _section(table, "limits", Limits.from_mapping, fail)


def _section(
    table: dict[str, Any], key: str, parse: Callable[..., Any], fail: Callable[[str, str], TaskFileError]
) -> Any:
    if key not in table:
        return None
    section = table[key]
    if not isinstance(section, dict):
        raise fail(key, f"expected a table [task.{key}], got {section!r}")
    try:
        return parse(section, where=key)
    except ValueError as error:
        field, _, message = str(error).partition(": ")
        raise fail(field, message) from None
