"""A small producer and admin client for a Durable Streams server, over httpx.

:class:`AdminClient` creates streams, appends, reads, and puts subscriptions, raising on any
answer it did not expect, so a test or benchmark says in one line what it sets up. It is not a
reliable producer (no retries, no de-duplication): for that see
:class:`pullwake.testing.e2e.cluster.Producer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

import attrs
import httpx

from pullwake.runtime import SubscriptionSpec

__all__ = ["JSON_TYPE", "SUBSCRIPTIONS_PATH", "AdminClient", "ReadResult"]

JSON_TYPE = "application/json"
#: Where a server keeps its subscriptions (each at ``<this>/<id>``).
SUBSCRIPTIONS_PATH = "/v1/stream/__ds/subscriptions"


@attrs.frozen
class ReadResult:
    """What one catch-up read returned."""

    messages: list[Any]
    next_offset: str
    up_to_date: bool


class AdminClient:
    """Talk to the server at ``base_url``; ``async with`` it (or :meth:`aclose` it).

    ``token``, when given, is sent as a bearer token on every request.
    """

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 5.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers)

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    async def create_stream(self, path: str, *, content_type: str = JSON_TYPE) -> None:
        """Create the stream at ``path`` (idempotent: an existing one is fine)."""
        response = await self.http.put(f"/v1/stream/{path}", headers={"Content-Type": content_type})
        response.raise_for_status()

    async def append(self, path: str, message: Any) -> str:
        """Append one JSON message to ``path``; return the stream's next offset."""
        response = await self.http.post(
            f"/v1/stream/{path}", json=message, headers={"Content-Type": JSON_TYPE}
        )
        response.raise_for_status()
        return str(response.headers.get("Stream-Next-Offset", ""))

    async def read(self, path: str, offset: str = "-1") -> ReadResult:
        """Read the JSON messages of ``path`` after ``offset`` (one catch-up answer)."""
        response = await self.http.get(f"/v1/stream/{path}", params={"offset": offset})
        response.raise_for_status()
        up_to_date = response.headers.get("Stream-Up-To-Date", "").lower() == "true"
        return ReadResult(response.json(), response.headers["Stream-Next-Offset"], up_to_date)

    async def read_all(self, path: str, *, limit: int = 10_000) -> list[Any]:
        """Read every JSON message of ``path`` from the start (at most ``limit`` answers)."""
        messages: list[Any] = []
        offset = "-1"
        for _ in range(limit):
            result = await self.read(path, offset)
            messages.extend(result.messages)
            offset = result.next_offset
            if result.up_to_date:
                return messages
        raise RuntimeError(f"{path} was not read to its tail in {limit} answers")

    async def tail(self, path: str) -> str:
        """Return the next offset of ``path`` (a HEAD request)."""
        response = await self.http.head(f"/v1/stream/{path}")
        response.raise_for_status()
        return response.headers["Stream-Next-Offset"]

    async def put_subscription(self, spec: SubscriptionSpec, wake_stream: str = "") -> Any:
        """Create (or replace) the pull-wake subscription ``spec``; return the server's view.

        ``wake_stream`` is used when ``spec`` names none (as a runner uses its own).
        """
        body = subscription_body(spec, wake_stream)
        response = await self.http.put(f"{SUBSCRIPTIONS_PATH}/{spec.id}", json=body)
        response.raise_for_status()
        return response.json()

    async def subscription(self, sub_id: str) -> Any:
        """Return the server's view of subscription ``sub_id``."""
        response = await self.http.get(f"{SUBSCRIPTIONS_PATH}/{sub_id}")
        response.raise_for_status()
        return response.json()


def subscription_body(spec: SubscriptionSpec, wake_stream: str = "") -> dict[str, Any]:
    """Return the complete PUT body of ``spec``: its own body plus ``"type": "pull-wake"``."""
    wake = spec.wake_stream or wake_stream
    if not wake:
        raise ValueError(f"subscription {spec.id!r} names no wake stream; pass wake_stream")
    body: Mapping[str, Any] = spec.body(wake)
    return {"type": "pull-wake", **body}
