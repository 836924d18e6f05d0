"""The public API is exactly what the packages export; guard it against accidental change."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["governor", "runner", "policies"])
def test_all_names_exist_and_are_documented(package: str) -> None:
    module = importlib.import_module(package)

    def isort_style(name: str) -> tuple[int, str]:  # constants, classes, the rest (as ruff sorts)
        return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)

    assert module.__all__ == sorted(module.__all__, key=isort_style)
    for name in module.__all__:
        value = getattr(module, name)
        assert getattr(value, "__doc__", None), f"{package}.{name} has no docstring"


def test_governor_surface() -> None:
    import governor

    assert set(governor.__all__) >= {"run", "Limits", "Outcome", "Execution", "Usage", "Enforcement"}
    assert governor.Limits is importlib.import_module("policies").Limits


def test_outcomes_are_the_documented_set() -> None:
    from governor import Outcome

    assert [o.value for o in Outcome] == [
        "succeeded",
        "failed",
        "memory_exceeded",
        "cpu_time_exceeded",
        "timed_out",
        "crashed",
        "cancelled",
        "lost",
        "evicted",
    ]


def test_errors_survive_pickling() -> None:
    import pickle

    from runner import EnforcementUnavailable, RemoteError

    for error in (EnforcementUnavailable("cgroup2", "no controllers"), RemoteError("x.Y", "boom")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
