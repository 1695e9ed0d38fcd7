"""An in-memory Durable Streams server with pull-wake and a registry, for httpx.MockTransport.

Unit tests of the runtime use it where a real server cannot be made to misbehave on cue: every
route can be told to fail (``fail(kind, *answers)``), to hang (``hang(kind)``), the whole server
to go away like a killed process (``go_down()``, ``come_back()``), and every call is recorded
(``calls``). It implements the small part of the protocol the runner uses: JSON
streams, catch-up reads, ``live=sse`` (from memory, ending on ``end_sse()``), pull-wake
subscriptions with explicit streams (claim, ack, release, fencing, auto-wakes) and the runner
registry. Tests that need the real thing use the ``server_factory`` fixture instead.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote

import anyio
import attrs
import httpx


def _offset(n: int) -> str:
    return f"{n:010d}"


@attrs.define
class FakeSubscription:
    id: str
    wake_stream: str
    # path -> acked offset
    acked: dict[str, str]
    lease_ttl_ms: int = 30_000
    generation: int = 0
    wake_id: str | None = None
    holder: str | None = None
    token: str | None = None
    wake_in_flight: bool = False


class FakeServer:
    """See the module docstring. ``transport()`` returns the MockTransport to hand to a client."""

    def __init__(self, *, registry: bool = True) -> None:
        self.registry = registry
        self._seq = itertools.count(1)
        # path -> [(offset, value)]
        self.streams: dict[str, list[tuple[str, Any]]] = {}
        self.subscriptions: dict[str, FakeSubscription] = {}
        self.runners: dict[str, dict[str, Any]] = {}
        self.heartbeats: list[dict[str, Any]] = []
        self.calls: list[tuple[str, httpx.Request]] = []
        self._failures: dict[str, list[Callable[[], httpx.Response]]] = defaultdict(list)
        self._hanging: set[str] = set()
        self._gates: dict[str, anyio.Event] = {}
        self._changed: dict[str, anyio.Event] = {}
        self._sse_generation = 0
        self.sse_open = 0
        self._tokens = itertools.count(1)
        # Invariant: True between go_down() and come_back(): every call is refused.
        self.down = False
        #: Speak the claim-next extension (docs/server.md "pullwake extensions").
        self.claim_next = False

    # -- setup from tests ----------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def create_stream(self, path: str) -> None:
        self.streams.setdefault(path, [])

    def tail(self, path: str) -> str:
        items = self.streams[path]
        return items[-1][0] if items else _offset(0)

    def subscribe(
        self, sub_id: str, streams: list[str], wake_stream: str, lease_ttl_ms: int = 30_000
    ) -> FakeSubscription:
        for path in [*streams, wake_stream]:
            self.create_stream(path)
        sub = FakeSubscription(
            sub_id, wake_stream, {p: self.tail(p) for p in streams}, lease_ttl_ms
        )
        self.subscriptions[sub_id] = sub
        return sub

    def append(self, path: str, *values: Any) -> str:
        """Append values (one message each); issue wakes like the server would."""
        self.create_stream(path)
        for value in values:
            self.streams[path].append((_offset(next(self._seq)), value))
        self._notify(path)
        for sub in self.subscriptions.values():
            if path in sub.acked:
                self._maybe_wake(sub, path)
        return self.tail(path)

    def wake(self, sub_id: str, generation: int | None = None) -> None:
        """Append a wake event for ``sub_id`` to its wake stream without any bookkeeping."""
        sub = self.subscriptions[sub_id]
        self.append(
            sub.wake_stream,
            {
                "type": "wake",
                "subscription_id": sub_id,
                "stream": next(iter(sub.acked), None),
                "generation": generation if generation is not None else sub.generation,
                "ts": 0,
            },
        )

    def fail(self, kind: str, *answers: int | Exception) -> None:
        """Make the next calls of ``kind`` answer these statuses or raise these errors."""
        for answer in answers:
            self._failures[kind].append(self._answer(answer))

    def hang(self, kind: str, on: bool = True) -> None:
        """Make calls of ``kind`` never answer (until ``hang(kind, False)``)."""
        if on:
            self._hanging.add(kind)
        else:
            self._hanging.discard(kind)

    def gate(self, kind: str) -> anyio.Event:
        """Hold calls of ``kind`` until the returned event is set."""
        self._gates[kind] = anyio.Event()
        return self._gates[kind]

    def go_down(self) -> None:
        """Act like a killed server: reset every open SSE response and refuse every call.

        Calls are still recorded; each raises ``httpx.ConnectError`` until :meth:`come_back`.
        """
        self.down = True
        self.end_sse()

    def come_back(self) -> None:
        """Answer calls again (after :meth:`go_down`), with the same data as before."""
        self.down = False

    def end_sse(self) -> None:
        """End every open SSE response cleanly (EOF), like a server shutting down."""
        self._sse_generation += 1
        for path in list(self._changed):
            self._notify(path)

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.calls if k == kind)

    def bodies(self, kind: str) -> list[Any]:
        return [json.loads(r.content) if r.content else None for k, r in self.calls if k == kind]

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _answer(answer: int | Exception) -> Callable[[], httpx.Response]:
        def respond() -> httpx.Response:
            if isinstance(answer, Exception):
                raise answer
            code = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND"}.get(answer, "ERR")
            return httpx.Response(answer, json={"error": {"code": code, "message": "injected"}})

        return respond

    def _notify(self, path: str) -> None:
        event = self._changed.pop(path, None)
        if event is not None:
            event.set()

    def _pending(self, sub: FakeSubscription) -> bool:
        return any(self.tail(p) > acked for p, acked in sub.acked.items())

    def _maybe_wake(self, sub: FakeSubscription, path: str | None = None) -> None:
        if sub.holder is None and not sub.wake_in_flight and self._pending(sub):
            sub.generation += 1
            sub.wake_id = f"w{sub.generation}"
            sub.wake_in_flight = True
            self.append(
                sub.wake_stream,
                {
                    "type": "wake",
                    "subscription_id": sub.id,
                    "stream": path,
                    "generation": sub.generation,
                    "ts": 0,
                },
            )

    @staticmethod
    def _error(status: int, code: str, **extra: Any) -> httpx.Response:
        return httpx.Response(status, json={"error": {"code": code, "message": code, **extra}})

    def _kind(self, request: httpx.Request) -> tuple[str, list[str]]:
        path = unquote(request.url.path)
        method = request.method
        if path == "/v1/runners":
            return "register", []
        if path.startswith("/v1/runners/"):
            rest = path[len("/v1/runners/") :].split("/")
            return rest[1] if len(rest) > 1 else "runner", rest
        prefix = "/v1/stream/__ds/subscriptions/"
        if path.startswith(prefix):
            rest = path[len(prefix) :].split("/")
            if len(rest) == 1:
                return f"{method.lower()}_subscription", rest
            return rest[1], rest
        stream = path[len("/v1/stream/") :]
        if method == "HEAD":
            return "probe", [stream]
        if request.url.params.get("live") == "sse":
            return "sse", [stream]
        return "read", [stream]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        kind, parts = self._kind(request)
        self.calls.append((kind, request))
        if self.down:
            raise httpx.ConnectError("connection refused")
        if kind in self._hanging:
            await anyio.sleep_forever()
        if kind in self._gates:
            await self._gates[kind].wait()
        if self._failures[kind]:
            return self._failures[kind].pop(0)()
        body = json.loads(request.content) if request.content else {}
        handler = getattr(self, f"_on_{kind}")
        response: httpx.Response = await handler(request, parts, body)
        return response

    async def _on_register(self, request: httpx.Request, parts: list[str], body: Any) -> Any:
        if not self.registry:
            return self._error(404, "NOT_FOUND")
        known = body["id"] in self.runners
        row = self.runners.setdefault(
            body["id"], {"id": body["id"], "wake_stream": None, "wake_stream_offset": None}
        )
        if body.get("wake_stream"):
            row["wake_stream"] = body["wake_stream"]
        return httpx.Response(200 if known else 201, json=row)

    async def _on_heartbeat(self, request: httpx.Request, parts: list[str], body: Any) -> Any:
        row = self.runners.get(parts[0])
        if row is None:
            return self._error(404, "RUNNER_NOT_FOUND")
        row["wake_stream_offset"] = body.get("wake_stream_offset")
        self.heartbeats.append(body)
        return httpx.Response(200, json=row)

    async def _on_probe(self, request: httpx.Request, parts: list[str], body: Any) -> Any:
        if parts[0] not in self.streams:
            return httpx.Response(404)
        return httpx.Response(
            200,
            headers={"Stream-Next-Offset": self.tail(parts[0]), "Content-Type": "application/json"},
        )

    async def _on_read(self, request: httpx.Request, parts: list[str], body: Any) -> Any:
        path = parts[0]
        if path not in self.streams:
            return self._error(404, "STREAM_NOT_FOUND")
        offset = request.url.params["offset"]
        items = [(o, v) for o, v in self.streams[path] if offset == "-1" or o > offset][:2]
        next_offset = items[-1][0] if items else self.tail(path)
        return httpx.Response(
            200,
            json=[v for _, v in items],
            headers={
                "Stream-Next-Offset": next_offset,
                "Stream-Up-To-Date": "true" if next_offset == self.tail(path) else "false",
            },
        )

    async def _on_sse(self, request: httpx.Request, parts: list[str], body: Any) -> Any:
        path = parts[0]
        if path not in self.streams:
            return self._error(404, "STREAM_NOT_FOUND")
        start = request.url.params["offset"]
        return httpx.Response(
            200,
            headers={"Content-Type": "text/event-stream"},
            content=self._sse_body(path, start),
        )

    async def _sse_body(self, path: str, offset: str) -> AsyncIterator[bytes]:
        generation = self._sse_generation
        self.sse_open += 1
        try:
            first = True
            while True:
                items = [(o, v) for o, v in self.streams[path] if offset == "-1" or o > offset]
                if items:
                    offset = items[-1][0]
                    yield f"event: data\ndata:{json.dumps([v for _, v in items])}\n\n".encode()
                if items or first:
                    offset = offset if offset != "-1" else self.tail(path)
                    control = {"streamNextOffset": offset, "streamCursor": "1", "upToDate": True}
                    yield f"event: control\ndata:{json.dumps(control)}\n\n".encode()
                first = False
                if generation != self._sse_generation:
                    self._closed_by_server()
                    return
                event = self._changed.setdefault(path, anyio.Event())
                await event.wait()
                if generation != self._sse_generation:
                    self._closed_by_server()
                    return
        finally:
            self.sse_open -= 1

    def _closed_by_server(self) -> None:
        """End an SSE body: a clean EOF, or a connection reset when the server went down."""
        if self.down:
            raise httpx.ReadError("connection reset by peer")

    async def _on_put_subscription(
        self, request: httpx.Request, parts: list[str], body: Any
    ) -> Any:
        sub_id = parts[0]
        if sub_id in self.subscriptions:
            return httpx.Response(200, json={"id": sub_id})
        self.subscribe(sub_id, list(body.get("streams", [])), body["wake_stream"])
        return httpx.Response(201, json={"id": sub_id})

    async def _on_claim(self, request: httpx.Request, parts: list[str], body: Any) -> Any:
        sub = self.subscriptions.get(parts[0])
        if sub is None:
            return self._error(404, "SUBSCRIPTION_NOT_FOUND")
        if sub.holder is not None:
            return self._error(
                409, "ALREADY_CLAIMED", current_holder=sub.holder, generation=sub.generation
            )
        if not self._pending(sub):
            return self._error(409, "NO_PENDING_WORK")
        if sub.wake_id is None:
            sub.generation += 1
            sub.wake_id = f"w{sub.generation}"
        sub.wake_in_flight = False
        return httpx.Response(
            200, json=self._grant(sub, body["worker"]), headers=self._confirm(request)
        )

    def _grant(self, sub: FakeSubscription, worker: str) -> dict[str, Any]:
        sub.holder = worker
        sub.token = f"tok{next(self._tokens)}"
        return {
            "wake_id": sub.wake_id,
            "generation": sub.generation,
            "token": sub.token,
            "streams": [
                {
                    "path": p,
                    "link_type": "explicit",
                    "acked_offset": acked,
                    "tail_offset": self.tail(p),
                    "has_pending": self.tail(p) > acked,
                }
                for p, acked in sub.acked.items()
            ],
            "lease_ttl_ms": sub.lease_ttl_ms,
        }

    def _confirm(self, request: httpx.Request) -> dict[str, str]:
        """Confirm claim-next when this fake speaks it and the request offered it."""
        offered = request.headers.get("pullwake-extensions", "")
        if self.claim_next and "claim-next" in offered:
            return {"pullwake-extensions": "claim-next"}
        return {}

    def _fenced(self, sub: FakeSubscription, request: httpx.Request, body: Any) -> Any:
        token = request.headers.get("authorization", "").partition(" ")[2]
        if sub.token is None or token != sub.token:
            return self._error(409, "FENCED")
        if body.get("generation") != sub.generation or body.get("wake_id") != sub.wake_id:
            return self._error(409, "FENCED")
        return None

    def expire(self, sub_id: str) -> None:
        """Expire the lease now (as the server's sweep would), re-waking pending work."""
        sub = self.subscriptions[sub_id]
        sub.holder = sub.token = sub.wake_id = None
        self._maybe_wake(sub)

    async def _on_ack(self, request: httpx.Request, parts: list[str], body: Any) -> Any:
        sub = self.subscriptions.get(parts[0])
        if sub is None:
            return self._error(404, "SUBSCRIPTION_NOT_FOUND")
        fenced = self._fenced(sub, request, body)
        if fenced is not None:
            return fenced
        for ack in body.get("acks", []):
            path, offset = ack["stream"], ack["offset"]
            if path not in sub.acked or offset < sub.acked[path] or offset > self.tail(path):
                return self._error(409, "INVALID_OFFSET")
        for ack in body.get("acks", []):
            sub.acked[ack["stream"]] = ack["offset"]
        next_wake = False
        confirm = self._confirm(request)
        if body.get("done"):
            sub.holder = sub.token = sub.wake_id = None
            worker = (body.get("claim_next") or {}).get("worker") if confirm else None
            if worker is not None and self._pending(sub):
                # claim-next: the next claim in the answer, and no wake event for it.
                sub.generation += 1
                sub.wake_id = f"w{sub.generation}"
                answer = {"ok": True, "next_wake": False, "next_claim": self._grant(sub, worker)}
                return httpx.Response(200, json=answer, headers=confirm)
            next_wake = self._pending(sub)
            self._maybe_wake(sub)
        return httpx.Response(200, json={"ok": True, "next_wake": next_wake}, headers=confirm)

    async def _on_release(self, request: httpx.Request, parts: list[str], body: Any) -> Any:
        sub = self.subscriptions.get(parts[0])
        if sub is None:
            return self._error(404, "SUBSCRIPTION_NOT_FOUND")
        fenced = self._fenced(sub, request, body)
        if fenced is not None:
            return fenced
        sub.holder = sub.token = sub.wake_id = None
        self._maybe_wake(sub)
        return httpx.Response(204)
