"""``python -m governor`` is the ``governor`` command."""

from governor._cli import main

raise SystemExit(main())
