"""Protocol headers: the writer headers a request may carry, and those every answer carries.

Request side: ``Stream-Seq`` (writer sequencing) and the idempotent producer's
``Producer-Id``/``Producer-Epoch``/``Producer-Seq``, parsed into values the store judges (see
``store/rules/producers.py``). Header names are case-insensitive (Starlette lower-cases them).

Answer side: browser security headers on every answer, errors included
(``X-Content-Type-Options: nosniff``, so a browser never sniffs stream bytes into HTML, and
``Cross-Origin-Resource-Policy: cross-origin``, since streams are meant to be read from other
origins), and CORS: any origin may read, with the protocol's headers allowed and exposed. A
CORS preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered 204 for any
path, before routing. No cookies are involved (tokens travel as ``Authorization``), so the
wildcard origin is safe and credentials are never allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pullwake.server.errors import BadRequest
from pullwake.server.store.base import Producer

STREAM_SEQ = "stream-seq"
PRODUCER_ID = "producer-id"
PRODUCER_EPOCH = "producer-epoch"
PRODUCER_SEQ = "producer-seq"
PRODUCER_HEADERS = (PRODUCER_ID, PRODUCER_EPOCH, PRODUCER_SEQ)
#: A producer's epoch or sequence number: decimal digits only (no sign, exponent or spaces).
_COUNTER = re.compile(r"[0-9]{1,18}", re.ASCII)

#: Added to every answer (as raw ASGI header pairs).
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-resource-policy", b"cross-origin"),
    (b"access-control-allow-origin", b"*"),
    (
        b"access-control-expose-headers",
        b"stream-next-offset, stream-cursor, stream-up-to-date, stream-sse-data-encoding, "
        b"producer-epoch, producer-seq, producer-expected-seq, producer-received-seq, "
        b"etag, location, content-type",
    ),
)
#: What a preflight allows.
PREFLIGHT_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"access-control-allow-methods", b"GET, HEAD, PUT, POST, DELETE, OPTIONS"),
    (
        b"access-control-allow-headers",
        b"authorization, content-type, if-none-match, stream-seq, producer-id, "
        b"producer-epoch, producer-seq, stream-ttl, stream-expires-at, stream-closed, "
        b"stream-forked-from, stream-fork-offset, stream-fork-sub-offset",
    ),
    (b"access-control-max-age", b"86400"),
)


def writer_seq(headers: Mapping[str, str]) -> str | None:
    """Return the request's ``Stream-Seq``, or None (400 when present but empty)."""
    value = headers.get(STREAM_SEQ)
    if value is None:
        return None
    if not value:
        raise BadRequest("Stream-Seq is empty; omit it or send a value.", code="INVALID_STREAM_SEQ")
    return value


def _counter(headers: Mapping[str, str], name: str) -> int:
    value = headers[name].strip()
    if not _COUNTER.fullmatch(value):
        raise BadRequest(
            f"{name} must be a non-negative decimal integer, got {value[:40]!r}.",
            code="INVALID_PRODUCER",
        )
    return int(value)


def producer(headers: Mapping[str, str]) -> Producer | None:
    """Return the idempotent producer the request names, or None; 400 on a partial or bad set."""
    present = [name for name in PRODUCER_HEADERS if name in headers]
    if not present:
        return None
    if len(present) != len(PRODUCER_HEADERS):
        missing = ", ".join(name for name in PRODUCER_HEADERS if name not in headers)
        raise BadRequest(
            f"Producer-Id, Producer-Epoch and Producer-Seq go together; missing: {missing}.",
            code="INVALID_PRODUCER",
        )
    producer_id = headers[PRODUCER_ID].strip()
    if not producer_id:
        raise BadRequest("Producer-Id must not be empty.", code="INVALID_PRODUCER")
    return Producer(producer_id, _counter(headers, PRODUCER_EPOCH), _counter(headers, PRODUCER_SEQ))


def producer_headers(state: Producer) -> dict[str, str]:
    """The headers an accepted or duplicate producer append answers with."""
    return {PRODUCER_EPOCH: str(state.epoch), PRODUCER_SEQ: str(state.seq)}
