"""``python -m governor`` is the ``governor`` command."""

from governor.cli import console

console()
