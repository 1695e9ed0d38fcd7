"""Differential test: one scenario against pullwake and the Durable Streams reference server.

The same requests go to both servers (npm ``@durable-streams/server@0.3.7`` and a ``pullwake
server`` process); each step records what a client can rely on (status, the keys of a JSON
answer, the headers that matter, message payloads, error codes). The two records must match,
except where ``DELIBERATE`` says why pullwake answers differently (also in docs/server.md).

Offsets differ in format (opaque strings in both), so they are compared by role ("the tail",
"the offset the append returned"), never by value.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.servers import ReferenceServer, ServerFactory

pytestmark = pytest.mark.interop

JSON = {"content-type": "application/json"}

#: step -> (what the reference does, what pullwake does, why).
DELIBERATE: dict[str, tuple[Any, Any, str]] = {
    "put ../ path": (
        201,
        400,
        "pullwake refuses '..' segments in stream paths (path traversal); the reference "
        "creates a stream named with them",
    ),
    "put webhook subscription": (
        400,
        201,
        "pullwake serves webhook subscriptions (a loopback receiver is allowed while the server "
        "listens on loopback); the reference, as started here, says they are not enabled",
    ),
    "sse every data has its control": (
        False,
        True,
        "the spec asks for a control event after every data event; pullwake sends one data "
        "event per read batch and its control event, the reference sends one data event per "
        "message and a single control event after the batch",
    ),
}


class Recorder:
    """Send a step's requests and note what the answer shows."""

    def __init__(self, client: httpx.Client, ns: str) -> None:
        self.client = client
        self.ns = ns
        self.record: dict[str, Any] = {}

    def note(self, step: str, value: Any) -> None:
        assert step not in self.record, step
        self.record[step] = value


def json_shape(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        body = response.json()
    except ValueError:
        return "text"
    if isinstance(body, dict):
        return sorted(body)
    return type(body).__name__


def error_code(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def sse_until_up_to_date(client: httpx.Client, url: str, offset: str) -> Iterator[tuple[str, str]]:
    """Yield (event, data) pairs until the first control event that says up to date."""
    params = {"offset": offset, "live": "sse"}
    with client.stream("GET", url, params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event, data = "", []
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if line.startswith("event:"):
                event = line[len("event:") :].strip()
            elif line.startswith("data:"):
                value = line[len("data:") :]
                data.append(value[1:] if value.startswith(" ") else value)
            elif line == "" and event:
                payload = "\n".join(data)
                yield event, payload
                if event == "control" and json.loads(payload).get("upToDate"):
                    return
                event, data = "", []


def scenario(client: httpx.Client, ns: str) -> dict[str, Any]:
    """Run the scenario; return what each step showed."""
    r = Recorder(client, ns)
    base = f"/v1/stream/{ns}"
    subs = "/v1/stream/__ds/subscriptions"
    events, wake = f"{ns}/events/a", f"{ns}/wake"

    # Streams: create, confirm, conflict.
    created = client.put(f"{base}/events/a", headers=JSON)
    r.note(
        "put new",
        (
            created.status_code,
            created.headers.get("content-type"),
            "stream-next-offset" in created.headers,
        ),
    )
    r.note("put same", client.put(f"{base}/events/a", headers=JSON).status_code)
    r.note(
        "put other type",
        client.put(f"{base}/events/a", headers={"content-type": "text/plain"}).status_code,
    )
    r.note("put ../ path", client.put(f"{base}/x/%2E%2E/y", headers=JSON).status_code)
    r.note("put __ds", client.put("/v1/stream/__ds/x", headers=JSON).status_code)
    assert client.put(f"{base}/wake", headers=JSON).status_code == 201

    # Appends: JSON mode rules.
    r.note("post []", client.post(f"{base}/events/a", headers=JSON, content="[]").status_code)
    r.note(
        "post bad json", client.post(f"{base}/events/a", headers=JSON, content="{oops").status_code
    )
    r.note(
        "post wrong type",
        client.post(
            f"{base}/events/a", headers={"content-type": "text/plain"}, content="x"
        ).status_code,
    )
    r.note("post no type", client.post(f"{base}/events/a", content=b"1").status_code)
    r.note(
        "post missing stream", client.post(f"{base}/none", headers=JSON, content="1").status_code
    )
    appended = client.post(f"{base}/events/a", headers=JSON, content='[{"n":1},{"n":2}]')
    tail = appended.headers["stream-next-offset"]
    r.note("post batch", (appended.status_code, bool(tail)))
    r.note(
        "post with charset",
        client.post(
            f"{base}/events/a",
            headers={"content-type": "application/json; charset=utf-8"},
            content='{"n":3}',
        ).status_code,
    )
    tail = client.head(f"{base}/events/a").headers["stream-next-offset"]

    # Reads.
    read = client.get(f"{base}/events/a", params={"offset": "-1"})
    r.note(
        "get -1",
        (
            read.status_code,
            read.json(),
            read.headers.get("stream-up-to-date"),
            read.headers["stream-next-offset"] == tail,
        ),
    )
    at_tail = client.get(f"{base}/events/a", params={"offset": tail})
    r.note(
        "get at tail",
        (at_tail.status_code, at_tail.json(), at_tail.headers.get("stream-up-to-date")),
    )
    now = client.get(f"{base}/events/a", params={"offset": "now"})
    r.note(
        "get now",
        (
            now.status_code,
            now.json(),
            now.headers.get("stream-up-to-date"),
            now.headers.get("cache-control"),
            now.headers["stream-next-offset"] == tail,
        ),
    )
    r.note(
        "get garbage offset",
        client.get(f"{base}/events/a", params={"offset": "not/an&offset"}).status_code,
    )
    r.note(
        "long-poll without offset",
        client.get(f"{base}/events/a", params={"live": "long-poll"}).status_code,
    )
    poll = client.get(f"{base}/events/a", params={"offset": tail, "live": "long-poll"})
    r.note(
        "long-poll timeout",
        (
            poll.status_code,
            poll.headers.get("stream-up-to-date"),
            poll.headers.get("stream-next-offset") == tail,
            poll.headers.get("stream-cursor", "").isdigit(),
        ),
    )
    head = client.head(f"{base}/events/a")
    r.note(
        "head",
        (
            head.status_code,
            head.headers["stream-next-offset"] == tail,
            head.headers.get("cache-control"),
        ),
    )
    r.note("head missing", client.head(f"{base}/none").status_code)
    r.note("get missing", client.get(f"{base}/none").status_code)
    r.note("patch", client.request("PATCH", f"{base}/events/a").status_code)

    # SSE: catch-up; messages may be batched differently, so compare the flattened list.
    seen = list(sse_until_up_to_date(client, f"{base}/events/a", "-1"))
    messages = [m for kind, data in seen if kind == "data" for m in json.loads(data)]
    controls = [json.loads(data) for kind, data in seen if kind == "control"]
    r.note("sse messages", messages)
    r.note(
        "sse every data has its control",
        [kind for kind, _ in seen][1::2] == ["control"] * (len(seen) // 2),
    )
    r.note("sse control keys", sorted(controls[-1]))
    r.note("sse final offset is tail", controls[-1]["streamNextOffset"] == tail)
    now_events = list(sse_until_up_to_date(client, f"{base}/events/a", "now"))
    r.note(
        "sse now",
        [(kind, json.loads(data)["streamNextOffset"] == tail) for kind, data in now_events],
    )

    # Subscriptions.
    body = {"type": "pull-wake", "pattern": f"{ns}/events/*", "wake_stream": wake}
    put = client.put(f"{subs}/{ns}-s", json=body)
    r.note("put subscription", (put.status_code, sorted(set(put.json()) & REQUIRED_VIEW)))
    r.note("put subscription again", client.put(f"{subs}/{ns}-s", json=body).status_code)
    r.note(
        "put subscription changed",
        client.put(f"{subs}/{ns}-s", json={**body, "lease_ttl_ms": 5000}).status_code,
    )
    r.note(
        "put webhook subscription",
        client.put(
            f"{subs}/{ns}-h",
            json={"type": "webhook", "pattern": "x/*", "webhook": {"url": "http://127.0.0.1:9/"}},
        ).status_code,
    )
    r.note(
        "put subscription no wake",
        client.put(f"{subs}/{ns}-x", json={"type": "pull-wake", "pattern": "x/*"}).status_code,
    )
    view = client.get(f"{subs}/{ns}-s").json()
    r.note(
        "subscription view",
        (
            sorted(set(view) & REQUIRED_VIEW),
            view["streams"][0]["path"] == events,
            view["streams"][0]["link_type"],
            view["streams"][0]["acked_offset"] == tail,
        ),
    )
    r.note(
        "get missing subscription",
        (client.get(f"{subs}/{ns}-none").status_code, error_code(client.get(f"{subs}/{ns}-none"))),
    )
    nothing = client.post(f"{subs}/{ns}-s/claim", json={"worker": "w1"})
    r.note("claim with nothing pending", (nothing.status_code, error_code(nothing)))

    # A wake, a claim, fencing, acks.
    appended = client.post(f"{base}/events/a", headers=JSON, content='{"n":4}')
    new_tail = appended.headers["stream-next-offset"]
    wakes = client.get(f"/v1/stream/{wake}", params={"offset": "-1"}).json()
    r.note(
        "wake event",
        [
            (sorted(w), w["type"], w["subscription_id"] == f"{ns}-s", w["stream"] == events)
            for w in wakes
        ],
    )
    claim = client.post(f"{subs}/{ns}-s/claim", json={"worker": "w1"})
    won = claim.json()
    r.note(
        "claim",
        (
            claim.status_code,
            sorted(won),
            won["generation"] == wakes[0]["generation"],
            sorted(won["streams"][0]),
            won["streams"][0]["has_pending"],
            won["streams"][0]["tail_offset"] == new_tail,
        ),
    )
    busy = client.post(f"{subs}/{ns}-s/claim", json={"worker": "w2"})
    r.note(
        "claim while held",
        (
            busy.status_code,
            error_code(busy),
            busy.json()["error"].get("current_holder"),
            busy.json()["error"].get("generation") == won["generation"],
        ),
    )
    fence = {"wake_id": won["wake_id"], "generation": won["generation"]}
    auth = {"authorization": f"Bearer {won['token']}"}
    r.note("ack without token", client.post(f"{subs}/{ns}-s/ack", json=fence).status_code)
    r.note(
        "ack forged token",
        client.post(
            f"{subs}/{ns}-s/ack", json=fence, headers={"authorization": "Bearer forged"}
        ).status_code,
    )
    stale = client.post(
        f"{subs}/{ns}-s/ack", json={**fence, "generation": won["generation"] + 5}, headers=auth
    )
    r.note("ack stale generation", (stale.status_code, error_code(stale)))
    beyond = {**fence, "acks": [{"stream": events, "offset": "9" * len(new_tail)}]}
    r.note(
        "ack past tail", client.post(f"{subs}/{ns}-s/ack", json=beyond, headers=auth).status_code
    )
    r.note("ack without done", client.post(f"{subs}/{ns}-s/ack", json=fence, headers=auth).json())
    done = {**fence, "acks": [{"stream": events, "offset": new_tail}], "done": True}
    finished = client.post(f"{subs}/{ns}-s/ack", json=done, headers=auth)
    r.note("ack done", (finished.status_code, finished.json()))
    r.note("ack after done", client.post(f"{subs}/{ns}-s/ack", json=done, headers=auth).status_code)
    nothing = client.post(f"{subs}/{ns}-s/claim", json={"worker": "w1"})
    r.note("claim after done", (nothing.status_code, error_code(nothing)))

    # Release re-wakes.
    client.post(f"{base}/events/a", headers=JSON, content='{"n":5}')
    again = client.post(f"{subs}/{ns}-s/claim", json={"worker": "w2"}).json()
    released = client.post(
        f"{subs}/{ns}-s/release",
        json={"wake_id": again["wake_id"], "generation": again["generation"]},
        headers={"authorization": f"Bearer {again['token']}"},
    )
    wakes = client.get(f"/v1/stream/{wake}", params={"offset": "-1"}).json()
    r.note(
        "release", (released.status_code, len(wakes), wakes[-1]["generation"] > again["generation"])
    )

    # Explicit membership.
    client.put(f"{base}/solo", headers=JSON)
    r.note(
        "add streams",
        client.post(f"{subs}/{ns}-s/streams", json={"streams": [f"{ns}/solo"]}).status_code,
    )
    r.note("linked", sorted(s["link_type"] for s in client.get(f"{subs}/{ns}-s").json()["streams"]))
    r.note("remove stream", client.delete(f"{subs}/{ns}-s/streams/{ns}%2Fsolo").status_code)
    r.note(
        "add streams to missing",
        client.post(f"{subs}/{ns}-none/streams", json={"streams": ["a"]}).status_code,
    )

    # Deletes.
    r.note("delete subscription", client.delete(f"{subs}/{ns}-s").status_code)
    r.note("get deleted subscription", client.get(f"{subs}/{ns}-s").status_code)
    r.note(
        "claim deleted subscription",
        client.post(f"{subs}/{ns}-s/claim", json={"worker": "w"}).status_code,
    )
    r.note("delete subscription again", client.delete(f"{subs}/{ns}-s").status_code)
    r.note("delete stream", client.delete(f"{base}/events/a").status_code)
    r.note("get deleted stream", client.get(f"{base}/events/a").status_code)
    r.note("delete deleted stream", client.delete(f"{base}/events/a").status_code)
    return r.record


REQUIRED_VIEW = {
    "id",
    "subscription_id",
    "type",
    "pattern",
    "streams",
    "wake_stream",
    "lease_ttl_ms",
    "created_at",
    "status",
}


def test_pullwake_matches_the_reference_server(
    reference_server: ReferenceServer, server_factory: ServerFactory
) -> None:
    ours = server_factory(args=["--long-poll-timeout", "1"])
    ns = f"t{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=reference_server.url, timeout=15) as client:
        expected = scenario(client, ns)
    with httpx.Client(base_url=ours.url, timeout=15) as client:
        actual = scenario(client, ns)
    assert list(actual) == list(expected)
    differences = {}
    for step, theirs in expected.items():
        if step in DELIBERATE:
            reference_answer, our_answer, _why = DELIBERATE[step]
            assert theirs == reference_answer, (step, "the reference changed", theirs)
            assert actual[step] == our_answer, (step, actual[step])
        elif actual[step] != theirs:
            differences[step] = {"reference": theirs, "pullwake": actual[step]}
    assert differences == {}
