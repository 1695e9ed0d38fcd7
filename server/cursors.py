"""Mint ``Stream-Cursor`` values for live reads (spec §8.1).

A cursor is the number of fixed intervals since an epoch, as a decimal string. It must never
go backwards for a client: when the client echoes a cursor that is not behind the current
interval, the answer jumps ahead of it by a random amount, so caches keyed by cursor expire.
"""

from __future__ import annotations

import random
import time

from pullwake.server.digits import is_ascii_digits

#: 2024-10-09T00:00:00Z, the epoch the spec suggests, in seconds.
CURSOR_EPOCH_S = 1_728_432_000
CURSOR_INTERVAL_S = 20
_MAX_JITTER_S = 3600


def current_interval(now_s: float | None = None) -> int:
    """Return the interval number for ``now_s`` (default: the wall clock)."""
    now = time.time() if now_s is None else now_s
    return int((now - CURSOR_EPOCH_S) // CURSOR_INTERVAL_S)


def next_cursor(client_cursor: str | None, now_s: float | None = None) -> str:
    """Return the cursor to send, strictly ahead of ``client_cursor`` when it is not stale."""
    current = current_interval(now_s)
    if client_cursor is None or not is_ascii_digits(client_cursor) or len(client_cursor) > 18:
        return str(current)
    echoed = int(client_cursor)
    if echoed < current:
        return str(current)
    jitter_s = random.randint(1, _MAX_JITTER_S)
    return str(echoed + max(1, -(-jitter_s // CURSOR_INTERVAL_S)))
