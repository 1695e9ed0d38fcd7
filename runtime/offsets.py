"""Keep the wake stream's resume offset: where a restarted runner picks up reading.

Theory of operation
-------------------
The runner reads its wake stream from an offset and hands each wake to the claim pipeline.
Two positions matter:

- the **read** position: the ``streamNextOffset`` of the last control event seen. A reconnect
  inside the same run resumes here, because every wake before it is already in the pipeline's
  memory;
- the **committed** position: the offset before which *every* wake has been accepted by the
  claim pipeline (its claim attempt ended: claimed, skipped because another claim has the work
  or nothing is pending, or given up as permanently refused). This is what a store keeps and
  what a restarted process resumes from. It never runs ahead of a wake still waiting in a
  queue, so a crash or a stop replays exactly the wakes that were not yet accepted (and no
  handled one), even in the middle of a batch.

:class:`WakeCursor` turns the second from the first: each batch of wakes read before a control
event becomes a checkpoint with one :class:`Ticket` per wake; a checkpoint is committed when
its tickets and those of every earlier checkpoint are settled.

Stores (:class:`OffsetStore`) only ``load`` and ``save`` the committed offset:
:class:`RegistryOffsetStore` (the server's runner registry: seeded from the register answer,
saved by the heartbeats that carry the offset), :class:`FileOffsetStore` (atomic write and
rename, for servers without a registry) and :class:`MemoryOffsetStore` (tests). Between two
saves a crash may replay a few wakes that were already accepted; replays are harmless (the
claim answers NO_PENDING_WORK or ALREADY_CLAIMED, both skips).
"""

from __future__ import annotations

import os
import re
from collections import deque
from pathlib import Path
from typing import Protocol

import anyio
import attrs

__all__ = [
    "START_OFFSET",
    "FileOffsetStore",
    "MemoryOffsetStore",
    "OffsetStore",
    "RegistryOffsetStore",
    "Ticket",
    "WakeCursor",
    "default_offset_path",
    "offset_after",
]


#: The offset that means "from the start of the stream".
START_OFFSET = "-1"


def offset_after(a: str, b: str) -> bool:
    """Return True when offset ``a`` is strictly after offset ``b``.

    Offsets are opaque but lexicographically sortable; ``-1`` (the start) is before every
    offset the server mints.
    """
    if a == b:
        return False
    if b == START_OFFSET:
        return True
    if a == START_OFFSET:
        return False
    return a > b


class OffsetStore(Protocol):
    """Where the committed wake-stream offset survives a restart."""

    async def load(self) -> str | None:
        """Return the saved offset, or ``None`` when nothing was saved yet."""
        ...

    async def save(self, offset: str) -> None:
        """Remember ``offset`` durably (as durably as the store can)."""
        ...


class MemoryOffsetStore:
    """An offset store in memory: survives a stop/start of a runner, not the process."""

    def __init__(self, offset: str | None = None) -> None:
        # Invariant: the last offset saved (or given), None if none.
        self.offset = offset
        self.saves = 0

    async def load(self) -> str | None:
        return self.offset

    async def save(self, offset: str) -> None:
        self.offset = offset
        self.saves += 1

    def __repr__(self) -> str:
        return f"MemoryOffsetStore({self.offset!r})"


class FileOffsetStore:
    """An offset store in a small text file, replaced atomically on each save.

    A save writes a sibling temporary file, fsyncs it and renames it over the target, so a
    crash leaves either the old or the new offset, never a torn one. File I/O runs in a worker
    thread. Saving the same offset twice writes once.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # Invariant: the offset known to be on disk (None until loaded or saved).
        self._on_disk: str | None = None

    async def load(self) -> str | None:
        text = await anyio.to_thread.run_sync(self._read)
        self._on_disk = text
        return text

    async def save(self, offset: str) -> None:
        if offset == self._on_disk:
            return
        await anyio.to_thread.run_sync(self._write, offset)
        self._on_disk = offset

    def _read(self) -> str | None:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def _write(self, offset: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(offset + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def __repr__(self) -> str:
        return f"FileOffsetStore({str(self.path)!r})"


class RegistryOffsetStore:
    """The server's runner registry as the offset store.

    The register answer seeds it (``wake_stream_offset``); saving only records the offset,
    because every heartbeat carries the committed offset to the server (the final heartbeat of
    a clean stop included).
    """

    def __init__(self) -> None:
        # Invariant: the offset the registry last gave or was last told.
        self.offset: str | None = None

    def seed(self, offset: str | None) -> None:
        """Take the offset from the server's register answer."""
        self.offset = offset

    async def load(self) -> str | None:
        return self.offset

    async def save(self, offset: str) -> None:
        self.offset = offset

    def __repr__(self) -> str:
        return f"RegistryOffsetStore({self.offset!r})"


def default_offset_path(runner_id: str) -> Path:
    """Return where a runner keeps its offset when the server has no registry.

    ``$XDG_STATE_HOME/pullwake/<runner id>.offset``, ``~/.local/state`` when unset.
    """
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", runner_id) or "runner"
    return Path(base) / "pullwake" / f"{safe}.offset"


# -- the cursor -----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Checkpoint:
    offset: str
    # Invariant: the number of this checkpoint's tickets not yet settled.
    open: int


@attrs.define(eq=False)
class Ticket:
    """One wake's place in the cursor; settle it once the claim pipeline accepted the wake."""

    _cursor: WakeCursor | None = None
    _checkpoint: _Checkpoint | None = None
    # Invariant: True after the first settle(); later calls change nothing.
    settled: bool = False

    def settle(self) -> None:
        """Mark the wake accepted (idempotent); may advance the cursor's committed offset."""
        if self.settled:
            return
        self.settled = True
        if self._cursor is not None and self._checkpoint is not None:
            self._checkpoint.open -= 1
            self._cursor._advance()


class WakeCursor:
    """Track the read and committed positions of one run's wake stream; see the module."""

    def __init__(self, offset: str = START_OFFSET) -> None:
        # Invariant: every wake before ``committed`` has a settled ticket.
        self.committed = offset
        # Invariant: the offset of the last control event seen; never before ``committed``.
        self.read = offset
        # Invariant: checkpoints after ``committed``, in stream order; the first has open > 0.
        self._pending: deque[_Checkpoint] = deque()
        # Tickets handed out since the last control event (their checkpoint is not known yet).
        self._unplaced: list[Ticket] = []

    def ticket(self) -> Ticket:
        """Return a ticket for a wake just read; it belongs to the next checkpoint."""
        ticket = Ticket()
        self._unplaced.append(ticket)
        return ticket

    def checkpoint(self, offset: str) -> None:
        """Record a control event: every ticket handed out since the last one precedes it."""
        tickets, self._unplaced = self._unplaced, []
        point = _Checkpoint(offset, 0)
        for ticket in tickets:
            if not ticket.settled:
                point.open += 1
                ticket._cursor = self
                ticket._checkpoint = point
        self.read = offset
        self._pending.append(point)
        self._advance()

    def _advance(self) -> None:
        while self._pending and self._pending[0].open == 0:
            self.committed = self._pending.popleft().offset

    @property
    def outstanding(self) -> int:
        """Return how many wakes read before the last checkpoint are not accepted yet."""
        return sum(p.open for p in self._pending)

    def __repr__(self) -> str:
        return (
            f"WakeCursor(committed={self.committed!r}, read={self.read!r}, "
            f"outstanding={self.outstanding})"
        )
