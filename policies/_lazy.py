"""Public names of a package, each imported from its home module on first use (PEP 562).

A package's ``__init__`` that imports every module it re-exports makes ``import package``
pay for all of them: ``governor run -- true`` would load the scheduler, the service,
OpenTelemetry and croniter to run one command. With these, ``from runner import Execution``
loads what ``Execution`` needs and nothing else; a type checker reads the package's
``if TYPE_CHECKING:`` imports instead.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def homes(table: Mapping[str, str]) -> dict[str, str]:
    """``{"module": "Name Other ...", ...}`` -> ``{"Name": "module", ...}``."""
    return {name: module for module, names in table.items() for name in names.split()}


def exports(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, serving the names in ``where``
    (name -> the module that defines it)."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        home = where.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value  # from now on a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return __getattr__, __dir__
