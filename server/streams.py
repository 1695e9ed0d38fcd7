"""HTTP handlers for Durable Streams under ``/v1/stream/{path}`` (spec §5, §6, §7).

``PUT`` creates (201 new, 200 same content type, 409 different), ``POST`` appends (204),
``GET`` reads (catch-up, ``live=long-poll``, ``live=sse``), ``HEAD`` gives the tail, ``DELETE``
removes. JSON streams keep message boundaries: a POSTed array is flattened one level, ``[]``
is refused, and reads answer a JSON array.

Deliberate choices where the spec leaves room (also in docs/server.md):

* Content types are stored as their lower-cased media type without parameters, and compared
  that way (``text/plain; charset=utf-8`` and ``text/plain`` are the same stream type).
* A POST whose content type differs from the stream's is 409, as the spec and the reference
  server say (not 415).
* Every read answers ``Cache-Control: no-store``: CDN collapsing is out of scope, and wake
  streams are private.
* ``Stream-Seq`` and idempotent producers (``headers.py``, ``store/rules/producers.py``) are
  served on appends; on a create (``PUT``) they are refused (400): send them on the appends.
* Lifecycle (TTL and expiry, closure, forks): headers in ``lifecycle.py``, rules in the store;
  a read (any mode) restarts a sliding TTL, a ``HEAD`` does not.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from pullwake.server import headers as protocol_headers
from pullwake.server import jsontext, lifecycle, names
from pullwake.server.auth import Principal
from pullwake.server.bodies import parse_json, read_body
from pullwake.server.content_types import DEFAULT_TYPE, encoding_for, is_json, media_type
from pullwake.server.context import AppContext, context_of
from pullwake.server.cursors import next_cursor
from pullwake.server.digits import parse_decimal
from pullwake.server.errors import (
    BadRequest,
    Conflict,
    Gone,
    content_type_mismatch,
)
from pullwake.server.shutdown import Wakeup
from pullwake.server.sse import EventStream, SSEResponse
from pullwake.server.store.base import (
    NOW_OFFSET,
    START_OFFSET,
    AppendResult,
    Message,
    ReadResult,
    StreamMeta,
)

#: Writer headers that belong on appends, not on a create.
_APPEND_ONLY_HEADERS = (protocol_headers.STREAM_SEQ, *protocol_headers.PRODUCER_HEADERS)


def json_messages(body: bytes, *, allow_empty: bool) -> list[bytes]:
    """Split a JSON body into messages: an array is flattened one level (spec §7.1)."""
    value = parse_json(body)
    values = value if isinstance(value, list) else [value]
    if not values and not allow_empty:
        raise BadRequest(
            "An empty JSON array appends nothing; send at least one value.", code="EMPTY_ARRAY"
        )
    return [jsontext.encode(v) for v in values]


def body_for(messages: tuple[Message, ...], content_type: str) -> bytes:
    """Return the body of a read: a JSON array for JSON streams, else the bytes as stored."""
    if is_json(content_type):
        return b"[" + b",".join(m.data for m in messages) + b"]"
    return b"".join(m.data for m in messages)


def _location(request: Request) -> str:
    """Return the stream's absolute URL as the client wrote it (percent-encoded, so the header
    stays ASCII even for non-Latin paths)."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(request.url.path, safe="/")
    return str(request.base_url).rstrip("/") + path


def _etag(path: str, start: str, end: str) -> str:
    encoded = base64.urlsafe_b64encode(path.encode("utf-8", "surrogatepass")).decode("ascii")
    return f'"{encoded}:{start}:{end}"'


def _single_query(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"The query parameter {name!r} appears more than once.")
    return values[0] if values else None


async def _path_and_principal(request: Request, ctx: AppContext) -> tuple[str, Principal]:
    principal = ctx.auth.authenticate(request.headers)
    path = names.check_path(request.path_params["path"])
    return path, principal


async def stream_endpoint(request: Request) -> Response | SSEResponse:
    """Dispatch one request on a stream URL by method."""
    method = request.method
    if method == "PUT":
        return await create(request)
    if method == "POST":
        return await append(request)
    if method == "GET":
        return await read(request)
    if method == "HEAD":
        return await head(request)
    return await delete(request)


async def create(request: Request) -> Response:
    """``PUT``: create a stream, or confirm one with the same content type."""
    ctx = context_of(request)
    path, principal = await _path_and_principal(request, ctx)
    ctx.policy.require_admin(principal, "create streams")
    for header in _APPEND_ONLY_HEADERS:
        if header in request.headers:
            raise BadRequest(
                f"pullwake does not take {header!r} on a create (PUT); send the first "
                "messages with POST to use it.",
                code="UNSUPPORTED_ON_CREATE",
            )
    options = lifecycle.create_options(request.headers)
    content_type = media_type(request.headers.get("content-type"))
    if content_type is None and options.fork is None:
        content_type = DEFAULT_TYPE
    body = await read_body(request, ctx.config.max_body_bytes)
    # A fork without Content-Type takes its source's: splitting its body needs that type.
    body_type = content_type
    if body_type is None and body.strip():
        assert options.fork is not None
        try:
            source = await ctx.store.stream(options.fork.source, now_ms=ctx.clock())
            body_type = source.content_type
        except Gone:
            pass  # the store refuses the fork (409 SOURCE_DELETED) before it reads the body
    if body_type is not None and is_json(body_type):
        items = json_messages(body, allow_empty=True) if body.strip() else []
    else:
        items = [body] if body else []
    created, meta = await ctx.store.create_stream(
        path, content_type, ctx.clock(), items=items, options=options
    )
    if created and items:
        ctx.metrics.messages_appended.inc(len(items))
    headers = {"content-type": meta.content_type, "stream-next-offset": meta.tail_offset}
    headers.update(lifecycle.meta_headers(meta))
    if created:
        headers["location"] = _location(request)
    return Response(status_code=201 if created else 200, headers=headers)


async def append(request: Request) -> Response:
    """``POST``: append one message (or, for JSON, each element of an array)."""
    ctx = context_of(request)
    path, principal = await _path_and_principal(request, ctx)
    ctx.policy.require_admin(principal, "append to streams")
    producer = protocol_headers.producer(request.headers)
    writer_seq = protocol_headers.writer_seq(request.headers)
    close = lifecycle.closed_requested(request.headers)
    body = await read_body(request, ctx.config.max_body_bytes)
    if not body:
        if not close:
            raise BadRequest(
                "An append needs a non-empty body (or Stream-Closed: true to close the stream).",
                code="EMPTY_BODY",
            )
        # Close-only: no content to type-check, whatever Content-Type says (spec §5.2).
        result = await ctx.store.append(
            path, [], ctx.clock(), writer_seq=writer_seq, producer=producer, close=True
        )
        return _append_answer(result, appended=False)
    header = request.headers.get("content-type")
    if header is None:
        raise BadRequest(
            "An append needs a Content-Type header matching the stream's.",
            code="MISSING_CONTENT_TYPE",
        )
    sent = media_type(header)
    if sent is None:
        # An unusable header matches no stream; a missing stream is still reported first.
        meta = await ctx.store.stream(path)
        raise content_type_mismatch(path, meta.content_type, header)
    try:
        # Split by the type the client sent: the append below refuses any other than the
        # stream's, in the same transaction (one store call per append, not two).
        items = json_messages(body, allow_empty=False) if is_json(sent) else [body]
    except BadRequest:
        # A missing stream or another type is the first thing to report, as for a good body.
        meta = await ctx.store.stream(path)
        if sent != meta.content_type:
            raise content_type_mismatch(path, meta.content_type, header) from None
        raise
    result = await ctx.store.append(
        path,
        items,
        ctx.clock(),
        content_type=sent,
        writer_seq=writer_seq,
        producer=producer,
        close=close,
    )
    if not result.duplicate:
        ctx.metrics.messages_appended.inc(len(items))
        ctx.metrics.wakes.inc(len(result.wakes))
    return _append_answer(result, appended=producer is not None)


def _append_answer(result: AppendResult, *, appended: bool) -> Response:
    """Answer an append: 204, or 200 when a producer's messages were appended (its retries,
    and a close-only request, are 204, as the spec distinguishes them), with the tail, the
    producer's state and any closure."""
    headers = {"stream-next-offset": result.next_offset}
    if result.producer is not None:
        headers.update(protocol_headers.producer_headers(result.producer))
    if result.closed:
        headers["stream-closed"] = "true"
    if result.duplicate:
        return Response(status_code=204, headers=headers)
    return Response(status_code=200 if appended else 204, headers=headers)


async def head(request: Request) -> Response:
    """``HEAD``: the stream's content type and tail offset."""
    ctx = context_of(request)
    path, principal = await _path_and_principal(request, ctx)
    await ctx.policy.require_stream_read(principal, path)
    meta = await ctx.store.stream(path, now_ms=ctx.clock())
    return Response(
        status_code=200,
        headers={
            "content-type": meta.content_type,
            "stream-next-offset": meta.tail_offset,
            "cache-control": "no-store",
            "etag": _etag(path, START_OFFSET, meta.tail_offset),
            **lifecycle.meta_headers(meta, expiry=True),
        },
    )


async def delete(request: Request) -> Response:
    """``DELETE``: remove the stream, its messages and its subscription links."""
    ctx = context_of(request)
    path, principal = await _path_and_principal(request, ctx)
    ctx.policy.require_admin(principal, "delete streams")
    await ctx.store.delete_stream(path, now_ms=ctx.clock())
    return Response(status_code=204)


async def read(request: Request) -> Response | SSEResponse:
    """``GET``: catch-up, long-poll or SSE, depending on ``live``."""
    ctx = context_of(request)
    path, principal = await _path_and_principal(request, ctx)
    offset = _single_query(request, "offset")
    live = _single_query(request, "live")
    cursor = _single_query(request, "cursor")
    if cursor:
        parse_decimal(cursor, what="cursor")
    if live not in (None, "long-poll", "sse"):
        raise BadRequest(f"live={live[:40]!r} is not a read mode; use long-poll or sse.")
    if offset is not None:
        names.check_offset(offset)
    elif live is not None:
        raise BadRequest(f"live={live} needs an offset; pass offset=-1, now, or a saved one.")
    await ctx.policy.require_stream_read(principal, path)
    meta = await ctx.store.stream(path, now_ms=ctx.clock())
    if meta.ttl_seconds is not None:
        # Every read restarts a sliding TTL, a live one when it begins (spec §5.1).
        await ctx.store.touch_stream(path, ctx.clock())
    still_allowed: Callable[[], Awaitable[bool]] | None = None
    if not principal.unrestricted:
        still_allowed = functools.partial(ctx.policy.may_still_read, principal, path)
    if live == "sse":
        return await _sse(ctx, meta, offset or START_OFFSET, cursor, still_allowed)
    if live == "long-poll":
        return await _long_poll(request, ctx, meta, offset or START_OFFSET, cursor, still_allowed)
    return await _catch_up(request, ctx, meta, offset or START_OFFSET)


def _read_headers(
    meta: StreamMeta, next_offset: str, up_to_date: bool, closed: bool = False
) -> dict[str, str]:
    headers = {
        "content-type": meta.content_type,
        "stream-next-offset": next_offset,
        "cache-control": "no-store",
    }
    if up_to_date:
        headers["stream-up-to-date"] = "true"
        if closed:
            # EOF: the reader is at the end of a closed stream (never on a partial read).
            headers["stream-closed"] = "true"
    return headers


async def _read_clamped(ctx: AppContext, path: str, offset: str, max_bytes: int) -> ReadResult:
    """Read from ``offset``; an offset past the tail reads from the tail (as the reference does).

    The spec does not say what a well-formed offset beyond the tail means. The reference
    server answers as if the reader were at the tail (200, no data, ``Stream-Next-Offset`` =
    tail), which also lets a reader whose saved offset outlived its database carry on; so do
    we. A malformed offset is still a 400.
    """
    try:
        return await ctx.store.read(path, offset, max_bytes)
    except Conflict as exc:
        if exc.code != "OFFSET_OUT_OF_RANGE":
            raise
    tail = (await ctx.store.stream(path)).tail_offset
    return await ctx.store.read(path, tail, max_bytes)


async def _start_offset(ctx: AppContext, meta: StreamMeta, offset: str) -> str:
    """Return where a live read starts: ``now`` and offsets past the tail mean the tail."""
    if offset == NOW_OFFSET:
        return meta.tail_offset
    # Probe before answering: a malformed offset must be a 4xx, which an SSE response can no
    # longer be once its event stream has started.
    probe = await _read_clamped(ctx, meta.path, offset, 1)
    if probe.messages:
        return offset
    return probe.next_offset


async def _catch_up(request: Request, ctx: AppContext, meta: StreamMeta, offset: str) -> Response:
    if offset == NOW_OFFSET:
        headers = _read_headers(meta, meta.tail_offset, up_to_date=True, closed=meta.closed)
        return Response(body_for((), meta.content_type), 200, headers=headers)
    result = await _read_clamped(ctx, meta.path, offset, ctx.config.max_read_bytes)
    next_offset = result.next_offset
    headers = _read_headers(meta, next_offset, result.up_to_date, result.closed)
    etag = _etag(meta.path, offset, next_offset)
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"etag": etag, "cache-control": "no-store"})
    headers["etag"] = etag
    return Response(body_for(result.messages, meta.content_type), 200, headers=headers)


async def _long_poll(
    request: Request,
    ctx: AppContext,
    meta: StreamMeta,
    offset: str,
    cursor: str | None,
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
) -> Response:
    start = await _start_offset(ctx, meta, offset)
    mark = ctx.store.change_mark(meta.path)
    result = await ctx.store.read(meta.path, start, ctx.config.max_read_bytes)
    if not result.messages:
        start = result.next_offset
        if not result.closed:  # a closed stream at its end answers at once: nothing will come
            wakeup = await ctx.shutdown.wait_for_change(
                ctx.store, meta.path, start, ctx.config.long_poll_timeout, since=mark
            )
            if wakeup is Wakeup.CHANGED:
                result = await ctx.store.read(meta.path, start, ctx.config.max_read_bytes)
                if still_allowed is not None and not await still_allowed():
                    # The permission ended while waiting: nothing appended since is delivered
                    # (the next request is refused with 403).
                    result = ReadResult((), start, True)
    if result.messages:
        headers = _read_headers(meta, result.next_offset, result.up_to_date, result.closed)
        headers["stream-cursor"] = next_cursor(cursor)
        return Response(body_for(result.messages, meta.content_type), 200, headers=headers)
    headers = {
        "stream-next-offset": start,
        "stream-up-to-date": "true",
        "cache-control": "no-store",
    }
    if result.closed:
        headers["stream-closed"] = "true"
    else:
        headers["stream-cursor"] = next_cursor(cursor)
    return Response(status_code=204, headers=headers)


async def _sse(
    ctx: AppContext,
    meta: StreamMeta,
    offset: str,
    cursor: str | None,
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
) -> SSEResponse:
    encoding = encoding_for(meta.content_type)
    start = await _start_offset(ctx, meta, offset)
    loop = EventStream(
        ctx.store,
        ctx.shutdown,
        meta.path,
        start,
        encoding,
        keepalive=ctx.config.keepalive,
        max_read_bytes=ctx.config.max_read_bytes,
        client_cursor=cursor,
        still_allowed=still_allowed,
    )
    headers = {"stream-sse-data-encoding": "base64"} if encoding == "base64" else {}
    return SSEResponse(
        loop.run,
        headers,
        on_open=ctx.metrics.sse_open.inc,
        on_close=ctx.metrics.sse_open.dec,
    )
