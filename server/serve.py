"""Run the wake server: open the store, serve over HTTP, sweep leases, stop cleanly.

Theory of operation
-------------------
:func:`serve` runs on whatever anyio backend it is called from. The HTTP server under the app is
uvicorn (with httptools) on asyncio and hypercorn on trio, unless ``ServerConfig.http`` names
one: uvicorn costs about 40 % less CPU per request (docs/performance.md) but runs on asyncio
only; hypercorn has an asyncio and a trio flavour. :func:`serve` binds the listening socket
itself, so ``port=0`` yields a real port before anything is announced, then prints one line,
``pullwake server listening on http://HOST:PORT``, that scripts and tests wait for.

Four tasks run side by side: the HTTP server, the webhook delivery loop (``webhooks.py``),
the lease sweeper (every ``lease_sweep_interval``
seconds it clears expired claim leases and re-wakes pending work, and removes streams whose TTL
or expiry passed; with several processes on one
PostgreSQL each sweeps, and the store's transactions make that safe), and the signal watcher.

Shutdown on SIGINT or SIGTERM: first every SSE stream and long-poll is told to finish (a final
control event, then EOF; see ``shutdown.py``), then the HTTP server stops accepting and gives
open connections at most ``shutdown_grace`` seconds, then the store closes. The first signal's
log line says how many connections it waits for and how long. A second signal forces the stop:
every task is cancelled (open requests are cut, their clients see the connection close), the
store still closes, and :func:`serve` returns True (``pullwake server`` exits 130).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

import anyio
import sniffio
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette

from pullwake.server import limits
from pullwake.server.app import begin_shutdown, create_app
from pullwake.server.auth import require_safe_bind
from pullwake.server.config import ServerConfig
from pullwake.server.context import AppContext, wall_clock_ms
from pullwake.server.errors import UnsupportedHttpServer
from pullwake.server.events import log_banner, log_lease_expired
from pullwake.server.store.base import Store
from pullwake.server.webhooks import deliver_webhooks, is_loopback_host

log = logging.getLogger("pullwake.server")

LISTENING_PREFIX = "pullwake server listening on "

#: Seconds a forced stop (a second signal) leaves uvicorn to close its connections before
#: every task is cancelled.
FORCE_BOUND = 2.0


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` (``port`` 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host.strip("[]"), port))
        # A deep backlog: a burst of connections queues instead of being dropped (SYN retry
        # costs the client a second or more); the kernel clips it to net.core.somaxconn.
        sock.listen(4096)
    except BaseException:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    return f"http://{shown}:{port}"


def hypercorn_config(
    config: ServerConfig, sock: socket.socket, gate: limits.ConnectionGate | None = None
) -> HypercornConfig:
    """Configure hypercorn to serve on an already-bound socket (handed over by fd).

    hypercorn's keep-alive timer runs from a connection's start (or its last answer) until a
    request's head is complete, so it is both the idle and the head deadline here
    (``limits.hypercorn_keep_alive``). On trio the connection cap is the ``gate``.
    """
    hyper = HypercornConfig()
    hyper.bind = [f"fd://{sock.detach()}"]
    hyper.graceful_timeout = config.shutdown_grace
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("pullwake.server.hypercorn")
    hyper.include_server_header = False
    hyper.keep_alive_timeout = limits.hypercorn_keep_alive(config.idle_timeout, config.head_timeout)
    if gate is not None:
        limits.install_hypercorn_cap()
        # Read by the capped server (limits.install_hypercorn_cap).
        setattr(hyper, "pullwake_gate", gate)  # noqa: B010
    return hyper


async def sweep_leases(app: Starlette, interval: float) -> None:
    """Clear expired claim leases and remove expired streams every ``interval`` seconds
    (store errors are logged)."""
    ctx = app.state.ctx
    assert isinstance(ctx, AppContext)
    while True:
        await anyio.sleep(interval)
        try:
            expired = await ctx.store.expire_leases(ctx.clock())
        except Exception:
            log.exception("lease sweep failed; retrying in %.1f s", interval)
            continue
        if expired:
            ctx.metrics.leases_expired.inc(len(expired))
            for lease in expired:
                log_lease_expired(lease)
        try:
            # Expired streams are already invisible (the rules check deadlines on access);
            # this removes them and their links, as a DELETE would.
            removed = await ctx.store.expire_streams(ctx.clock())
        except Exception:
            log.exception("stream expiry sweep failed; retrying in %.1f s", interval)
            continue
        if removed:
            log.info("removed %d expired stream(s)", removed)


async def deliver_app_webhooks(app: Starlette, base_url: str) -> None:
    """Deliver the app's webhook wakes (``webhooks.py``), with ``base_url`` in callbacks."""
    ctx = app.state.ctx
    assert isinstance(ctx, AppContext)
    await deliver_webhooks(
        ctx.store, base_url, ctx.clock, allow_loopback=is_loopback_host(ctx.config.host)
    )


async def _hypercorn_serve(
    app: Starlette, hyper: HypercornConfig, shutdown_trigger: Callable[[], object]
) -> None:
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve as trio_serve

        await trio_serve(app, hyper, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]
    else:
        from hypercorn.asyncio import serve as asyncio_serve

        await asyncio_serve(app, hyper, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]


def http_server_for(config: ServerConfig) -> str:
    """Name the HTTP server to run under the current async backend (``UnsupportedHttpServer``
    when the configuration asks for uvicorn on trio)."""
    on_trio = sniffio.current_async_library() == "trio"
    if config.http == "hypercorn" or (config.http == "auto" and on_trio):
        return "hypercorn"
    if on_trio:
        raise UnsupportedHttpServer(
            "uvicorn runs on asyncio only: use http='hypercorn' (or 'auto') on trio"
        )
    return "uvicorn"


async def serve_app(
    app: Starlette,
    config: ServerConfig,
    *,
    announce: Callable[[str], None] | None = None,
    handle_signals: bool = True,
    stop: anyio.Event | None = None,
) -> bool:
    """Serve ``app`` until a signal (or ``stop``) arrives, then shut down gracefully.

    Return True when a second signal forced the stop (open connections were cut).
    """
    require_safe_bind(config)
    http = http_server_for(config)
    fd_soft, _ = limits.raise_fd_limit()
    gate = limits.ConnectionGate(limits.effective_cap(config.max_connections, fd_soft))
    sock = bind_socket(config.host, config.port)
    url = url_of(sock, config.host)
    log_banner(url, config, http)
    stopping = anyio.Event()
    forcing = anyio.Event()
    forced = False
    # The gate counts connections under uvicorn and trio's hypercorn, not asyncio's hypercorn.
    counted = http == "uvicorn" or sniffio.current_async_library() == "trio"

    def connections() -> str:
        return f"{gate.open} open connection(s)" if counted else "open connections"

    def begin(reason: str) -> None:
        if not stopping.is_set():
            log.info(
                "%s: stopping: closing SSE streams and long-polls; %s get up to %s s to finish%s",
                reason,
                connections(),
                f"{config.shutdown_grace:g}",
                " (press Ctrl-C again to force)" if handle_signals else "",
            )
            begin_shutdown(app)
            stopping.set()

    async with anyio.create_task_group() as tg:
        if handle_signals:

            async def watch_signals() -> None:
                nonlocal forced
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if stopping.is_set():
                            # The operator does not want to wait: cut every connection now.
                            log.warning(
                                "%s again: forcing the stop: cutting %s",
                                name,
                                connections(),
                            )
                            forced = True
                            forcing.set()
                            if http == "uvicorn":
                                # uvicorn closes its connections itself (no tracebacks);
                                # whatever is left after the bound is cancelled.
                                tg.cancel_scope.deadline = anyio.current_time() + FORCE_BOUND
                            elif counted:
                                # trio's hypercorn runs its connections in this task group.
                                tg.cancel_scope.cancel(reason="forced stop")
                            else:
                                # asyncio's hypercorn cannot be cancelled while it waits for
                                # its connections (worker_serve raises InvalidStateError) and
                                # has no way to shorten that wait: leave now. Committed writes
                                # are durable; the database connections simply drop.
                                log.warning("pullwake server stopped (forced)")
                                logging.shutdown()
                                os._exit(130)
                            return
                        begin(name)

            tg.start_soon(watch_signals)
        if stop is not None:

            async def watch_stop() -> None:
                await stop.wait()
                begin("stop requested")

            tg.start_soon(watch_stop)
        tg.start_soon(sweep_leases, app, config.lease_sweep_interval)
        tg.start_soon(deliver_app_webhooks, app, url)
        (announce or _print_listening)(url)

        async def run_http() -> None:
            # In a task of its own: hypercorn's asyncio flavour leaves an unbalanced cancel
            # request on the task that ran it, which would otherwise leak into this group.
            if http == "uvicorn":
                from pullwake.server.http_uvicorn import serve_uvicorn

                await serve_uvicorn(app, config, sock, stopping.wait, gate, forcing.wait)
            else:
                hyper = hypercorn_config(config, sock, gate)
                await _hypercorn_serve(app, hyper, stopping.wait)
            tg.cancel_scope.cancel()

        tg.start_soon(run_http)
    log.info("pullwake server stopped%s", " (forced)" if forced else "")
    return forced


def _print_listening(url: str) -> None:
    print(f"{LISTENING_PREFIX}{url}", flush=True)
    log.info("listening on %s", url)


async def serve(
    config: ServerConfig,
    *,
    store: Store | None = None,
    announce: Callable[[str], None] | None = None,
    handle_signals: bool = True,
    stop: anyio.Event | None = None,
) -> bool:
    """Open the store named by ``config.database_url`` (unless given), serve, close it.

    Return True when a second signal forced the stop (see :func:`serve_app`).
    """
    require_safe_bind(config)
    if store is None:
        from pullwake.server.store import open_store

        # On PostgreSQL every replica judges leases by the database's clock.
        store = open_store(config.database_url, database_clock=True)
    await store.open()
    try:
        app = create_app(store, config, clock=wall_clock_ms)
        return await serve_app(
            app, config, announce=announce, handle_signals=handle_signals, stop=stop
        )
    finally:
        with anyio.CancelScope(shield=True):
            await store.aclose()
        sys.stdout.flush()
