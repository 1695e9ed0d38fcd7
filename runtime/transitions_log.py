"""Write a runner's lifecycle records as JSON lines, and read them back.

``pullwake run --transitions-log FILE`` (or ``PULLWAKE_TRANSITIONS_LOG``) hands a
:class:`TransitionsLog` to the runner's ``inspect`` hook: each :class:`TransitionRecord`
becomes one JSON object on its own line, appended and flushed at once, so a process killed
with SIGKILL leaves every line it recorded (at worst the last one torn, which
:func:`read_transitions` skips). Tools that watch a runner from outside (the e2e harness) read
these lines instead of parsing log messages.

One line::

    {"time": 1767312000.123, "at": 5321.07, "kind": "transition", "event": "connected",
     "source": ["connecting"], "target": ["streaming"], "started": [...], "cancelled": [...],
     "reason": "", "origin": "_connect", "error": null, "leaked": []}

``time`` is the wall clock (seconds since the epoch), ``at`` the runner's own clock; ``error``
is the ``repr`` of the error, or null. Caveat: the write happens in the event loop; it is one
short buffered write plus a flush to a local file per transition, as a log handler does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import attrs

from .actor import TransitionRecord

__all__ = ["LoggedTransition", "TransitionsLog", "read_transitions"]


def record_json(record: TransitionRecord, *, wall_time: float) -> dict[str, Any]:
    """Return the JSON object of one record (see the module docstring)."""
    return {
        "time": wall_time,
        "at": record.at,
        "kind": record.kind,
        "event": record.event,
        "source": list(record.source),
        "target": list(record.target),
        "started": list(record.started),
        "cancelled": list(record.cancelled),
        "reason": record.reason,
        "origin": record.origin,
        "error": None if record.error is None else repr(record.error),
        "leaked": list(record.leaked),
    }


class TransitionsLog:
    """An ``inspect`` hook that appends each record to ``path`` as a JSON line.

    Use it as a context manager (the file is opened on entry, closed on exit), or call
    :meth:`open` and :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # Invariant: open between open() and close(); records outside that are not written.
        self._file: IO[str] | None = None

    def open(self) -> TransitionsLog:
        """Open ``path`` for appending (creating its folder)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        return self

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> TransitionsLog:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __call__(self, record: TransitionRecord) -> None:
        """Append ``record`` as one line and flush it."""
        if self._file is None:
            return
        line = json.dumps(record_json(record, wall_time=time.time()), separators=(",", ":"))
        self._file.write(line + "\n")
        self._file.flush()


@attrs.frozen
class LoggedTransition:
    """One line of a transitions log, as read back (the fields that tools use)."""

    time: float
    kind: str
    event: str | None
    source: tuple[str, ...]
    target: tuple[str, ...]
    reason: str = ""
    error: str | None = None


def read_transitions(path: str | Path) -> Iterator[LoggedTransition]:
    """Yield every record in the log at ``path``, oldest first (none if it does not exist).

    A line that is not complete JSON (the last one of a killed process) is skipped.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        yield LoggedTransition(
            time=float(data["time"]),
            kind=str(data["kind"]),
            event=data.get("event"),
            source=tuple(data.get("source", ())),
            target=tuple(data.get("target", ())),
            reason=str(data.get("reason", "")),
            error=data.get("error"),
        )
