"""Stream paths, identifiers and glob patterns: what the store accepts and how globs match.

A stream path is relative (no leading slash) and made of non-empty segments separated by ``/``;
``.`` and ``..`` segments, control characters and the reserved first segment ``__ds`` are
refused. A glob pattern uses the same segments, where a segment ``**`` matches zero or more
whole segments and ``*`` inside any other segment matches any run of characters within that
one segment (so a segment ``*`` matches exactly one segment).
"""

from __future__ import annotations

import functools
import re

from pullwake.server.errors import BadRequest

MAX_PATH_CHARS = 1024
MAX_ID_CHARS = 256
RESERVED_SEGMENT = "__ds"


def _has_control(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def _check_segments(text: str, what: str) -> list[str]:
    if not isinstance(text, str) or not text:
        raise BadRequest(f"{what} is empty: give a path such as 'events/a'", code="INVALID_PATH")
    if len(text) > MAX_PATH_CHARS:
        raise BadRequest(
            f"{what} is longer than {MAX_PATH_CHARS} characters: shorten it", code="INVALID_PATH"
        )
    if text.startswith("/"):
        raise BadRequest(
            f"{what} {text!r} starts with '/': paths are relative to the stream root, drop "
            "the leading slash",
            code="INVALID_PATH",
        )
    if _has_control(text):
        raise BadRequest(f"{what} {text!r} contains control characters", code="INVALID_PATH")
    segments = text.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise BadRequest(
                f"{what} {text!r} has an empty, '.' or '..' segment: write it as segments "
                "separated by single slashes",
                code="INVALID_PATH",
            )
    if segments[0] == RESERVED_SEGMENT:
        raise BadRequest(
            f"{what} {text!r} starts with the reserved segment {RESERVED_SEGMENT!r}: choose "
            "another name",
            code="INVALID_PATH",
        )
    return segments


def check_path(path: str, what: str = "stream path") -> str:
    """Return ``path`` if it is a valid stream path; raise ``BadRequest(INVALID_PATH)``."""
    segments = _check_segments(path, what)
    if any("*" in segment for segment in segments):
        raise BadRequest(
            f"{what} {path!r} contains '*': only subscription patterns may", code="INVALID_PATH"
        )
    return path


def check_identifier(value: str, what: str) -> str:
    """Return ``value`` if it is a usable id (subscription, runner, worker name)."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise BadRequest(
            f"{what} must be 1 to {MAX_ID_CHARS} characters, got {str(value)[:40]!r}",
            code="INVALID_ID",
        )
    if _has_control(value) or "/" in value:
        raise BadRequest(
            f"{what} {value!r} contains '/' or control characters: use letters, digits and "
            "punctuation such as '-', '_', '.', ':'",
            code="INVALID_ID",
        )
    return value


def normalise_content_type(content_type: str) -> str:
    """Lower-case the media type and parameter names and drop spaces around ``;`` and ``=``."""
    if not isinstance(content_type, str) or not content_type.strip():
        raise BadRequest("content type is empty: give one such as 'application/json'")
    if len(content_type) > 256 or _has_control(content_type):
        raise BadRequest(f"content type {content_type[:64]!r} is too long or has control chars")
    parts = [part.strip() for part in content_type.split(";")]
    media = parts[0].lower()
    if media.count("/") != 1 or media.startswith("/") or media.endswith("/"):
        raise BadRequest(f"content type {content_type!r} is not 'type/subtype'")
    params = []
    for part in parts[1:]:
        if not part:
            continue
        name, sep, value = part.partition("=")
        params.append(f"{name.strip().lower()}{sep}{value.strip()}")
    return ";".join([media, *params])


def is_json_content_type(content_type: str) -> bool:
    """Tell whether a (normalised) content type is JSON (message-per-value mode)."""
    return content_type.split(";", 1)[0] == "application/json"


class Glob:
    """A compiled subscription pattern; ``matches(path)`` answers for one stream path."""

    def __init__(self, pattern: str) -> None:
        segments = _check_segments(pattern, "pattern")
        compiled: list[re.Pattern[str] | None] = []
        for segment in segments:
            if segment == "**":
                compiled.append(None)
            elif "**" in segment:
                raise BadRequest(
                    f"pattern {pattern!r}: '**' must be a whole segment (as in 'a/**/b')",
                    code="INVALID_PATTERN",
                )
            else:
                parts = (re.escape(piece) for piece in segment.split("*"))
                compiled.append(re.compile("[^/]*".join(parts)))
        self.pattern = pattern
        # Invariant: one entry per pattern segment; None stands for '**'.
        self._segments = tuple(compiled)

    def matches(self, path: str) -> bool:
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
