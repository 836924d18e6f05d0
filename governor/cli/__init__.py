"""The ``governor`` command line: one parser, a module per group of subcommands.

run                                     cli/_run.py      one command, governed (exit statuses there)
serve, status, fire, history, report    cli/_service.py  the service and its database
top                                     cli/_top.py      the live view
completion                              cli/__init__.py  the shell completion script (argcomplete)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from governor import __version__

__all__ = ["console", "main"]

SHELLS = ("bash", "zsh", "fish")  # those argcomplete writes a completion script for


def _unmeasured_formatter(prog: str) -> argparse.HelpFormatter:  # a formatter_class, to argparse
    return argparse.HelpFormatter(prog, width=80)


class _Parser(argparse.ArgumentParser):
    """argparse, exiting 125 (the governor's own failure, as the README's exit table says)
    rather than 2, which a governed command may well exit with itself.

    While the parsers are built, their formatter has a fixed width: argparse formats every
    argument as it is added, to check it, and measuring the terminal imports ``shutil`` (and
    with it bz2 and lzma), a few milliseconds of every ``governor run``. ``_parser`` gives each
    the measuring formatter back, for the usage and help that people read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _unmeasured_formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        from governor.cli._run import EXIT_GOVERNOR_FAILED

        self.print_usage(sys.stderr)
        self.exit(EXIT_GOVERNOR_FAILED, f"{self.prog}: error: {message}\n")


def _parser(only_run: bool = False) -> argparse.ArgumentParser:
    """The whole parser; with ``only_run``, one that knows only ``run``: what ``governor run``
    needs (its own usage and errors are the same), without loading and building the rest."""
    from governor.cli import _run

    parser = _Parser(
        prog="governor",
        description="Run tasks in isolated child processes under CPU and memory limits.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run.add_command(commands)
    if not only_run:
        _add_other_commands(commands)
    for command in commands.choices.values():
        command.set_defaults(command_parser=command)  # its own usage for its own mistakes
        command.formatter_class = argparse.HelpFormatter
    parser.formatter_class = argparse.HelpFormatter
    return parser


def _add_other_commands(commands: Any) -> None:
    from governor.cli import _service, _top

    _service.add_commands(commands)
    _top.add_command(commands)
    completion = commands.add_parser(
        "completion",
        help="print the shell completion script",
        description='Print the completion script for SHELL: e.g. eval "$(governor completion bash)" in '
        "~/.bashrc, governor completion fish > ~/.config/fish/completions/governor.fish.",
    )
    completion.add_argument("shell", choices=SHELLS, metavar="SHELL", help=", ".join(SHELLS))
    completion.set_defaults(handler=_completion)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``governor`` console script."""
    words = sys.argv[1:] if argv is None else list(argv)
    if words == ["--version"]:  # asked by scripts that probe the tool: answered without loading it
        print(f"governor {__version__}")
        return 0
    options = words[: words.index("--")] if "--" in words else words  # not the command's own
    if words[:1] == ["run"] and "--dask" not in options:
        # A local run needs the fork server: it boots while the rest of the CLI loads. The
        # console script, small and with no other thread yet, forks it from itself; a caller
        # of main() (an application, a test) may be neither, and gets a fresh interpreter.
        import threading

        from runner._forkserver import default_fork_server

        default_fork_server().start(fork_here=argv is None and threading.active_count() == 1)
    from governor.cli import _run
    from runner import RunnerError

    completing = "_ARGCOMPLETE" in os.environ
    parser = _parser(only_run=words[:1] == ["run"] and not completing)
    if completing:  # the shell asks for completions: answer, then exit
        import argcomplete

        argcomplete.autocomplete(parser)
    arguments, unknown = parser.parse_known_args(argv)
    if unknown:
        arguments.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(arguments.handler(arguments))
    except _run.UsageError as error:
        arguments.command_parser.print_usage(sys.stderr)
        parser.exit(_run.EXIT_GOVERNOR_FAILED, f"governor: {error}\n")
    except RunnerError as error:  # EnforcementUnavailable, ForkServerError
        print(f"governor: {error}", file=sys.stderr)
        return _run.EXIT_GOVERNOR_FAILED


def _completion(arguments: argparse.Namespace) -> int:
    import argcomplete

    print(argcomplete.shellcode(["governor"], shell=arguments.shell))
    return 0


def console() -> NoReturn:
    """The console script: ``main``, then an exit that skips the interpreter's teardown.

    Python's own exit frees every loaded module one by one, about 20 ms of a 150 ms
    ``governor run -- true`` spent on nothing. Once ``main`` has returned and no other thread
    is left to join, flushing the streams and running the exit handlers (the fork server's
    stop among them) is all an exit has to do."""
    import atexit
    import threading

    _open_standard_descriptors()
    try:
        code = main()
    except KeyboardInterrupt:
        # ^C before a run set its own handler (while the command line loads) or in a
        # subcommand that does not catch it: no traceback, the status a cancelled run has.
        import signal

        code = 128 + signal.SIGINT
    if threading.active_count() > 1:
        sys.exit(code)  # threads to join first: Python's own exit does that
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        sys.exit(code)  # a closed pipe: reported by Python's own exit, as always
    os._exit(code)


def _open_standard_descriptors() -> None:
    """Descriptors 0, 1 and 2 on /dev/null where this process was started without them
    (``runner``'s ``reserve_standard_descriptors`` says why), and streams on them: Python
    made ``None`` of each such stream, and ``print(file=None)`` writes to stdout."""
    from runner._forkserver import reserve_standard_descriptors

    reserve_standard_descriptors()
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is None:
            stream = open(fd, "r" if fd == 0 else "w", closefd=False)  # noqa: SIM115  # for the process's life
            setattr(sys, name, stream)


if __name__ == "__main__":  # pragma: no cover
    console()
