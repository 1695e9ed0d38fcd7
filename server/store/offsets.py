"""Offsets: how a stream position is written on the wire.

A position is a non-negative integer drawn from one counter shared by every stream of a store,
so offsets only ever grow, even across a stream deleted and created again at the same path (a
reader holding an offset from the old stream reads the new one from its start instead of
skipping it). On the wire a position is exactly :data:`OFFSET_WIDTH` decimal digits, zero
padded: URL-safe, fixed width, and so lexicographically sortable. ``-1`` and ``now`` are
sentinels readers may send; they are never minted.
"""

from __future__ import annotations

from pullwake.server.errors import BadRequest

#: Digits in every offset the store mints (a signed 64-bit position fits in 19).
OFFSET_WIDTH = 20
#: The offset before anything was ever written: the tail of a store with no messages.
ZERO_OFFSET = "0" * OFFSET_WIDTH


def format_offset(position: int) -> str:
    """Write ``position`` as an offset string."""
    if position < 0:
        raise ValueError(f"a stream position is never negative, got {position}")
    return f"{position:0{OFFSET_WIDTH}d}"


def parse_offset(offset: str) -> int:
    """Read an offset minted by :func:`format_offset`; raise ``BadRequest(INVALID_OFFSET)``."""
    if not is_offset(offset):
        raise BadRequest(
            f"offset {str(offset)[:64]!r} is malformed: pass '-1' (start), 'now' (tail) or an "
            f"offset this server returned ({OFFSET_WIDTH} digits)",
            code="INVALID_OFFSET",
        )
    return int(offset)


def is_offset(offset: str) -> bool:
    """Tell whether ``offset`` has the shape of an offset this store mints."""
    return (
        isinstance(offset, str)
        and len(offset) == OFFSET_WIDTH
        and offset.isascii()
        and offset.isdigit()
    )
