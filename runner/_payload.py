"""The call a child runs, pickled: ``(function, args, kwargs)`` through cloudpickle.

An importable function travels by reference (the child imports its module); a lambda, a
closure or a function defined in ``__main__`` (a script, a notebook) travels by value. Two
things make by-value calls as cheap and as legible as imported ones:

- Unpickling a by-value function needs ``cloudpickle`` in the child (25-40 ms to import).
  The payload names the modules its loading needs (``imports``); the zygote imports them once
  before it forks, so every child inherits them already loaded.
- cloudpickle renames every code object's file to ``<dynamic-code>`` (to make its payloads
  deterministic). Here code objects travel through ``marshal``, which keeps their real file
  and line numbers, so the child's traceback names the script and shows its lines. The child
  is the same interpreter as the supervisor (the zygote is ``sys.executable``), which is what
  ``marshal`` needs.
"""

from __future__ import annotations

import io
import marshal
import pickle
import types
from collections import ChainMap
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import cloudpickle

# By-value reductions name cloudpickle's own module for the functions that rebuild them.
_BY_VALUE = b"cloudpickle"


def _reduce_code(code: types.CodeType) -> tuple[Callable[[bytes], Any], tuple[bytes]]:
    return marshal.loads, (marshal.dumps(code),)


class _Pickler(cloudpickle.Pickler):
    dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(
        {types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table
    )


def pickle_call(
    target: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[bytes, tuple[str, ...]]:
    """The pickled call, and the modules the zygote should have loaded to unpickle it fast."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump((target, tuple(args), dict(kwargs)))
    payload = buffer.getvalue()
    return payload, (("cloudpickle",) if _BY_VALUE in payload else ())
