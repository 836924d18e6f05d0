"""``@governed``: a function that runs governed whenever it is called.

    @governor.governed(limits=Limits(memory="512MiB", wall_time="1m"), sandbox=True)
    def render(page: int) -> bytes: ...

    render(3)              # runs in a fresh child under the limits; its value, or its exception
    render.submit(3)       # a GovernedFuture, from a shared pool (cancel() kills the call)
    await render.arun(3)   # in asyncio; cancelling the await kills the call
    render.run(3)          # the whole record (outcome, usage, enforcement), not just the value

The child calls the undecorated function (``__wrapped__``), so calling it there does not
start another governed run. A call that ends otherwise than with a value or the function's
own exception (a limit, a crash) raises ``ExecutionFailed`` carrying the record.
"""

from __future__ import annotations

import atexit
import functools
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from policies import Limits, RetryPolicy, Sandbox
from runner import Enforcement, Execution

if TYPE_CHECKING:
    from governor._executor import GovernedExecutor
    from governor._future import GovernedFuture

P = ParamSpec("P")
T = TypeVar("T")

_pool: GovernedExecutor | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> GovernedExecutor:
    """The pool every decorated function's ``submit`` uses, made on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            from governor._executor import GovernedExecutor

            _pool = GovernedExecutor()
        return _pool


def close_shared_pool() -> None:
    """Wait for the shared pool's calls, then stop it (at exit; a later ``submit`` makes a
    new one)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown()


atexit.register(close_shared_pool)


class Governed(Generic[P, T]):
    """A function that runs governed when called (see the module docstring)."""

    def __init__(
        self,
        function: Callable[P, T],
        *,
        limits: Limits | None,
        sandbox: Sandbox | bool | None,
        enforcement: Enforcement | str,
        retry_policy: RetryPolicy | None,
        env: Mapping[str, str] | None,
        cwd: str | None,
    ) -> None:
        if not callable(function):
            raise TypeError(f"governed: expected a function, got {function!r}")
        if limits is not None and not isinstance(limits, Limits):
            raise ValueError(f"limits: expected a Limits, got {limits!r}")
        functools.update_wrapper(self, function)
        self.__wrapped__ = function  # update_wrapper sets it too; said here for type checkers
        self.limits = limits or Limits()
        self.sandbox = Sandbox.coerce(sandbox)
        self.enforcement = Enforcement(enforcement)
        self.retry_policy = retry_policy
        self.env = env
        self.cwd = cwd

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        result: T = self.run(*args, **kwargs).unwrap()
        return result

    def run(self, *args: P.args, **kwargs: P.kwargs) -> Execution:
        """One governed call; its whole record."""
        from governor._run import run

        return run(self.__wrapped__, *args, kwargs=kwargs, **self._options())

    async def arun(self, *args: P.args, **kwargs: P.kwargs) -> T:
        """One governed call, awaited; its value or its exception."""
        from governor._run import arun

        record = await arun(self.__wrapped__, *args, kwargs=kwargs, **self._options())
        result: T = record.unwrap()
        return result

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> GovernedFuture[T]:
        """One governed call on a shared pool (as many at once as CPUs); its future."""
        options = _shared_pool().options(retry_policy=self.retry_policy, **self._options())
        return options.submit(self.__wrapped__, *args, **kwargs)

    def _options(self) -> dict[str, Any]:
        return {
            "limits": self.limits,
            "sandbox": self.sandbox,
            "enforcement": self.enforcement,
            "env": self.env,
            "cwd": self.cwd,
        }

    def __repr__(self) -> str:
        return f"<governed {getattr(self.__wrapped__, '__qualname__', self.__wrapped__)!r} {self.limits!r}>"


@overload
def governed(function: Callable[P, T], /) -> Governed[P, T]: ...


@overload
def governed(
    function: None = None,
    /,
    *,
    limits: Limits | None = None,
    sandbox: Sandbox | bool | None = None,
    enforcement: Enforcement | str = Enforcement.AUTO,
    retry_policy: RetryPolicy | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Callable[[Callable[P, T]], Governed[P, T]]: ...


def governed(
    function: Callable[P, T] | None = None,
    /,
    *,
    limits: Limits | None = None,
    sandbox: Sandbox | bool | None = None,
    enforcement: Enforcement | str = Enforcement.AUTO,
    retry_policy: RetryPolicy | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Any:
    """Make ``function`` run governed when called: ``@governed`` or ``@governed(limits=...)``."""
    options: dict[str, Any] = {
        "limits": limits,
        "sandbox": sandbox,
        "enforcement": enforcement,
        "retry_policy": retry_policy,
        "env": env,
        "cwd": cwd,
    }
    if function is not None:
        return Governed(function, **options)
    return lambda decorated: Governed(decorated, **options)
