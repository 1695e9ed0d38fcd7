"""Assertions and small request sequences the server's HTTP tests share."""

from __future__ import annotations

import json
from typing import Any

import httpx

from pullwake.runtime import SubscriptionSpec
from pullwake.testing import subscription_body

JSON = {"content-type": "application/json"}
STREAMS = "/v1/stream"
SUBS = "/v1/stream/__ds/subscriptions"


def error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert ``response`` is a JSON error with ``status`` (and ``code``); return its body."""
    assert response.status_code == status, (response.status_code, response.text)
    if response.request.method == "HEAD":
        assert response.content == b""
        return {}
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    for field in ("code", "message"):
        assert isinstance(body["error"][field], str), body
        assert body["error"][field], body
    if code is not None:
        assert body["error"]["code"] == code, body
    return dict(body["error"])


async def json_stream(client: httpx.AsyncClient, path: str) -> str:
    """Create a JSON stream; return its tail offset."""
    response = await client.put(f"{STREAMS}/{path}", headers=JSON)
    assert response.status_code in (200, 201), response.text
    return response.headers["stream-next-offset"]


async def append_json(client: httpx.AsyncClient, path: str, *values: Any) -> str:
    """Append JSON values (one message each); return the new tail offset."""
    body = json.dumps(list(values))
    response = await client.post(f"{STREAMS}/{path}", headers=JSON, content=body)
    assert response.status_code == 204, response.text
    return response.headers["stream-next-offset"]


async def read_json(client: httpx.AsyncClient, path: str, offset: str = "-1") -> list[Any]:
    """Catch-up read of a JSON stream from ``offset``."""
    response = await client.get(f"{STREAMS}/{path}", params={"offset": offset})
    assert response.status_code == 200, response.text
    values = response.json()
    assert isinstance(values, list)
    return values


async def subscribe(
    client: httpx.AsyncClient,
    sub_id: str,
    *,
    wake_stream: str,
    pattern: str | None = None,
    streams: list[str] | None = None,
    lease_ttl_ms: int | None = None,
) -> dict[str, Any]:
    """Create (or confirm) a pull-wake subscription; return its view."""
    spec = SubscriptionSpec(
        sub_id, pattern=pattern, streams=streams or (), lease_ttl_ms=lease_ttl_ms
    )
    body = subscription_body(spec, wake_stream)
    response = await client.put(f"{SUBS}/{sub_id}", json=body)
    assert response.status_code in (200, 201), response.text
    view = response.json()
    assert isinstance(view, dict)
    return view


async def claim(client: httpx.AsyncClient, sub_id: str, worker: str) -> dict[str, Any]:
    """Claim a subscription's wake; return the claim."""
    response = await client.post(f"{SUBS}/{sub_id}/claim", json={"worker": worker})
    assert response.status_code == 200, response.text
    won = response.json()
    assert isinstance(won, dict)
    return won


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}
