"""Bounded retries, one way for every caller: a connection, a piece of a table, a
unit of a restore, a pg_dump section, a whole run. Only the failures that can
heal are tried again, a warning says each new attempt (which, of how many, and
why), and the last failure is raised as it was (tenacity does the counting).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import tenacity

from .errors import DumperError
from .logs import log

T = TypeVar("T")


def _said(exc: BaseException | None) -> str:
    """Our errors say what happened; a library's are named by their type too."""
    if exc is None or isinstance(exc, DumperError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


async def retrying(
    action: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    heals: Callable[[BaseException], bool],
    say: str,
    fields: Mapping[str, Any] | None = None,
    wait: tenacity.wait.wait_base | None = None,
) -> T:
    """`action()`, again while it fails with an error that `heals`, `attempts` times in all;
    before each new attempt the warning `say`, with `fields`, the attempt about to start, and
    the error. `wait`: the pause before it (none by default)."""

    def log_attempt(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        pause = {"retry_in_s": round(state.upcoming_sleep, 2)} if wait is not None else {}
        log.warning(
            say,
            extra={**(fields or {}), "attempt": state.attempt_number + 1, "of": attempts, "error": _said(exc), **pause},
        )

    retry = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=wait or tenacity.wait_none(),
        retry=tenacity.retry_if_exception(heals),
        before_sleep=log_attempt,
        reraise=True,
    )

    async def attempt() -> T:  # tenacity awaits only coroutine functions, not lambdas
        return await action()

    return await retry(attempt)


def failing_with(*kinds: type[BaseException]) -> Callable[[BaseException], bool]:
    """A `heals` predicate: the error is one of `kinds`."""
    return lambda exc: isinstance(exc, kinds)
