"""Wait for a condition the code under test does not signal: bounded in time and in count.

Where the code offers an event (``wait_state``, ``wait_idle``, ``ManualClock.wait_sleepers``)
the tests use it; this is for observing counters of fakes and diagnostics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

DEFAULT_TIMEOUT = 15.0


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.005
) -> None:
    """Poll ``predicate`` every ``interval`` seconds until it holds; ``TimeoutError`` if not."""
    with anyio.fail_after(timeout):
        for _ in range(int(timeout / interval) + 1):
            if predicate():
                return
            await anyio.sleep(interval)
    raise TimeoutError(f"condition still false after {timeout} s")


async def wait_until_async(
    predicate: Callable[[], Awaitable[bool]],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
) -> None:
    """Like :func:`wait_until` for a predicate that must await (an HTTP check)."""
    with anyio.fail_after(timeout):
        for _ in range(int(timeout / interval) + 1):
            if await predicate():
                return
            await anyio.sleep(interval)
    raise TimeoutError(f"condition still false after {timeout} s")
