"""Protocol numbers are ASCII decimal digits: ``str.isdigit`` is not the test for them.

``"²".isdigit()`` and ``"٣".isdigit()`` are true, and ``int()`` accepts some such digits
(Arabic-Indic) and refuses others (superscripts), so a check with ``isdigit`` then ``int``
either lets a non-protocol number through or raises where the caller expected a number.
Offsets, cursors, ``Content-Length`` and the like are checked here instead.
"""

from __future__ import annotations

from pullwake.server.errors import BadRequest


def is_ascii_digits(text: str) -> bool:
    """Tell whether ``text`` is one or more of the digits ``0``-``9`` and nothing else."""
    return bool(text) and text.isascii() and text.isdigit()


def parse_decimal(text: str, *, what: str, max_digits: int = 18) -> int:
    """Return ``text`` as a non-negative integer of at most ``max_digits`` ASCII digits."""
    if not is_ascii_digits(text) or len(text) > max_digits:
        raise BadRequest(
            f"The {what} {text[:40]!r} is not a number of 1 to {max_digits} ASCII digits "
            "(0-9); send the value this server gave you.",
        )
    return int(text)
