"""Names and limits, checked once for HTTP and store alike: paths, patterns, ids, offsets.

Every name a request carries passes through here, in the HTTP handlers and again in the store
(which direct callers reach without HTTP), with the same rules and the same error codes:

* a *stream path* is relative to the stream root (``events/a``): 1 to :data:`MAX_PATH_CHARS`
  characters in non-empty segments separated by single ``/``; no ``.`` or ``..`` segment, no
  control character or lone surrogate (PostgreSQL cannot store NUL), no backslash, no ``*``,
  and not under the reserved first segment ``__ds`` (``INVALID_PATH``);
* a *pattern* is written like a path, where a segment ``**`` matches zero or more whole
  segments and ``*`` inside any other segment matches any run of characters within that one
  segment; ``**`` must be a whole segment (``INVALID_PATTERN``);
* an *id* (subscription, runner, worker) is one URL segment of 1 to :data:`MAX_ID_CHARS`
  characters: no ``/``, no control character, not ``.`` or ``..`` (``INVALID_ID``);
* an *offset* a client sends is ``-1``, ``now`` or URL-safe text of at most
  :data:`MAX_OFFSET_CHARS` characters (``INVALID_OFFSET``); only minted ones read anything.

The numeric limits of subscriptions and runners live here too, so the HTTP layer and the store
refuse the same values.
"""

from __future__ import annotations

import functools
import re

from pullwake.server.errors import BadRequest

#: The first path segment the protocol keeps for its own control routes.
RESERVED_SEGMENT = "__ds"
MAX_PATH_CHARS = 1024
MAX_ID_CHARS = 256
MAX_OFFSET_CHARS = 256
#: A subscription's lease: bounds and default of ``lease_ttl_ms``.
MIN_LEASE_TTL_MS = 1_000
MAX_LEASE_TTL_MS = 600_000
DEFAULT_LEASE_TTL_MS = 30_000
#: A runner's registry lease (``lease_ms`` of a heartbeat).
MIN_RUNNER_LEASE_MS = 1_000
MAX_RUNNER_LEASE_MS = 86_400_000
#: A subscription's description and a runner's label.
MAX_DESCRIPTION_CHARS = 2_000
#: A heartbeat's diagnostics, as JSON.
MAX_DIAGNOSTICS_CHARS = 65_536

#: Offsets we mint are URL-safe; sentinels ``-1`` and ``now`` are accepted as input.
_OFFSET_RE = re.compile(r"[A-Za-z0-9_.~-]+")


def _bad_characters(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def _segments(text: object, what: str, code: str) -> list[str]:
    if not isinstance(text, str) or not text:
        raise BadRequest(f"The {what} is empty; name a stream such as 'events/a'.", code=code)
    if len(text) > MAX_PATH_CHARS:
        raise BadRequest(
            f"The {what} is longer than {MAX_PATH_CHARS} characters; shorten it.", code=code
        )
    if _bad_characters(text) or "\\" in text:
        raise BadRequest(f"The {what} contains control characters or a backslash.", code=code)
    segments = text.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise BadRequest(
            f"The {what} {text!r} has an empty, '.' or '..' segment; use names such as "
            "'events/a' with no leading, trailing or doubled slash.",
            code=code,
        )
    if segments[0] == RESERVED_SEGMENT:
        raise BadRequest(
            f"The {what} {text!r} is under '{RESERVED_SEGMENT}/', which the protocol reserves "
            "for control routes; pick another name.",
            code=code,
        )
    return segments


def check_path(path: str, what: str = "stream path") -> str:
    """Return ``path`` if it names an ordinary stream; raise ``BadRequest(INVALID_PATH)``."""
    _segments(path, what, "INVALID_PATH")
    if "*" in path:
        raise BadRequest(
            f"The {what} {path!r} contains '*'; only subscription patterns may.",
            code="INVALID_PATH",
        )
    return path


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid subscription glob; raise ``BadRequest``.

    ``INVALID_PATH`` for what a path may not hold either, ``INVALID_PATTERN`` for a ``**``
    that is not a whole segment.
    """
    for segment in _segments(pattern, "pattern", "INVALID_PATH"):
        if "**" in segment and segment != "**":
            raise BadRequest(
                f"The pattern segment {segment!r} mixes '**' with other characters; '**' "
                "must be a whole segment (as in 'a/**/b').",
                code="INVALID_PATTERN",
            )
    return pattern


def check_identifier(value: str, what: str) -> str:
    """Return ``value`` if it can name a subscription, runner or worker; raise ``INVALID_ID``."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"The {what} is empty.", code="INVALID_ID")
    if len(value) > MAX_ID_CHARS:
        raise BadRequest(f"The {what} is longer than {MAX_ID_CHARS} characters.", code="INVALID_ID")
    if "/" in value or _bad_characters(value) or value in (".", ".."):
        raise BadRequest(
            f"The {what} {value!r} contains '/', a control character, or is '.'/'..'; "
            "use letters, digits, '-', '_' or '.'.",
            code="INVALID_ID",
        )
    return value


def check_offset(value: str, what: str = "offset") -> str:
    """Return ``value`` if it is well-formed as an offset (``-1``, ``now`` or a minted one)."""
    if not isinstance(value, str) or not value:
        raise BadRequest(
            f"The {what} is empty; pass -1 to read from the start or now.", code="INVALID_OFFSET"
        )
    if len(value) > MAX_OFFSET_CHARS or not _OFFSET_RE.fullmatch(value):
        raise BadRequest(
            f"The {what} {value[:80]!r} is malformed; pass -1, now, or an offset this server "
            "returned in Stream-Next-Offset.",
            code="INVALID_OFFSET",
        )
    return value


class Glob:
    """A compiled subscription pattern; ``matches(path)`` answers for one stream path."""

    def __init__(self, pattern: str) -> None:
        check_pattern(pattern)
        compiled: list[re.Pattern[str] | None] = []
        for segment in pattern.split("/"):
            if segment == "**":
                compiled.append(None)
            else:
                parts = (re.escape(piece) for piece in segment.split("*"))
                compiled.append(re.compile("[^/]*".join(parts)))
        self.pattern = pattern
        # Invariant: one entry per pattern segment; None stands for '**'.
        self._segments = tuple(compiled)

    def matches(self, path: str) -> bool:
        """Tell whether ``path`` matches this pattern."""
        parts = path.split("/")
        pattern = self._segments

        @functools.cache
        def match(i: int, j: int) -> bool:
            if i == len(pattern):
                return j == len(parts)
            segment = pattern[i]
            if segment is None:
                return any(match(i + 1, k) for k in range(j, len(parts) + 1))
            return (
                j < len(parts) and segment.fullmatch(parts[j]) is not None and match(i + 1, j + 1)
            )

        return match(0, 0)


@functools.lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> Glob:
    """Compile (and cache) a subscription pattern; raise ``BadRequest`` when it is invalid."""
    return Glob(pattern)
