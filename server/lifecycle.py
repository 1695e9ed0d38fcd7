"""The stream lifecycle headers: parsing what a request asks for, writing what a stream is.

Request headers (spec §4.1, §4.2, §5.1, §5.2), read on ``PUT`` (create) and ``POST`` (append):

* ``Stream-TTL: <seconds>`` -- a sliding TTL: a decimal integer with no sign, leading zero,
  point or exponent (``0`` is allowed), else 400.
* ``Stream-Expires-At: <RFC 3339>`` -- an absolute expiry, with a time zone (``Z`` or
  ``+hh:mm``), else 400. Both headers at once are 400 (the spec's SHOULD; no precedence rule).
* ``Stream-Closed: true`` -- create closed, or close after this append. Only the value
  ``true`` (any case) counts: any other value is as if the header were absent.
* ``Stream-Forked-From: <path>`` (the source's URL path, ``/v1/stream/...``, or a path
  relative to the stream root), ``Stream-Fork-Offset: <offset>`` (default: the source's tail;
  ``-1``, or the reference server's all-zero ``0000000000000000_0000000000000000``, is the
  start) and ``Stream-Fork-Sub-Offset: <integer>`` (default 0; only with
  ``Stream-Forked-From``).

Response headers: ``Stream-Closed: true`` on a closed stream, ``Stream-TTL`` and
``Stream-Expires-At`` on ``HEAD`` when configured. Fork headers are never echoed (forks are
transparent to readers).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import unquote

from starlette.datastructures import Headers

from pullwake.server import names
from pullwake.server.errors import BadRequest
from pullwake.server.store.base import START_OFFSET, Fork, StreamMeta, StreamOptions

#: The stream root every stream URL path starts with.
STREAM_ROOT = "/v1/stream/"
#: The longest TTL accepted (a century), so an expiry always fits the store's integers.
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,17}", re.ASCII)
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
#: How the reference server writes the start of a stream; accepted as a fork offset.
_ZERO_OFFSET = re.compile(r"0+(_0+)*", re.ASCII)


def closed_requested(headers: Headers) -> bool:
    """Tell whether ``Stream-Closed: true`` was sent (any other value is ignored)."""
    return headers.get("stream-closed", "").strip().lower() == "true"


def _decimal(value: str, header: str) -> int:
    text = value.strip()
    if not _DECIMAL.fullmatch(text):
        raise BadRequest(
            f"{header} {value[:40]!r} is not a non-negative decimal integer without sign, "
            "leading zeros, point or exponent (e.g. 3600)",
            code="INVALID_HEADER",
        )
    return int(text)


def ttl_seconds(headers: Headers) -> int | None:
    value = headers.get("stream-ttl")
    if value is None:
        return None
    ttl = _decimal(value, "Stream-TTL")
    if ttl > MAX_TTL_SECONDS:
        raise BadRequest(
            f"Stream-TTL {ttl} is more than {MAX_TTL_SECONDS} seconds (a century); use a "
            "shorter TTL or none",
            code="INVALID_HEADER",
        )
    return ttl


def expires_at_ms(headers: Headers) -> int | None:
    value = headers.get("stream-expires-at")
    if value is None:
        return None
    text = value.strip()
    moment = None
    if _RFC3339.fullmatch(text):
        fraction = re.search(r"\.(\d+)", text)
        if fraction is not None and len(fraction.group(1)) > 6:
            # datetime keeps microseconds: drop the digits below them before parsing.
            text = text[: fraction.start(1) + 6] + text[fraction.end(1) :]
        try:
            moment = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            moment = None
    if moment is None or moment.tzinfo is None:
        raise BadRequest(
            f"Stream-Expires-At {value[:60]!r} is not an RFC 3339 timestamp with a time zone "
            "(e.g. 2030-01-01T00:00:00Z)",
            code="INVALID_HEADER",
        )
    millis = int(moment.astimezone(UTC).timestamp() * 1000)
    if millis < 0:
        raise BadRequest(
            "Stream-Expires-At is before 1970; send a later time", code="INVALID_HEADER"
        )
    return millis


def source_path(value: str) -> str:
    """The stream path a ``Stream-Forked-From`` value names."""
    text = unquote(value.strip())
    if text.startswith(STREAM_ROOT):
        text = text[len(STREAM_ROOT) :]
    elif text.startswith("/"):
        raise BadRequest(
            f"Stream-Forked-From {value[:80]!r} is not a stream URL path: send "
            f"'{STREAM_ROOT}<path>' of a stream on this server",
            code="INVALID_HEADER",
        )
    return names.check_path(text, "Stream-Forked-From path")


def fork_offset(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if text == "now":
        return None
    if text == START_OFFSET or _ZERO_OFFSET.fullmatch(text):
        return START_OFFSET
    return names.check_offset(text)


def create_options(headers: Headers) -> StreamOptions:
    """Read the lifecycle headers of a ``PUT`` (400 for malformed or conflicting ones)."""
    ttl = ttl_seconds(headers)
    expires = expires_at_ms(headers)
    if ttl is not None and expires is not None:
        raise BadRequest(
            "Stream-TTL and Stream-Expires-At exclude each other: send one of them",
            code="INVALID_EXPIRY",
        )
    source = headers.get("stream-forked-from")
    sub_offset = headers.get("stream-fork-sub-offset")
    if source is None:
        for header in ("stream-fork-offset", "stream-fork-sub-offset"):
            if header in headers:
                raise BadRequest(
                    f"{header} is only meaningful with Stream-Forked-From: add the source or "
                    "drop the header",
                    code="INVALID_HEADER",
                )
        fork = None
    else:
        fork = Fork(
            source_path(source),
            fork_offset(headers.get("stream-fork-offset")),
            0 if sub_offset is None else _decimal(sub_offset, "Stream-Fork-Sub-Offset"),
        )
    return StreamOptions(
        ttl_seconds=ttl, expires_at_ms=expires, closed=closed_requested(headers), fork=fork
    )


def format_time(epoch_ms: int) -> str:
    """Write epoch ms as RFC 3339 in UTC with milliseconds (``...T12:00:00.000Z``)."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def meta_headers(meta: StreamMeta, *, expiry: bool = False) -> dict[str, str]:
    """``Stream-Closed`` for a closed stream, and with ``expiry`` its TTL or expiry."""
    headers = {"stream-closed": "true"} if meta.closed else {}
    if expiry:
        if meta.ttl_seconds is not None:
            headers["stream-ttl"] = str(meta.ttl_seconds)
        elif meta.expires_at_ms is not None:
            headers["stream-expires-at"] = format_time(meta.expires_at_ms)
    return headers
