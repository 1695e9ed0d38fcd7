"""Completion signals from a store's own threads back to the event loop, on asyncio and trio.

A job handed to a store thread carries a :class:`Completion` made in the event loop. The
thread fills in the result, then calls :func:`complete` for a whole group of jobs at once: one
wake-up of each loop concerned sets every event of the group.

Why not anyio's portal: ``anyio.from_thread.run_sync`` blocks the thread until the loop has
run the call, so a writer thread would stall once per job while the loop is busy; and
``anyio.to_thread.run_sync`` (the path this replaces) cost 94-132 µs per SQLite write
transaction on asyncio and 112-195 µs on trio, against 22-37 µs for a writer thread that
commits eight writers in one group and wakes the loop once (issue 12's wake-cycle profile). What
the thread needs is "run this callback in that loop soon, without waiting", which only the
backends offer (``loop.call_soon_threadsafe``, ``TrioToken.run_sync_soon``); so this module is
the one place in the store that names them, imported lazily.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import anyio
import sniffio

#: Schedules a callback to run in one event loop, from any thread, without waiting for it.
CallSoon = Callable[[Callable[[], None]], object]


def loop_call_soon() -> CallSoon:
    """The running event loop's thread-safe "call soon" (call from inside the loop)."""
    library = sniffio.current_async_library()
    if library == "asyncio":
        import asyncio  # only the backend in use is imported

        return asyncio.get_running_loop().call_soon_threadsafe
    if library == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    raise RuntimeError(f"the store cannot signal completions on the {library!r} event loop")


class Completion:
    """Set from a store thread through :func:`complete`; awaited in the event loop."""

    __slots__ = ("call_soon", "event")

    def __init__(self) -> None:
        # Both are made in the event loop: an anyio.Event binds to the running backend.
        self.event = anyio.Event()
        self.call_soon = loop_call_soon()

    async def wait(self) -> None:
        await self.event.wait()


def _set_all(events: list[anyio.Event]) -> None:
    for event in events:
        event.set()


def complete(completions: Iterable[Completion]) -> None:
    """Set every completion's event, waking each event loop once (call from a store thread).

    A loop that has already finished cannot be woken and has nobody left waiting: skipped.
    """
    by_loop: dict[CallSoon, list[anyio.Event]] = {}
    for completion in completions:
        by_loop.setdefault(completion.call_soon, []).append(completion.event)
    for call_soon, events in by_loop.items():
        try:
            call_soon(functools.partial(_set_all, events))
        except RuntimeError:  # asyncio: loop closed; trio: RunFinishedError (a RuntimeError)
            pass
