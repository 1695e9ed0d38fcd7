"""Content types, classified once: what a stream stores, and how its messages travel.

A stream's content type is stored as its lower-cased media type without parameters, and
compared that way (``text/plain; charset=utf-8`` and ``text/plain`` are the same stream type).
Three kinds follow from it: ``application/json`` streams keep message boundaries (a POSTed
array is flattened one level, reads answer an array, SSE sends JSON), ``text/*`` streams travel
as text over SSE, and everything else as base64 (spec §5.7/§7).
"""

from __future__ import annotations

import re
from typing import Literal

from pullwake.server.errors import BadRequest

JSON_TYPE = "application/json"
#: What a stream created without a usable Content-Type holds.
DEFAULT_TYPE = "application/octet-stream"
#: How a stream's messages travel over SSE.
Encoding = Literal["json", "text", "base64"]

_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*", re.ASCII)


def media_type(header: str | None) -> str | None:
    """Return the lower-cased media type of a Content-Type value, or None if unusable."""
    if not isinstance(header, str):
        return None
    media = header.split(";", 1)[0].strip()
    return media.lower() if _MEDIA_TYPE.fullmatch(media) else None


def normalise_content_type(content_type: str) -> str:
    """Return the stored form of ``content_type``; raise ``BadRequest(INVALID_CONTENT_TYPE)``."""
    media = media_type(content_type)
    if media is None:
        raise BadRequest(
            f"content type {str(content_type)[:64]!r} is not 'type/subtype': give one such as "
            "'application/json'",
            code="INVALID_CONTENT_TYPE",
        )
    return media


def _media(content_type: str) -> str:
    # Stored types are normalised already; this also reads one stored with parameters by an
    # older version.
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    """Tell whether a stored content type is JSON (one message per JSON value)."""
    return _media(content_type) == JSON_TYPE


def encoding_for(content_type: str) -> Encoding:
    """Return how a stream of (stored) ``content_type`` travels over SSE."""
    media = _media(content_type)
    if media == JSON_TYPE:
        return "json"
    if media.startswith("text/"):
        return "text"
    return "base64"
