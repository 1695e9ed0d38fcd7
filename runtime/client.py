"""Speak the Durable Streams protocol and pullwake's runner registry over HTTP.

Theory of operation
-------------------
:class:`Client` is the runner's only door to the server. Each method is one HTTP exchange and
returns a typed value (:class:`RunnerRecord`, :class:`ClaimGrant`, :class:`ReadChunk`, ...) or
raises one of :mod:`pullwake.runtime.errors`. Translation happens at one edge,
:func:`map_http_errors` plus :func:`raise_for_answer`: httpx's network errors and timeouts become
:class:`~pullwake.runtime.errors.ServerUnreachable`, 5xx :class:`ServerFailure`, 401/403
:class:`Rejected`, 404 :class:`NotFound`, 409 a :class:`Conflict` picked by its code, any other
4xx :class:`ClientError`, and an answer that breaks the protocol :class:`ProtocolViolation`.

The wake stream is read with ``live=sse`` through :meth:`Client.open_wake_stream`, which returns
an open :class:`WakeStreamConnection` (the response is already accepted: status 200 and
``text/event-stream``), so the task that connects can hand it to the task that reads. Two
timeouts bound it: ``connect`` for the TCP/TLS handshake and ``read`` for any silence. The
server writes a keepalive on idle streams (3 s by default), so silence past ``read`` (default
9 s, three keepalives) means the server or the path to it is dead.

The request/answer exchanges to a plain ``http://`` server go over the lean HTTP path
(:mod:`pullwake.runtime.lean_http`: httptools on anyio streams, a fraction of httpx's CPU),
unless ``lean_http=False``, a ``transport``, or a proxy in the environment keeps them on
httpx; the wake stream always uses httpx and httpx-sse. The lean path raises httpx's own
transport exceptions, so :func:`map_http_errors` maps both paths at the same edge.

A client owns its connection pools (httpx's and the lean one). The runner makes one per run and
closes it at the end, so nothing is shared between runs or stacked by a restart.

Several base URLs may be given (servers sharing one database); :meth:`Client.rotate` moves to
the next one, which the runner does each time it backs off.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, NoReturn, Protocol
from urllib.parse import quote, urlencode

import anyio
import attrs
import httpx
from httpx_sse import EventSource

from .errors import (
    AlreadyClaimed,
    ClientError,
    Conflict,
    Fenced,
    NoPendingWork,
    NotFound,
    ProtocolViolation,
    Rejected,
    RequestFailed,
    ServerFailure,
    ServerUnreachable,
)
from .lean_http import LeanPool, Origin, lean_origin
from .offsets import START_OFFSET, offset_after

__all__ = [
    "AckAnswer",
    "ClaimGrant",
    "Client",
    "ControlEvent",
    "DataEvent",
    "ReadChunk",
    "RunnerRecord",
    "StreamProbe",
    "StreamState",
    "Timeouts",
    "WakeStreamConnection",
    "describe_failure",
    "map_http_errors",
    "raise_for_answer",
]

_CONFLICTS: dict[str, type[Conflict]] = {
    "ALREADY_CLAIMED": AlreadyClaimed,
    "NO_PENDING_WORK": NoPendingWork,
    "FENCED": Fenced,
}


@attrs.frozen
class Timeouts:
    """How long the client waits, in real seconds.

    ``connect`` bounds the TCP handshake; ``read`` bounds silence on the wake stream (set it to
    three times the server's keepalive interval: the default, 9 s, is three of the server's
    default 3 s keepalives, so a silent server is noticed within three keepalive intervals of
    its last byte); ``request`` bounds every other exchange, each read and write of it.
    """

    connect: float = 5.0
    read: float = 9.0
    request: float = 10.0


class _Answer(Protocol):
    """What the methods read of an answer: an ``httpx.Response`` or a lean one."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> httpx.Headers: ...

    @property
    def content(self) -> bytes: ...


# -- values ---------------------------------------------------------------------------------


@attrs.frozen
class RunnerRecord:
    """The registry's row for a runner, as the register answer gives it."""

    id: str
    wake_stream: str | None
    #: The durable resume point the runner reported last (``None`` when it never did).
    wake_stream_offset: str | None
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


@attrs.frozen
class StreamState:
    """One stream of a claim's snapshot."""

    path: str
    link_type: str
    acked_offset: str
    tail_offset: str
    has_pending: bool


@attrs.frozen
class ReadChunk:
    """One catch-up read of a stream.

    ``messages`` holds decoded JSON values for JSON streams, or the raw body as one ``bytes``
    item for other content types (empty when the read was at the tail).
    """

    messages: tuple[Any, ...]
    next_offset: str
    up_to_date: bool
    content_type: str


@attrs.frozen
class ClaimGrant:
    """A successful claim: the lease's identity, token and the snapshot of the streams."""

    subscription_id: str
    wake_id: str
    generation: int
    token: str = attrs.field(repr=False)
    streams: tuple[StreamState, ...]
    lease_ttl_ms: int
    #: Per stream, the first read the claim answer carried inline (the ``inline-messages``
    #: extension): it starts at the stream's ``acked_offset``. Empty from a plain server.
    inline: Mapping[str, ReadChunk] = attrs.field(factory=dict, eq=False, repr=False)


@attrs.frozen
class AckAnswer:
    """What a done-ack answered: whether the server woke the subscription again, or the next
    claim it took for this runner at once (the ``claim-next`` extension)."""

    next_wake: bool
    next_claim: ClaimGrant | None = None


@attrs.frozen
class StreamProbe:
    """What a ``HEAD`` on a stream says."""

    next_offset: str | None
    content_type: str


@attrs.frozen
class DataEvent:
    """An SSE ``data`` event: the messages appended to the wake stream."""

    messages: tuple[Any, ...]


@attrs.frozen
class ControlEvent:
    """An SSE ``control`` event: where the stream stands after the data before it."""

    next_offset: str
    cursor: str | None
    up_to_date: bool


# -- the translation edge -------------------------------------------------------------------


@contextlib.contextmanager
def map_http_errors(method: str, url: str) -> Iterator[None]:
    """Translate httpx's transport errors raised inside the block into ours.

    Only transport errors pass through here (no answer came); answers are judged by
    :func:`raise_for_answer`. Cancellation is never touched.
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ServerUnreachable(
            f"{method} {url} timed out ({type(exc).__name__}): the server is down, stopped or "
            "unreachable; the runner retries with backoff",
            method=method,
            url=url,
        ) from exc
    except httpx.TransportError as exc:
        raise ServerUnreachable(
            f"{method} {url} failed ({type(exc).__name__}: {exc}): the server is down or "
            "unreachable; the runner retries with backoff",
            method=method,
            url=url,
        ) from exc
    except httpx.StreamError as exc:
        raise ServerUnreachable(
            f"{method} {url}: the answer's stream broke ({type(exc).__name__}: {exc})",
            method=method,
            url=url,
        ) from exc


def _is_page(content: bytes, content_type: str) -> bool:
    """Whether an answer is a web page (HTML or other markup), not a Durable Streams answer."""
    kind = content_type.split(";")[0].strip().lower()
    return kind in ("text/html", "application/xhtml+xml") or content.lstrip()[:1] == b"<"


def _error_body(content: bytes, content_type: str = "") -> tuple[dict[str, Any], str | None, str]:
    kind = content_type.split(";")[0].strip().lower()
    if _is_page(content, content_type):
        # A web page (a proxy, a web server, a wrong URL): name it, never paste it.
        return {}, None, f"a {kind or 'markup'} page, not a Durable Streams answer (wrong URL?)"
    try:
        decoded = json.loads(content) if content else {}
    except ValueError:
        decoded = {}
    error = decoded.get("error") if isinstance(decoded, dict) else None
    if not isinstance(error, dict):
        text = content[:200].decode("utf-8", "replace").strip()
        return {}, None, text
    code = error.get("code")
    message = error.get("message")
    return error, code if isinstance(code, str) else None, str(message or "")


def raise_for_answer(
    method: str, url: str, status: int, content: bytes, content_type: str = ""
) -> None:
    """Raise the error an answer means; return for a 2xx answer."""
    if 200 <= status < 300:
        return
    body, code, detail = _error_body(content, content_type)
    said = f"{status} {code or ''}".strip() + (f": {detail}" if detail else "")
    fields: dict[str, Any] = {
        "method": method,
        "url": url,
        "status": status,
        "code": code,
        "page": _is_page(content, content_type),
    }
    if status >= 500:
        raise ServerFailure(
            f"{method} {url} answered {said}; a server-side failure, retried with backoff",
            body=body,
            **fields,
        )
    if status in (401, 403):
        raise Rejected(
            f"{method} {url} answered {said}; the server refused this runner's credentials. "
            "Pass the token the server was configured with for this runner id (token=...)",
            body=body,
            **fields,
        )
    if status == 404:
        raise NotFound(f"{method} {url} answered {said}", body=body, **fields)
    if status == 409:
        kind = _CONFLICTS.get(code or "", Conflict)
        raise kind(f"{method} {url} answered {said}", body=body, **fields)
    raise ClientError(
        f"{method} {url} answered {said}; the request is not valid for this server",
        body=body,
        **fields,
    )


def _violation(method: str, url: str, what: str) -> NoReturn:
    raise ProtocolViolation(
        f"{method} {url}: {what}; is this a Durable Streams server with pull-wake support?",
        method=method,
        url=url,
    )


def _json(method: str, url: str, content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        _violation(method, url, "the answer is not valid JSON")


def _field(method: str, url: str, data: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(data, dict) or not isinstance(data.get(name), kind):
        _violation(method, url, f"the answer lacks a valid {name!r}")
    return data[name]


def _is_json(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == "application/json"


#: The negotiation header of the pullwake extensions, and what this runner offers.
EXTENSIONS_HEADER = "Pullwake-Extensions"
INLINE_MESSAGES = "inline-messages"
CLAIM_NEXT = "claim-next"
OFFERED_EXTENSIONS = (INLINE_MESSAGES, CLAIM_NEXT)
_OFFER = {EXTENSIONS_HEADER: ", ".join(OFFERED_EXTENSIONS)}


def _grant(method: str, url: str, sub_id: str, data: Any, confirmed: frozenset[str]) -> ClaimGrant:
    """Parse a claim answer (or a done-ack's ``next_claim``) into a grant."""
    if not isinstance(data, dict):
        _violation(method, url, "the claim answer is not a JSON object")
    streams = []
    for item in _field(method, url, data, "streams", list):
        acked = item.get("acked_offset") if isinstance(item, dict) else None
        tail = item.get("tail_offset") if isinstance(item, dict) else None
        stream_path = item.get("path") if isinstance(item, dict) else None
        if not isinstance(stream_path, str) or not isinstance(tail, str):
            _violation(method, url, "a claimed stream lacks 'path' or 'tail_offset'")
        acked = acked if isinstance(acked, str) else START_OFFSET
        pending = item.get("has_pending")
        streams.append(
            StreamState(
                path=stream_path,
                link_type=str(item.get("link_type", "explicit")),
                acked_offset=acked,
                tail_offset=tail,
                has_pending=(pending if isinstance(pending, bool) else offset_after(tail, acked)),
            )
        )
    generation = _field(method, url, data, "generation", int)
    inline: dict[str, ReadChunk] = {}
    if INLINE_MESSAGES in confirmed and data.get("messages") is not None:
        inline = _inline(method, url, data["messages"], streams)
    return ClaimGrant(
        subscription_id=sub_id,
        wake_id=str(_field(method, url, data, "wake_id", (str, int))),
        generation=int(generation),
        token=_field(method, url, data, "token", str),
        streams=tuple(streams),
        lease_ttl_ms=int(data.get("lease_ttl_ms") or 30_000),
        inline=inline,
    )


def _inline(
    method: str, url: str, raw: Any, streams: Sequence[StreamState]
) -> dict[str, ReadChunk]:
    """Parse a claim answer's ``messages``: per pending stream, its first read, checked."""
    pending = {state.path: state for state in streams if state.has_pending}
    if not isinstance(raw, dict):
        _violation(method, url, "the claim answer's 'messages' is not an object")
    chunks = {}
    for stream_path, entry in raw.items():
        state = pending.get(stream_path)
        items = entry.get("items") if isinstance(entry, dict) else None
        next_offset = entry.get("next_offset") if isinstance(entry, dict) else None
        up_to_date = entry.get("up_to_date") if isinstance(entry, dict) else None
        if (
            state is None
            or not isinstance(items, list)
            or not isinstance(next_offset, str)
            or not isinstance(up_to_date, bool)
            or not offset_after(next_offset, state.acked_offset)
        ):
            _violation(
                method, url, f"the inline messages of {str(stream_path)[:200]!r} are malformed"
            )
        chunks[stream_path] = ReadChunk(tuple(items), next_offset, up_to_date, "application/json")
    return chunks


class _RequestBody(httpx.AsyncByteStream):
    """A request body iterated by a plain object, not an async generator.

    httpx's own body stream is an async generator; when a request is cancelled while its body
    is being sent (a heartbeat in flight at stop), the generator is left suspended and trio
    warns when it is collected (encode/httpx#3686). Iterating a plain object avoids that.
    """

    def __init__(self, content: bytes) -> None:
        self._content = content

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _OneChunk(self._content)


class _OneChunk:
    """An async iterator over one chunk of bytes."""

    def __init__(self, content: bytes) -> None:
        # Invariant: None once the chunk has been handed out.
        self._content: bytes | None = content

    def __aiter__(self) -> _OneChunk:
        return self

    async def __anext__(self) -> bytes:
        if self._content is None:
            raise StopAsyncIteration
        content, self._content = self._content, None
        return content


# -- the wake stream ------------------------------------------------------------------------


class WakeStreamConnection:
    """An accepted ``live=sse`` response on the wake stream; iterate :meth:`events`, then close.

    It may be opened by one task and read by another. Closing is idempotent and safe while the
    caller is being cancelled.
    """

    def __init__(self, response: httpx.Response, method: str, url: str) -> None:
        self._response = response
        self._method = method
        self._url = url
        # Invariant: True once the response has been closed; events() then yields nothing.
        self._closed = False

    @property
    def url(self) -> str:
        return self._url

    @property
    def closed(self) -> bool:
        return self._closed

    async def events(self) -> AsyncIterator[DataEvent | ControlEvent]:
        """Yield the stream's data and control events until EOF; raise on a broken stream.

        Keepalive comments are consumed silently (they only reset the read timeout). A read
        timeout raises :class:`ServerUnreachable`: silence means the server is gone.
        """
        if self._closed:
            return
        source = EventSource(self._response)
        with map_http_errors(self._method, self._url):
            async for sse in source.aiter_sse():
                if sse.event == "data":
                    data = _json(self._method, self._url, sse.data.encode())
                    if not isinstance(data, list):
                        _violation(self._method, self._url, "an SSE data event is not a JSON array")
                    yield DataEvent(tuple(data))
                elif sse.event == "control":
                    control = _json(self._method, self._url, sse.data.encode())
                    offset = _field(self._method, self._url, control, "streamNextOffset", str)
                    cursor = control.get("streamCursor")
                    yield ControlEvent(
                        offset,
                        cursor if isinstance(cursor, str) else None,
                        bool(control.get("upToDate", False)),
                    )

    async def aclose(self) -> None:
        """Close the response (shielded and bounded, so it is safe while cancelled)."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            await self._response.aclose()


# -- the client -----------------------------------------------------------------------------


class Client:
    """One connection pool to one or more equivalent servers; see the module docstring.

    ``token`` is sent as ``Authorization: Bearer`` on every request except claim acks and
    releases, which carry the claim's own token there (and ``token`` in
    ``Pullwake-Authorization``). ``transport`` replaces the network (tests); ``ssl_context``
    replaces the default verifying context (made per client otherwise).

    ``lean_http`` (default on) sends the request/answer exchanges to plain ``http://`` URLs
    over :mod:`pullwake.runtime.lean_http` instead of httpx (about a quarter of httpx's CPU per
    exchange). It is used only where it changes nothing but the cost: never with a
    ``transport``, never for ``https://`` URLs or URLs with credentials, never when the
    environment names an HTTP proxy (httpx would use it). The wake stream always uses httpx.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        timeouts: Timeouts | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        ssl_context: ssl.SSLContext | None = None,
        lean_http: bool = True,
    ) -> None:
        bases = [urls] if isinstance(urls, str) else list(urls)
        if not bases:
            raise ValueError("give at least one server URL, such as http://127.0.0.1:4437")
        for base in bases:
            if not base.startswith(("http://", "https://")):
                raise ValueError(f"server URL {base!r} must start with http:// or https://")
        # Invariant: non-empty; none ends with a slash.
        self._bases = [b.rstrip("/") for b in bases]
        # Invariant: 0 <= self._index < len(self._bases).
        self._index = 0
        self._token = token
        self.timeouts = timeouts or Timeouts()
        t = self.timeouts
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(t.request, connect=t.connect),
            transport=transport,
            follow_redirects=False,
            # Building a verifying SSL context takes tens of milliseconds; a caller that makes
            # many clients (one per run) passes one it made once.
            verify=ssl_context if ssl_context is not None else True,
        )
        self._sse_timeout = httpx.Timeout(t.request, connect=t.connect, read=t.read)
        # Invariant: per base URL (same index), its lean origin, or None where httpx serves
        # the exchanges; all None when the lean path is off.
        lean = lean_http and transport is None and not _proxy_in_env()
        self._origins: list[Origin | None] = [
            lean_origin(base) if lean else None for base in self._bases
        ]
        self._lean = LeanPool()

    @property
    def base_url(self) -> str:
        """The server URL requests go to now."""
        return self._bases[self._index]

    def rotate(self) -> str:
        """Move to the next server URL (round robin); return it."""
        self._index = (self._index + 1) % len(self._bases)
        return self.base_url

    @property
    def lean_http(self) -> bool:
        """True when exchanges with the current server URL go over the lean HTTP path."""
        return self._origins[self._index] is not None

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    async def aclose(self) -> None:
        """Close every pooled connection (shielded and bounded)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
            await self._lean.aclose()
            await self._http.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- plumbing ------------------------------------------------------------------------

    def _headers(self, bearer: str | None = None) -> dict[str, str]:
        """Return the auth headers: the runner's token, or a claim token plus the runner's.

        On ack and release ``Authorization`` carries the claim token (the protocol says so),
        so the runner's own token travels in ``Pullwake-Authorization``; servers that do not
        know that header ignore it.
        """
        headers: dict[str, str] = {}
        if self._token:
            headers["Pullwake-Authorization"] = f"Bearer {self._token}"
            headers["Authorization"] = f"Bearer {self._token}"
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        return headers

    async def _exchange(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        bearer: str | None = None,
        timeout: float | None = None,
        content_type: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        url = self.base_url + path
        headers = self._headers(bearer)
        if extra_headers:
            headers.update(extra_headers)
        content: bytes | None = None
        if json_body is not None:
            content = json.dumps(json_body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if content_type is not None:
            headers["Content-Type"] = content_type
        answer: _Answer
        origin = self._origins[self._index]
        if origin is not None:
            if self._http.is_closed:
                raise RuntimeError("Cannot send a request, as the client has been closed.")
            t = self.timeouts
            with map_http_errors(method, url):
                answer = await self._lean.request(
                    origin,
                    method,
                    path + "?" + urlencode(params) if params else path,
                    list(headers.items()),
                    content,
                    connect_timeout=t.connect if timeout is None else min(timeout, t.connect),
                    timeout=t.request if timeout is None else timeout,
                )
        else:
            answer = await self._send_httpx(method, url, headers, content, params, timeout)
        raise_for_answer(
            method,
            url,
            answer.status_code,
            answer.content,
            answer.headers.get("Content-Type", ""),
        )
        return answer

    async def _send_httpx(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
        params: Mapping[str, str] | None,
        timeout: float | None,
    ) -> httpx.Response:
        request = self._http.build_request(
            method,
            url,
            headers=headers,
            params=params,
            content=content,
            timeout=(
                httpx.Timeout(timeout, connect=min(timeout, self.timeouts.connect))
                if timeout is not None
                else httpx.USE_CLIENT_DEFAULT
            ),
        )
        if content is not None:
            request.stream = _RequestBody(content)
        with map_http_errors(method, url):
            return await self._http.send(request)

    @staticmethod
    def _stream_path(path: str) -> str:
        return "/v1/stream/" + quote(path.strip("/"), safe="/")

    @staticmethod
    def _subscription_path(sub_id: str, suffix: str = "") -> str:
        return "/v1/stream/__ds/subscriptions/" + quote(sub_id, safe="") + suffix

    @staticmethod
    def _runner_path(runner_id: str, suffix: str = "") -> str:
        return "/v1/runners/" + quote(runner_id, safe="") + suffix

    # -- registry ------------------------------------------------------------------------

    async def register(
        self, runner_id: str, *, label: str | None = None, wake_stream: str | None = None
    ) -> RunnerRecord:
        """Register (or re-register) the runner; raises NotFound without a registry."""
        body: dict[str, Any] = {"id": runner_id}
        if label is not None:
            body["label"] = label
        if wake_stream is not None:
            body["wake_stream"] = wake_stream
        response = await self._exchange("POST", "/v1/runners", json_body=body)
        url = self.base_url + "/v1/runners"
        data = _json("POST", url, response.content)
        if isinstance(data, dict) and isinstance(data.get("runner"), dict):
            data = data["runner"]
        if not isinstance(data, dict):
            _violation("POST", url, "the register answer is not a JSON object")
        offset = data.get("wake_stream_offset")
        stream = data.get("wake_stream")
        return RunnerRecord(
            id=str(data.get("id", runner_id)),
            wake_stream=stream if isinstance(stream, str) else None,
            wake_stream_offset=offset if isinstance(offset, str) else None,
            raw=data,
        )

    async def heartbeat(
        self,
        runner_id: str,
        *,
        lease_ms: int,
        wake_stream_offset: str | None,
        diagnostics: Mapping[str, Any],
        timeout: float | None = None,
    ) -> None:
        """Report liveness, the resume offset and diagnostics; 404 means: register again."""
        await self._exchange(
            "POST",
            self._runner_path(runner_id, "/heartbeat"),
            json_body={
                "lease_ms": lease_ms,
                "wake_stream_offset": wake_stream_offset,
                "diagnostics": dict(diagnostics),
            },
            timeout=timeout,
        )

    async def health(self, runner_id: str) -> dict[str, Any]:
        """Return the server's health verdict for a runner."""
        path = self._runner_path(runner_id, "/health")
        response = await self._exchange("GET", path)
        data = _json("GET", self.base_url + path, response.content)
        if not isinstance(data, dict):
            _violation("GET", self.base_url + path, "the health answer is not a JSON object")
        return data

    # -- streams -------------------------------------------------------------------------

    async def probe(self, path: str, *, timeout: float | None = None) -> StreamProbe:
        """``HEAD`` a stream: the liveness probe against servers without a registry."""
        response = await self._exchange("HEAD", self._stream_path(path), timeout=timeout)
        return StreamProbe(
            response.headers.get("Stream-Next-Offset"),
            response.headers.get("Content-Type", ""),
        )

    async def create_stream(self, path: str) -> bool:
        """Create a JSON stream (an idempotent PUT); return True when it was created."""
        response = await self._exchange(
            "PUT", self._stream_path(path), content_type="application/json"
        )
        return response.status_code == 201

    async def append(self, path: str, values: Sequence[Any]) -> None:
        """Append JSON ``values`` to a JSON stream, each as one message."""
        await self._exchange("POST", self._stream_path(path), json_body=list(values))

    async def read(self, path: str, offset: str) -> ReadChunk:
        """Read the stream after ``offset`` (a catch-up read: one chunk, no waiting)."""
        url_path = self._stream_path(path)
        response = await self._exchange("GET", url_path, params={"offset": offset})
        url = self.base_url + url_path
        next_offset = response.headers.get("Stream-Next-Offset")
        if not next_offset:
            _violation("GET", url, "the read answer has no Stream-Next-Offset header")
        up_to_date = response.headers.get("Stream-Up-To-Date", "").lower() == "true"
        content_type = response.headers.get("Content-Type", "")
        messages: tuple[Any, ...]
        if _is_json(content_type):
            data = _json("GET", url, response.content) if response.content else []
            if not isinstance(data, list):
                _violation("GET", url, "a JSON stream read did not answer a JSON array")
            messages = tuple(data)
        else:
            messages = (response.content,) if response.content else ()
        return ReadChunk(messages, next_offset, up_to_date, content_type)

    async def open_wake_stream(self, path: str, offset: str) -> WakeStreamConnection:
        """Open ``live=sse`` on the wake stream from ``offset``; return the accepted response.

        Raises the mapped error when the server does not answer 200 with an event stream.
        """
        url = self.base_url + self._stream_path(path)
        request = self._http.build_request(
            "GET",
            url,
            params={"offset": offset, "live": "sse"},
            headers={
                **self._headers(),
                "Accept": "text/event-stream",
                "Cache-Control": "no-store",
            },
            timeout=self._sse_timeout,
        )
        with map_http_errors("GET", url):
            response = await self._http.send(request, stream=True)
        try:
            if response.status_code != 200:
                with map_http_errors("GET", url):
                    content = await response.aread()
                raise_for_answer(
                    "GET",
                    url,
                    response.status_code,
                    content,
                    response.headers.get("Content-Type", ""),
                )
                _violation("GET", url, f"live=sse answered {response.status_code}, not 200")
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type != "text/event-stream":
                _violation("GET", url, f"live=sse answered Content-Type {content_type!r}")
            if response.headers.get("stream-sse-data-encoding", "").lower() == "base64":
                _violation("GET", url, "the wake stream is not JSON (its SSE data is base64)")
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await response.aclose()
            raise
        return WakeStreamConnection(response, "GET", url)

    # -- subscriptions -------------------------------------------------------------------

    async def put_subscription(self, sub_id: str, config: Mapping[str, Any]) -> bool:
        """Create or re-confirm a pull-wake subscription; return True when it was created."""
        response = await self._exchange(
            "PUT", self._subscription_path(sub_id), json_body={"type": "pull-wake", **config}
        )
        return response.status_code == 201

    # -- pullwake extensions (docs/server.md "pullwake extensions") -----------------------
    #
    # Claim and ack requests offer both extensions; a plain Durable Streams server ignores the
    # header and answers as always. An answer that confirms an extension is remembered per
    # Client, and a done-ack asks for the next claim only once a server confirmed claim-next:
    # nothing is assumed that an answer did not confirm.

    #: The extensions a server of this Client confirmed (replaced, never mutated).
    _confirmed: frozenset[str] = frozenset()

    @property
    def extensions(self) -> frozenset[str]:
        """The pullwake extensions the server confirmed so far (empty for a plain server)."""
        return self._confirmed

    def _confirmations(self, response: _Answer) -> frozenset[str]:
        raw = response.headers.get(EXTENSIONS_HEADER)
        confirmed = frozenset(
            part.strip().lower() for part in (raw or "").split(",") if part.strip()
        ) & frozenset(OFFERED_EXTENSIONS)
        if confirmed != self._confirmed:
            self._confirmed = confirmed
        return confirmed

    async def claim(self, sub_id: str, worker: str) -> ClaimGrant:
        """Claim the subscription's pending work; 409 codes raise AlreadyClaimed/NoPendingWork."""
        path = self._subscription_path(sub_id, "/claim")
        response = await self._exchange(
            "POST", path, json_body={"worker": worker}, extra_headers=_OFFER
        )
        url = self.base_url + path
        confirmed = self._confirmations(response)
        return _grant("POST", url, sub_id, _json("POST", url, response.content), confirmed)

    async def ack(
        self,
        grant: ClaimGrant,
        acks: Sequence[tuple[str, str]],
        *,
        done: bool,
        timeout: float | None = None,
    ) -> bool:
        """Ack ``(stream, offset)`` pairs; ``done`` ends the claim. Return ``next_wake``.

        Without ``done`` this only extends the lease (it is the claim's heartbeat).
        """
        answer = await self.finish(grant, acks, done=done, timeout=timeout)
        return answer.next_wake

    async def finish(
        self,
        grant: ClaimGrant,
        acks: Sequence[tuple[str, str]],
        *,
        done: bool = True,
        claim_next: str | None = None,
        timeout: float | None = None,
    ) -> AckAnswer:
        """Ack like :meth:`ack`; with ``done`` and ``claim_next`` (the worker to claim as) a
        server that confirmed ``claim-next`` may answer the next claim (``next_claim``)."""
        body: dict[str, Any] = {
            "wake_id": grant.wake_id,
            "generation": grant.generation,
            "acks": [{"stream": s, "offset": o} for s, o in acks],
        }
        if done:
            body["done"] = True
            if claim_next is not None and CLAIM_NEXT in self._confirmed:
                body["claim_next"] = {"worker": claim_next}
        path = self._subscription_path(grant.subscription_id, "/ack")
        response = await self._exchange(
            "POST", path, json_body=body, bearer=grant.token, timeout=timeout, extra_headers=_OFFER
        )
        url = self.base_url + path
        confirmed = self._confirmations(response)
        data = _json("POST", url, response.content) if response.content else {}
        if not isinstance(data, dict):
            return AckAnswer(next_wake=False)
        nxt = data.get("next_claim")
        if "claim_next" in body and CLAIM_NEXT in confirmed and nxt is not None:
            return AckAnswer(
                next_wake=bool(data.get("next_wake")),
                next_claim=_grant("POST", url, grant.subscription_id, nxt, confirmed),
            )
        return AckAnswer(next_wake=bool(data.get("next_wake")))

    async def release(self, grant: ClaimGrant, *, timeout: float | None = None) -> None:
        """Give the claim back without acking; the server re-wakes if work is pending."""
        await self._exchange(
            "POST",
            self._subscription_path(grant.subscription_id, "/release"),
            json_body={"wake_id": grant.wake_id, "generation": grant.generation},
            bearer=grant.token,
            timeout=timeout,
        )

    def __repr__(self) -> str:
        return f"<Client {self.base_url!r}{' closed' if self.closed else ''}>"


def _proxy_in_env() -> bool:
    """True when the environment names a proxy httpx would send plain HTTP through."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get("http") or proxies.get("all"))


def describe_failure(exc: BaseException) -> str:
    """Return a short, log-friendly description of a failure.

    An exception without a message (``anyio.fail_after`` raises a bare ``TimeoutError``) is
    named with a plain description of what its type means, never an empty text after a colon.
    """
    if isinstance(exc, RequestFailed):
        return exc.message
    name = type(exc).__name__
    text = str(exc).strip()
    if text:
        return f"{name}: {text}"
    if isinstance(exc, TimeoutError):
        return f"{name} (no answer in time)"
    return f"{name} (no details given)"
