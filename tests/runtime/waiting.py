"""Wait for a condition the code under test does not signal: bounded in time and in count.

Where the code offers an event (``wait_state``, ``wait_idle``, ``ManualClock.wait_sleepers``)
the tests use it; this is for observing counters of fakes and diagnostics. Both are
:func:`pullwake.testing.wait_until` with the polling pace these tests want.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

from pullwake.testing import wait_until as _wait_until
from pullwake.testing.waiting import DEFAULT_TIMEOUT

__all__ = ["DEFAULT_TIMEOUT", "reach", "wait_until", "wait_until_async"]


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.005
) -> None:
    """Poll ``predicate`` every ``interval`` seconds until it holds; ``TimeoutError`` if not."""
    await _wait_until(predicate, timeout=timeout, interval=interval)


async def wait_until_async(
    predicate: Callable[[], Awaitable[bool]],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
) -> None:
    """Like :func:`wait_until` for a predicate that must await (an HTTP check)."""
    await _wait_until(predicate, timeout=timeout, interval=interval)


class _HasStates(Protocol):
    @property
    def state(self) -> str: ...

    async def wait_state(self, state: str) -> None: ...


async def reach(runner: _HasStates, state: str, *, timeout: float = 20.0) -> None:
    """Wait until ``runner`` is in ``state``: bounded, so a regression fails with a message."""
    try:
        with anyio.fail_after(timeout):
            await runner.wait_state(state)
    except TimeoutError:
        raise AssertionError(
            f"the runner never reached {state!r} within {timeout} s (it is in {runner.state!r})"
        ) from None
