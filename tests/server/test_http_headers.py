"""Browser security and CORS headers on every answer, the CORS preflight, and SSE line framing
(on SQLite and PostgreSQL, asyncio and trio, in process)."""

from __future__ import annotations

import httpx
import pytest

from pullwake.server.sse import encode_event
from pullwake.server.store import Store
from tests.fixtures.servers import app_client

pytestmark = pytest.mark.anyio

STREAMS = "/v1/stream"
TEXT = {"content-type": "text/plain"}


def _assert_browser_headers(headers: httpx.Headers) -> None:
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("cross-origin-resource-policy") == "cross-origin"
    assert headers.get("access-control-allow-origin") == "*"
    exposed = headers["access-control-expose-headers"]
    assert "stream-next-offset" in exposed
    assert "producer-epoch" in exposed


async def test_every_answer_carries_the_browser_headers(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        answers = [
            await client.put(f"{STREAMS}/h", headers=TEXT),
            await client.post(f"{STREAMS}/h", headers=TEXT, content="x"),
            await client.get(f"{STREAMS}/h"),
            await client.head(f"{STREAMS}/h"),
            await client.get(f"{STREAMS}/missing"),  # 404
            await client.post(f"{STREAMS}/h", headers=TEXT, content=""),  # 400
            await client.get("/nowhere"),  # routing miss
        ]
        assert [a.status_code for a in answers] == [201, 204, 200, 200, 404, 400, 404]
        for answer in answers:
            _assert_browser_headers(answer.headers)


async def test_a_preflight_is_answered_on_any_path(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        for path in (f"{STREAMS}/not-yet-created", f"{STREAMS}/__ds/subscriptions/s/ack"):
            response = await client.options(
                path,
                headers={
                    "origin": "https://example.com",
                    "access-control-request-method": "GET",
                    "access-control-request-headers": "if-none-match",
                },
            )
            assert response.status_code == 204
            _assert_browser_headers(response.headers)
            allowed = response.headers["access-control-allow-headers"].split(", ")
            assert {"if-none-match", "authorization", "producer-seq", "stream-seq"} <= set(allowed)
            assert "POST" in response.headers["access-control-allow-methods"]
        # An OPTIONS that is not a preflight is routed as usual (no route serves it).
        plain = await client.options(f"{STREAMS}/x")
        assert plain.status_code == 405
        assert plain.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_sse_data_lines_follow_the_colon_and_keep_a_leading_space() -> None:
    framed = encode_event("data", "line1\nline2\r\n  indented\rlast")
    assert framed == (b"event: data\ndata:line1\ndata:line2\ndata:   indented\ndata:last\n\n")
