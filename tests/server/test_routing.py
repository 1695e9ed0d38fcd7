"""The app's router (``app.PrefixRouter``) picks the same route as Starlette's own router for
every path and method: the same handler, or the same 404 or 405 (with the same ``Allow``). It
only skips routes that cannot match; this checks that over variants of every route."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import Message

from pullwake.server.app import _ALL_METHODS, PrefixRouter, _routes

pytestmark = pytest.mark.anyio


def recording_routes(calls: list[int]) -> list[Route]:
    """The app's routes, each answering with its own index instead of its handler."""

    def endpoint(index: int) -> Any:
        async def answer(request: Request) -> Response:
            calls.append(index)
            return Response(str(request.path_params))

        return answer

    return [
        Route(route.path, endpoint(i), methods=route.methods) for i, route in enumerate(_routes())
    ]


def paths() -> list[str]:
    """Each route's path with sample values, and near misses of each."""
    found = {"/", "", "/v1", "/v1/", "/v1/stream", "/v1/stream/", "/nope", "/healthz/"}
    for route in _routes():
        sample = (
            route.path.replace("{sub_id}", "s-1")
            .replace("{runner_id}", "r1")
            .replace("{path:path}", "a/b%2Fc")
            .replace("{rest:path}", "x/y")
        )
        found.update(
            {
                sample,
                sample + "/",
                sample + "/extra",
                sample.rsplit("/", 1)[0],
                sample.replace("s-1", "s/1"),
                sample.replace("s-1", ""),
                sample.upper(),
            }
        )
    return sorted(found)


async def outcome(router: Router, calls: list[int], path: str, method: str) -> tuple[Any, ...]:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "app": object(),  # so a miss raises HTTPException, as under Starlette's app
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    calls.clear()
    try:
        await router(scope, receive, send)
    except HTTPException as exc:
        return ("error", exc.status_code, (exc.headers or {}).get("Allow"))
    return ("route", tuple(calls), scope.get("path_params"), scope["route"].path)


async def test_the_prefix_router_routes_like_starlette() -> None:
    calls: list[int] = []
    starlette_router = Router(recording_routes(calls), redirect_slashes=False)
    ours = PrefixRouter(recording_routes(calls))
    kinds = set()
    for path in paths():
        for method in _ALL_METHODS:
            expected = await outcome(starlette_router, calls, path, method)
            assert await outcome(ours, calls, path, method) == expected, (method, path)
            kinds.add(expected[:2] if expected[0] == "error" else expected[0])
    # Every kind of answer was among the cases: a handler, a 404 and a 405.
    assert kinds == {"route", ("error", 404), ("error", 405)}
