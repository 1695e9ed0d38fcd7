"""A Starlette app that runs a runner for as long as it serves, under uvicorn.

    pip install 'pullwake[server]'                # Starlette and uvicorn (or install them alone)
    pullwake server &
    python examples/starlette_app.py              # the app on 127.0.0.1:8000
    curl -s 127.0.0.1:8000/runner/health
    pullwake stream create orders/web
    pullwake stream append orders/web '{"order": 7}'
    curl -s 127.0.0.1:8000/handled

The runner starts in the lifespan and lives on ``app.state``; leaving the lifespan (Ctrl-C,
SIGTERM) stops it cleanly. FastAPI takes the same ``lifespan=``; ``uvicorn
examples.starlette_app:app`` or ``hypercorn examples.starlette_app:app`` serve it too.
Environment: ``PULLWAKE_URL`` (default ``http://127.0.0.1:4437``), ``EXAMPLE_PORT`` (default
8000), ``EXAMPLE_MESSAGES`` (shut the app down after that many messages; the tests use it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pullwake.runtime import Claim, Runner, SubscriptionSpec

URL = os.environ.get("PULLWAKE_URL", "http://127.0.0.1:4437")
PORT = int(os.environ.get("EXAMPLE_PORT", "8000"))
LIMIT = int(os.environ.get("EXAMPLE_MESSAGES", "0"))

#: What the handler saw, for the /handled route (a real app would write to its database).
handled: list[Any] = []
#: The uvicorn server, when this module runs it (so the handler can end it in test mode).
server: uvicorn.Server | None = None


async def handle(claim: Claim) -> None:
    for stream in claim.pending_streams:
        async for message in claim.messages(stream.path):
            handled.append(message)
    if LIMIT and len(handled) >= LIMIT and server is not None:
        server.should_exit = True


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    runner = Runner(
        URL,
        runner_id="web-1",
        handler=handle,
        wake_stream="wake/web-1",
        subscriptions=[SubscriptionSpec("web-orders", pattern="orders/*")],
    )
    async with runner:
        app.state.runner = runner
        yield


async def runner_health(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.runner.health())


async def handled_messages(request: Request) -> JSONResponse:
    return JSONResponse(handled)


app = Starlette(
    routes=[Route("/runner/health", runner_health), Route("/handled", handled_messages)],
    lifespan=lifespan,
)


if __name__ == "__main__":
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=PORT, log_level="info"))
    server.run()
