"""Wait for a condition nothing signals: bounded in time and in count, with a message.

Where the code under test offers an event (``Runner.wait_state``, ``anyio.Event``), wait on
that instead; this is for conditions seen from outside (a counter, an HTTP answer, a file).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["DEFAULT_TIMEOUT", "wait_until"]

#: Seconds :func:`wait_until` waits unless told otherwise.
DEFAULT_TIMEOUT = 15.0


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
    message: str = "",
) -> None:
    """Poll ``predicate`` every ``interval`` seconds until it returns true.

    ``predicate`` may be a plain function or an async one (an HTTP check). Raises
    ``TimeoutError`` after ``timeout`` seconds (or ``timeout / interval`` polls, whichever
    comes first), saying ``message`` (what was awaited) when given.
    """
    what = message or "condition"
    with anyio.move_on_after(timeout):
        for _ in range(int(timeout / interval) + 1):
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await anyio.sleep(interval)
    raise TimeoutError(f"{what} still false after {timeout} s")
