"""Validate the names a request carries: stream paths, ids and offsets.

Everything that reaches the store has passed through here, so the store never sees a path
with ``..``, an empty segment, a control character (PostgreSQL cannot store NUL), or the
reserved ``__ds`` prefix.
"""

from __future__ import annotations

import re

from pullwake.server.errors import BadRequest

#: The first path segment the protocol keeps for its own control routes.
RESERVED_SEGMENT = "__ds"
MAX_PATH_LENGTH = 1024
MAX_ID_LENGTH = 200
MAX_OFFSET_LENGTH = 256
#: Offsets we mint are URL-safe; sentinels ``-1`` and ``now`` are accepted as input.
_OFFSET_RE = re.compile(r"[A-Za-z0-9_.~-]+")


def _bad_characters(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def stream_path(path: str, *, what: str = "stream path") -> str:
    """Return ``path`` if it names an ordinary stream, else raise ``BadRequest``.

    A path is relative to the stream root (``events/a``): no leading or trailing slash, no
    empty, ``.`` or ``..`` segment, no control characters, and not under ``__ds``.
    """
    if not path:
        raise BadRequest(f"The {what} is empty; name a stream such as 'events/a'.")
    if len(path) > MAX_PATH_LENGTH:
        raise BadRequest(f"The {what} is longer than {MAX_PATH_LENGTH} characters.")
    if _bad_characters(path) or "\\" in path:
        raise BadRequest(f"The {what} contains control characters or a backslash.")
    segments = path.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise BadRequest(
            f"The {what} {path!r} has an empty, '.' or '..' segment; use names such as "
            "'events/a' with no leading, trailing or doubled slash."
        )
    if segments[0] == RESERVED_SEGMENT:
        raise BadRequest(
            f"The {what} {path!r} is under '{RESERVED_SEGMENT}/', which the protocol reserves "
            "for control routes; pick another name."
        )
    return path


def glob_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid subscription glob (``*`` one segment, ``**`` any)."""
    stream_path(pattern, what="pattern")
    for segment in pattern.split("/"):
        if "**" in segment and segment != "**":
            raise BadRequest(
                f"The pattern segment {segment!r} mixes '**' with other characters; '**' "
                "must be a whole segment."
            )
    return pattern


def identifier(value: str, *, what: str) -> str:
    """Return ``value`` if it can name a subscription or runner (one URL segment)."""
    if not value:
        raise BadRequest(f"The {what} is empty.")
    if len(value) > MAX_ID_LENGTH:
        raise BadRequest(f"The {what} is longer than {MAX_ID_LENGTH} characters.")
    if "/" in value or _bad_characters(value) or value in (".", ".."):
        raise BadRequest(
            f"The {what} {value!r} contains '/', a control character, or is '.'/'..'; "
            "use letters, digits, '-', '_' or '.'."
        )
    return value


def offset(value: str) -> str:
    """Return ``value`` if it is well-formed as an offset (``-1``, ``now`` or a minted one)."""
    if not value:
        raise BadRequest("The offset is empty; pass -1 to read from the start or now.")
    if len(value) > MAX_OFFSET_LENGTH or not _OFFSET_RE.fullmatch(value):
        raise BadRequest(
            f"The offset {value[:80]!r} is malformed; pass -1, now, or an offset this server "
            "returned in Stream-Next-Offset."
        )
    return value
