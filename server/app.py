"""Assemble the ASGI app: routes, error answers, metrics, and the shutdown switch.

Routes (docs/server.md has the full table):

* ``/v1/stream/__ds/subscriptions/{id}[/streams[/{path}]|/claim|/ack|/release]``: pull-wake
  subscriptions. Routed **before** ordinary streams; anything else under ``__ds`` is 404
  (webhook subscriptions: the callback route and the JWKS, see ``webhooks.py``).
* ``/v1/stream/{path}``: Durable Streams (PUT, POST, GET, HEAD, DELETE).
* ``/v1/runners``, ``/v1/runners/{id}[/heartbeat|/health]``: the runner registry.
* ``/healthz`` (liveness of the server itself) and ``/metrics`` (Prometheus).

Every error is ``{"error": {"code", "message", ...}}``. A ``ServerError`` becomes its own
status; routing misses become 404/405; anything unexpected is logged with its traceback and
answered 500 ``INTERNAL`` (tests treat that as a bug). Responses to ``HEAD`` never carry a body.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pullwake.server import runners, streams, subscriptions
from pullwake.server.auth import Authenticator, Policy
from pullwake.server.bodies import DRAIN_LIMIT
from pullwake.server.config import ServerConfig
from pullwake.server.context import AppContext, context_of, wall_clock_ms
from pullwake.server.errors import ServerError
from pullwake.server.headers import PREFLIGHT_HEADERS, SECURITY_HEADERS
from pullwake.server.limits import BODY_READY, receive_before
from pullwake.server.metrics import Metrics
from pullwake.server.shutdown import ShutdownSignal
from pullwake.server.store.base import Store

log = logging.getLogger("pullwake.server")
#: One DEBUG line per answered request (method, path, status, milliseconds).
access_log = logging.getLogger("pullwake.server.access")

SUBSCRIPTIONS = "/v1/stream/__ds/subscriptions/{sub_id}"
_ALL_METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]
_STATUS_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


def error_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServerError)
    headers = {"www-authenticate": "Bearer"} if exc.status == 401 else {}
    headers.update(exc.headers)
    if exc.status == 405:
        headers["allow"] = str(exc.extra.pop("allow", ""))
    if exc.status == 408:
        headers["connection"] = "close"
    if exc.status >= 500:
        log.warning("answering %s %s: %s", exc.status, exc.code, exc.message)
    return error_response(exc.status, exc.body(), headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _STATUS_CODES.get(exc.status_code, "HTTP_ERROR")
    if exc.status_code == 404:
        message = f"No route for {request.url.path[:200]!r}; see docs/server.md for the routes."
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on this route; use one of: {allowed}."
    else:
        message = str(exc.detail)
    return error_response(
        exc.status_code, {"error": {"code": code, "message": message}}, dict(exc.headers or {})
    )


class Envelope:
    """The one middleware around every request (one layer, since each wrapper of ``send``
    costs CPU on every message; see docs/performance.md):

    * **errors**: any unexpected exception becomes a logged JSON 500 (counted in metrics);
    * **browser headers**: every answer carries the security and CORS headers of
      ``headers.py``, and a CORS preflight is answered 204 here, before routing;
    * **HEAD**: answers carry no body;
    * **metrics**: every answer is counted by route template (never the raw path: it would
      explode the labels), and timed unless it is an SSE stream;
    * **body deadline**: until the request body is complete, ``receive`` is bounded by
      ``body_timeout`` (``limits.receive_before``), so a stalled body cannot hold a task;
    * **draining**: before an answer's last body message, whatever is left of the request body
      is read (bounded). Hypercorn keeps a connection alive only when the request was fully
      received by the time the answer's last byte is sent; otherwise it closes the connection
      without saying so (no ``Connection: close``), and a client that reuses it sees "server
      disconnected". Answering before reading the body is common here (401, 404, 405, 413).
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        drain_timeout: float = 5.0,
        body_timeout: float = math.inf,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.drain_timeout = drain_timeout
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and any(
            name == b"access-control-request-method" for name, _ in scope["headers"]
        ):
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [*SECURITY_HEADERS, *PREFLIGHT_HEADERS],
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.metrics.count_request("preflight", "OPTIONS", 204)
            return
        began = time.perf_counter()
        is_head = scope["method"] == "HEAD"
        status = 500
        streaming = started = received_all = False
        body_deadline = anyio.current_time() + self.body_timeout
        body_ready: Callable[[], bool] | None = scope.get(BODY_READY)

        async def tracked_receive() -> Message:
            nonlocal received_all
            if received_all:
                return await receive()
            if body_ready is not None and body_ready():
                # Buffered already: this receive cannot wait, so it needs no deadline (a
                # cancel scope costs ~8 µs per receive on asyncio, measured).
                message = await receive()
            else:
                # The body must be in by its deadline (limits.py); answers are never bounded.
                message = await receive_before(receive, body_deadline, scope)
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                received_all = True
            return message

        async def enveloped_send(message: Message) -> None:
            nonlocal status, streaming, started
            kind = message["type"]
            if kind == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                for name, value in headers:
                    if name == b"content-type":
                        streaming = value.startswith(b"text/event-stream")
                        break
                message = {**message, "headers": headers + list(SECURITY_HEADERS)}
            elif kind == "http.response.body":
                if is_head and message.get("body"):
                    message = {**message, "body": b""}
                if not message.get("more_body", False) and not received_all:
                    drained = 0
                    with anyio.move_on_after(self.drain_timeout):
                        while not received_all and drained <= DRAIN_LIMIT:
                            drained += len((await tracked_receive()).get("body", b""))
            await send(message)

        try:
            await self.app(scope, tracked_receive, enveloped_send)
        except Exception:
            self.metrics.unexpected_errors.inc()
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            if not started:
                response = error_response(
                    500,
                    {
                        "error": {
                            "code": "INTERNAL",
                            "message": "The server hit an unexpected error (logged); this is a "
                            "bug in pullwake, please report it.",
                        }
                    },
                )
                await response(scope, tracked_receive, enveloped_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.count_request(template, method, status)
            if not streaming:
                self.metrics.time_request(template, method, time.perf_counter() - began)
            if access_log.isEnabledFor(logging.DEBUG):
                access_log.debug(
                    "%s %s %s %.1f ms",
                    method,
                    scope["path"],
                    status,
                    (time.perf_counter() - began) * 1000,
                    extra={"status": status},
                )


async def healthz(request: Request) -> Response:
    """Say whether this server process is up (503 while shutting down)."""
    ctx = context_of(request)
    if ctx.shutdown.started:
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def metrics_endpoint(request: Request) -> Response:
    """Expose Prometheus metrics (admin token needed when auth is on)."""
    ctx = context_of(request)
    principal = ctx.auth.authenticate(request.headers)
    ctx.policy.require_admin(principal, "read metrics")
    return Response(ctx.metrics.exposition(), headers={"content-type": CONTENT_TYPE_LATEST})


def _routes() -> list[Route]:
    return [
        Route(f"{SUBSCRIPTIONS}", subscriptions.put, methods=["PUT"]),
        Route(f"{SUBSCRIPTIONS}", subscriptions.get, methods=["GET"]),
        Route(f"{SUBSCRIPTIONS}", subscriptions.delete, methods=["DELETE"]),
        Route(f"{SUBSCRIPTIONS}/streams", subscriptions.add_streams, methods=["POST"]),
        Route(
            f"{SUBSCRIPTIONS}/streams/{{path:path}}",
            subscriptions.remove_stream,
            methods=["DELETE"],
        ),
        Route(f"{SUBSCRIPTIONS}/claim", subscriptions.claim, methods=["POST"]),
        Route(f"{SUBSCRIPTIONS}/ack", subscriptions.ack, methods=["POST"]),
        Route(f"{SUBSCRIPTIONS}/release", subscriptions.release, methods=["POST"]),
        Route(f"{SUBSCRIPTIONS}/callback", subscriptions.callback, methods=["POST"]),
        Route("/v1/stream/__ds/jwks.json", subscriptions.jwks, methods=["GET"]),
        Route("/v1/stream/__ds", subscriptions.reserved, methods=_ALL_METHODS),
        Route("/v1/stream/__ds/{rest:path}", subscriptions.reserved, methods=_ALL_METHODS),
        Route(
            "/v1/stream/{path:path}",
            streams.stream_endpoint,
            methods=["PUT", "POST", "GET", "HEAD", "DELETE"],
        ),
        Route("/v1/runners", runners.register, methods=["POST"]),
        Route("/v1/runners/{runner_id}", runners.show, methods=["GET"]),
        Route("/v1/runners/{runner_id}/heartbeat", runners.heartbeat, methods=["POST"]),
        Route("/v1/runners/{runner_id}/health", runners.health, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]


class PrefixRouter(Router):
    """Starlette's router, asking only the routes that can match the path.

    Starlette asks every route in order (a regex match, a scope dict and a method check
    each): dispatching to a stub handler took 12.4 µs there and 4.9 µs here for a stream
    append (the 13th of these 20 routes), 19.5 vs 10.5 µs for a claim, 22.2 vs 13.5 µs for
    an ack (min of 7 rounds of 2,000 requests each, in one run).
    A route's regex starts with the literal text before its first ``{``, ends with the text
    after its last ``}``, and holds as many ``/`` as its template (at least as many with a
    ``:path`` parameter), so a path that breaks one of those cannot match it, not even
    partially (405): skipping those routes keeps Starlette's order and answers exactly.
    ``redirect_slashes`` is not served (this app turns it off).
    """

    def __init__(self, routes: list[Route]) -> None:
        super().__init__(routes, redirect_slashes=False)
        self._bounds = [
            (
                route,
                route.path.split("{", 1)[0],
                route.path.rsplit("}", 1)[-1],
                route.path.count("/"),
                ":path}" not in route.path,
            )
            for route in routes
        ]

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await super().app(scope, receive, send)  # served behind a path prefix: as is
            return
        if "router" not in scope:
            scope["router"] = self
        path = scope["path"]
        partial: tuple[Route, Scope] | None = None
        slashes = path.count("/")
        for route, prefix, suffix, route_slashes, exact in self._bounds:
            if (
                (slashes != route_slashes if exact else slashes < route_slashes)
                or not path.startswith(prefix)
                or not path.endswith(suffix)
            ):
                continue
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["route"] = route
                scope.update(child_scope)
                await route.handle(scope, receive, send)
                return
            if match is Match.PARTIAL and partial is None:
                partial = (route, child_scope)
        if partial is not None:
            route, child_scope = partial
            scope["route"] = route
            scope.update(child_scope)
            await route.handle(scope, receive, send)
            return
        await self.default(scope, receive, send)


def create_app(
    store: Store, config: ServerConfig, *, clock: Callable[[], int] = wall_clock_ms
) -> Starlette:
    """Build the app around an **opened** store; the caller owns the store's lifetime.

    ``clock`` (epoch ms) is what leases and health are judged by; tests pass a fake one.
    """
    metrics = Metrics()
    ctx = AppContext(
        store=store,
        config=config,
        auth=Authenticator.from_config(config),
        policy=Policy(store, clock),
        shutdown=ShutdownSignal(),
        metrics=metrics,
        clock=clock,
    )
    app = Starlette(
        middleware=[Middleware(Envelope, metrics=metrics, body_timeout=config.body_timeout)],
        exception_handlers={ServerError: _server_error, HTTPException: _http_error},
    )
    app.router = PrefixRouter(_routes())
    app.state.ctx = ctx
    return app


def begin_shutdown(app: Starlette) -> None:
    """End every open SSE stream and long-poll now (final control event, then EOF)."""
    ctx = app.state.ctx
    assert isinstance(ctx, AppContext)
    ctx.shutdown.begin()
