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
* TTL/expiry, forks, stream closure, ``Stream-Seq`` and idempotent producers are answered 501.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from pullwake.server import jsontext, paths
from pullwake.server.auth import Principal
from pullwake.server.bodies import parse_json, read_body
from pullwake.server.context import AppContext, context_of
from pullwake.server.cursors import next_cursor
from pullwake.server.digits import parse_decimal
from pullwake.server.errors import BadRequest, Conflict, NotImplementedYet, content_type_mismatch
from pullwake.server.shutdown import Wakeup
from pullwake.server.sse import EventStream, SSEResponse, encoding_for
from pullwake.server.store.base import (
    NOW_OFFSET,
    START_OFFSET,
    Message,
    ReadResult,
    StreamMeta,
)

JSON_TYPE = "application/json"
DEFAULT_TYPE = "application/octet-stream"
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*", re.ASCII)
#: Request headers of protocol features pullwake does not implement (answered 501).
_UNSUPPORTED_HEADERS = {
    "stream-ttl": "stream TTL",
    "stream-expires-at": "stream expiry",
    "stream-forked-from": "stream forks",
    "stream-closed": "stream closure",
    "stream-seq": "Stream-Seq writer sequencing",
    "producer-id": "idempotent producers",
    "producer-epoch": "idempotent producers",
    "producer-seq": "idempotent producers",
}


def media_type(header: str | None) -> str | None:
    """Return the lower-cased media type of a Content-Type header, or None if unusable."""
    if header is None:
        return None
    media = header.split(";", 1)[0].strip()
    return media.lower() if _MEDIA_TYPE.fullmatch(media) else None


def is_json(content_type: str) -> bool:
    return content_type == JSON_TYPE


def _reject_unsupported(request: Request) -> None:
    for header, feature in _UNSUPPORTED_HEADERS.items():
        if header in request.headers:
            raise NotImplementedYet(
                f"pullwake does not implement {feature} (header {header!r}); send the request "
                "without it.",
            )


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
    path = paths.stream_path(request.path_params["path"])
    return path, principal


async def _real_tail(ctx: AppContext, path: str, offset: str) -> str:
    if offset in (START_OFFSET, NOW_OFFSET):
        return (await ctx.store.stream(path)).tail_offset
    return offset


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
    _reject_unsupported(request)
    content_type = media_type(request.headers.get("content-type")) or DEFAULT_TYPE
    body = await read_body(request, ctx.config.max_body_bytes)
    if is_json(content_type):
        items = json_messages(body, allow_empty=True) if body.strip() else []
    else:
        items = [body] if body else []
    created, meta = await ctx.store.create_stream(path, content_type, ctx.clock())
    tail = meta.tail_offset
    if created and items:
        result = await ctx.store.append(path, items, ctx.clock())
        tail = result.next_offset
        ctx.metrics.messages_appended.inc(len(items))
        ctx.metrics.wakes.inc(len(result.wakes))
    headers = {"content-type": meta.content_type, "stream-next-offset": tail}
    if created:
        headers["location"] = _location(request)
    return Response(status_code=201 if created else 200, headers=headers)


async def append(request: Request) -> Response:
    """``POST``: append one message (or, for JSON, each element of an array)."""
    ctx = context_of(request)
    path, principal = await _path_and_principal(request, ctx)
    ctx.policy.require_admin(principal, "append to streams")
    _reject_unsupported(request)
    body = await read_body(request, ctx.config.max_body_bytes)
    if not body:
        raise BadRequest("An append needs a non-empty body.", code="EMPTY_BODY")
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
    result = await ctx.store.append(path, items, ctx.clock(), content_type=sent)
    ctx.metrics.messages_appended.inc(len(items))
    ctx.metrics.wakes.inc(len(result.wakes))
    return Response(status_code=204, headers={"stream-next-offset": result.next_offset})


async def head(request: Request) -> Response:
    """``HEAD``: the stream's content type and tail offset."""
    ctx = context_of(request)
    path, principal = await _path_and_principal(request, ctx)
    await ctx.policy.require_stream_read(principal, path)
    meta = await ctx.store.stream(path)
    return Response(
        status_code=200,
        headers={
            "content-type": meta.content_type,
            "stream-next-offset": meta.tail_offset,
            "cache-control": "no-store",
            "etag": _etag(path, START_OFFSET, meta.tail_offset),
        },
    )


async def delete(request: Request) -> Response:
    """``DELETE``: remove the stream, its messages and its subscription links."""
    ctx = context_of(request)
    path, principal = await _path_and_principal(request, ctx)
    ctx.policy.require_admin(principal, "delete streams")
    await ctx.store.delete_stream(path)
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
        paths.offset(offset)
    elif live is not None:
        raise BadRequest(f"live={live} needs an offset; pass offset=-1, now, or a saved one.")
    await ctx.policy.require_stream_read(principal, path)
    meta = await ctx.store.stream(path)
    still_allowed: Callable[[], Awaitable[bool]] | None = None
    if not principal.unrestricted:
        still_allowed = functools.partial(ctx.policy.may_still_read, principal, path)

    if live == "sse":
        return await _sse(ctx, meta, offset or START_OFFSET, cursor, still_allowed)
    if live == "long-poll":
        return await _long_poll(request, ctx, meta, offset or START_OFFSET, cursor, still_allowed)
    return await _catch_up(request, ctx, meta, offset or START_OFFSET)


def _read_headers(meta: StreamMeta, next_offset: str, up_to_date: bool) -> dict[str, str]:
    headers = {
        "content-type": meta.content_type,
        "stream-next-offset": next_offset,
        "cache-control": "no-store",
    }
    if up_to_date:
        headers["stream-up-to-date"] = "true"
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
    return await _real_tail(ctx, meta.path, probe.next_offset)


async def _catch_up(request: Request, ctx: AppContext, meta: StreamMeta, offset: str) -> Response:
    if offset == NOW_OFFSET:
        headers = _read_headers(meta, meta.tail_offset, up_to_date=True)
        return Response(body_for((), meta.content_type), 200, headers=headers)
    result = await _read_clamped(ctx, meta.path, offset, ctx.config.max_read_bytes)
    next_offset = await _real_tail(ctx, meta.path, result.next_offset)
    headers = _read_headers(meta, next_offset, result.up_to_date)
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
        start = await _real_tail(ctx, meta.path, result.next_offset)
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
        headers = _read_headers(meta, result.next_offset, result.up_to_date)
        headers["stream-cursor"] = next_cursor(cursor)
        return Response(body_for(result.messages, meta.content_type), 200, headers=headers)
    headers = {
        "stream-next-offset": start,
        "stream-up-to-date": "true",
        "stream-cursor": next_cursor(cursor),
        "cache-control": "no-store",
    }
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
