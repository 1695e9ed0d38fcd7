"""Webhook subscriptions: signing, the URL rule, the persisted key, and delivery to a real
receiver on 127.0.0.1 (SQLite and PostgreSQL, asyncio and trio)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import httpx
import pytest
from anyio.abc import SocketStream
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pullwake.server.errors import BadRequest
from pullwake.server.store import Store, open_store
from pullwake.server.webhooks import (
    WebhookDelivery,
    WebhookSigner,
    check_webhook_url,
    is_loopback_host,
    load_signer,
    new_seed,
)
from tests.fixtures.servers import FakeClock, app_client
from tests.server import expect
from tests.server.expect import JSON, STREAMS, SUBS
from tests.server.stores import (
    store_factory_fixture,  # noqa: F401
    store_fixture,  # noqa: F401
    store_url_fixture,  # noqa: F401
)

pytestmark = pytest.mark.anyio

SIGNATURE = re.compile(r"^t=(\d+),kid=([^,]+),ed25519=([A-Za-z0-9_-]+)$")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify(jwks: dict[str, Any], header: str, body: bytes) -> bool:
    """Verify a ``webhook-signature`` header the way a receiver would, from the JWKS."""
    match = SIGNATURE.fullmatch(header)
    if match is None:
        return False
    stamp, kid, signature = match.groups()
    keys = [key for key in jwks["keys"] if key["kid"] == kid]
    if len(keys) != 1 or keys[0]["kty"] != "OKP" or keys[0]["crv"] != "Ed25519":
        return False
    public = Ed25519PublicKey.from_public_bytes(_unb64(keys[0]["x"]))
    try:
        public.verify(_unb64(signature), stamp.encode() + b"." + body)
    except InvalidSignature:
        return False
    return True


# -- signing -----------------------------------------------------------------------------


def test_signature_verifies_and_names_the_key() -> None:
    signer = WebhookSigner.from_seed(new_seed())
    jwks = {"keys": [signer.jwk()]}
    header = signer.signature(b'{"a":1}', 1_700_000_000)
    assert header.startswith(f"t=1700000000,kid={signer.kid},ed25519=")
    assert verify(jwks, header, b'{"a":1}')
    assert not verify(jwks, header, b'{"a":2}')
    other = WebhookSigner.from_seed(new_seed())
    assert not verify({"keys": [{**other.jwk(), "kid": signer.kid}]}, header, b'{"a":1}')


def test_kid_and_jwk_follow_from_the_seed() -> None:
    seed = new_seed()
    first, again = WebhookSigner.from_seed(seed), WebhookSigner.from_seed(seed)
    assert first.kid == again.kid
    assert first.kid.startswith("ds_")
    assert first.kid != WebhookSigner.from_seed(new_seed()).kid
    assert first.jwk() == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": base64.urlsafe_b64encode(first.public_bytes).rstrip(b"=").decode(),
        "kid": first.kid,
        "use": "sig",
        "alg": "EdDSA",
    }


async def test_signing_key_survives_a_restart(store_url: str) -> None:
    first = open_store(store_url)
    await first.open()
    try:
        kid = (await load_signer(first)).kid
        assert (await load_signer(first)).kid == kid
    finally:
        await first.aclose()
    second = open_store(store_url)
    await second.open()
    try:
        assert (await load_signer(second)).kid == kid
    finally:
        await second.aclose()


# -- the URL rule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allow_loopback", "accepted"),
    [
        ("http://127.0.0.1:8080/hook", True, True),
        ("http://localhost/hook", True, True),
        ("http://[::1]:9/", True, True),
        ("https://93.184.216.34/hook", False, True),
        ("http://127.0.0.1:8080/hook", False, False),
        ("http://localhost/hook", False, False),
        ("http://[::1]:9/", False, False),
        ("http://10.0.0.1/hook", True, False),
        ("http://192.168.1.5/hook", True, False),
        ("http://172.16.0.1/hook", True, False),
        ("http://169.254.169.254/latest/meta-data", True, False),
        ("http://[fe80::1]/", True, False),
        ("http://[::ffff:10.0.0.1]/", True, False),
        ("http://0.0.0.0/", True, False),
        ("http://224.0.0.1/", True, False),
        ("ftp://93.184.216.34/", False, False),
        ("file:///etc/passwd", True, False),
        ("http://user:pw@93.184.216.34/", False, False),
        ("http://user@127.0.0.1/", True, False),
        ("http:///nohost", True, False),
        ("http://127.0.0.1:99999/", True, False),
        ("not a url", True, False),
        ("", True, False),
        (42, True, False),
        ("https://" + "a" * 3000 + ".example/", False, False),
    ],
)
async def test_webhook_url_rule(url: Any, allow_loopback: bool, accepted: bool) -> None:
    if accepted:
        assert await check_webhook_url(url, allow_loopback=allow_loopback) == url
    else:
        with pytest.raises(BadRequest) as caught:
            await check_webhook_url(url, allow_loopback=allow_loopback)
        assert caught.value.code == "WEBHOOK_URL_REJECTED"


def test_loopback_hosts() -> None:
    assert is_loopback_host("127.0.0.1")
    assert is_loopback_host("127.1.2.3")
    assert is_loopback_host("::1")
    assert is_loopback_host("[::1]")
    assert is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0")
    assert not is_loopback_host("10.0.0.1")
    assert not is_loopback_host("example.com")


# -- delivery to a real receiver -----------------------------------------------------------


@attrs.define
class Receiver:
    """A tiny HTTP/1.1 receiver on 127.0.0.1: records each request, answers ``answers`` in
    turn (the last one repeats)."""

    answers: list[tuple[int, bytes]]
    url: str = ""
    requests: list[tuple[dict[str, str], bytes]] = attrs.field(factory=list)
    arrived: anyio.Event = attrs.field(factory=anyio.Event)

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:])
            }
            while len(body) < int(headers.get("content-length", "0")):
                body += await stream.receive()
            status, answer = self.answers[min(len(self.requests), len(self.answers) - 1)]
            self.requests.append((headers, body))
            self.arrived.set()
            await stream.send(
                f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                f"content-length: {len(answer)}\r\nconnection: close\r\n\r\n".encode()
                + answer
            )

    async def wait_requests(self, count: int) -> list[tuple[dict[str, str], bytes]]:
        while len(self.requests) < count:
            self.arrived = anyio.Event()
            await self.arrived.wait()
        return self.requests


@asynccontextmanager
async def running(
    store: Store, answers: list[tuple[int, bytes]]
) -> AsyncIterator[tuple[Receiver, httpx.AsyncClient, WebhookDelivery]]:
    """Start a receiver, the in-process app and a delivery loop; yield them."""
    receiver = Receiver(answers)
    clock = FakeClock()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    receiver.url = f"http://127.0.0.1:{port}/hook"
    async with (
        listener,
        httpx.AsyncClient(timeout=5) as http,
        app_client(store, clock=clock) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(listener.serve, receiver.handle)
        signer = await load_signer(store)
        delivery = WebhookDelivery(store, signer, "http://testserver", clock, True, http)
        tg.start_soon(delivery.run)
        yield receiver, client, delivery
        tg.cancel_scope.cancel()


async def _subscribe(client: httpx.AsyncClient, url: str, **extra: Any) -> dict[str, Any]:
    body = {"type": "webhook", "pattern": "events/*", "webhook": {"url": url}, **extra}
    created = await client.put(f"{SUBS}/hook", json=body)
    assert created.status_code == 201, created.text
    view: dict[str, Any] = created.json()
    return view


async def test_done_answer_acks_the_wake(store: Store) -> None:
    async with running(store, [(200, b'{"done": true}')]) as (receiver, client, delivery):
        view = await _subscribe(client, receiver.url)
        jwks_answer = await client.get("/v1/stream/__ds/jwks.json")
        assert jwks_answer.headers["content-type"].startswith("application/jwk-set+json")
        jwks = jwks_answer.json()
        assert [key["kid"] for key in jwks["keys"]] == [view["webhook"]["signing"]["kid"]]
        created = await client.put(f"{STREAMS}/events/a", headers=JSON, content=b'{"n":1}')
        tail = created.headers["stream-next-offset"]
        with anyio.fail_after(10):
            [(headers, body)] = await receiver.wait_requests(1)
        assert verify(jwks, headers["webhook-signature"], body)
        sent = json.loads(body)
        assert sent["subscription_id"] == "hook"
        assert (
            sent["callback_url"] == "http://testserver/v1/stream/__ds/subscriptions/hook/callback"
        )
        assert sent["generation"] == 1
        assert [(s["path"], s["tail_offset"], s["has_pending"]) for s in sent["streams"]] == [
            ("events/a", tail, True)
        ]
        with anyio.fail_after(10):
            while True:
                got = (await client.get(f"{SUBS}/hook")).json()
                if got["streams"][0]["acked_offset"] == tail:
                    break
                await anyio.sleep(0.02)
        assert got["holder"] is None
        assert got["wake_id"] is None
        assert delivery.statistics()["delivered"] == 1


async def test_callback_acks_then_fences(store: Store) -> None:
    async with running(store, [(200, b"{}")]) as (receiver, client, _delivery):
        await _subscribe(client, receiver.url)
        await client.put(f"{STREAMS}/events/a", headers=JSON, content=b'{"n":1}')
        with anyio.fail_after(10):
            [(_headers, body)] = await receiver.wait_requests(1)
        sent = json.loads(body)
        ack = {
            "wake_id": sent["wake_id"],
            "generation": sent["generation"],
            "acks": [{"stream": "events/a", "offset": sent["streams"][0]["tail_offset"]}],
            "done": True,
        }
        auth = {"authorization": f"Bearer {sent['callback_token']}"}
        first = await client.post(f"{SUBS}/hook/callback", json=ack, headers=auth)
        assert first.status_code == 200, first.text
        assert first.json() == {"ok": True, "next_wake": False}
        expect.error(
            await client.post(f"{SUBS}/hook/callback", json=ack, headers=auth), 409, "FENCED"
        )


async def test_failed_delivery_is_released_and_retried(store: Store) -> None:
    answers = [(500, b"{}"), (200, b'{"done": true}')]
    async with running(store, answers) as (receiver, client, delivery):
        await _subscribe(client, receiver.url)
        await client.put(f"{STREAMS}/events/a", headers=JSON, content=b'{"n":1}')
        with anyio.fail_after(10):
            (_, first), (_, second) = await receiver.wait_requests(2)
        one, two = json.loads(first), json.loads(second)
        assert (one["generation"], two["generation"]) == (1, 2)
        assert one["wake_id"] != two["wake_id"]
        assert delivery.statistics()["failed"] == 1


async def test_webhook_view_and_reconfirm(store: Store) -> None:
    async with app_client(store) as client:
        body = {
            "type": "webhook",
            "streams": ["manual/a"],
            "webhook": {"url": "http://127.0.0.1:9/"},
        }
        created = await client.put(f"{SUBS}/h", json=body)
        assert created.status_code == 201
        view = created.json()
        assert view["type"] == "webhook"
        assert "webhook_secret" not in view
        assert view["webhook"]["url"] == "http://127.0.0.1:9/"
        assert view["webhook"]["signing"]["alg"] == "ed25519"
        assert (
            view["webhook"]["signing"]["jwks_url"] == "http://testserver/v1/stream/__ds/jwks.json"
        )
        assert [(s["path"], s["link_type"]) for s in view["streams"]] == [("manual/a", "explicit")]
        assert (await client.put(f"{SUBS}/h", json=body)).status_code == 200
        changed = {**body, "webhook": {"url": "http://127.0.0.1:10/"}}
        expect.error(await client.put(f"{SUBS}/h", json=changed), 409, "SUBSCRIPTION_EXISTS")
        assert (await client.get(f"{SUBS}/h")).json() == view


async def test_nobody_else_claims_a_webhook_subscription(store: Store) -> None:
    async with app_client(store) as client:
        body = {"type": "webhook", "pattern": "events/*", "webhook": {"url": "http://127.0.0.1:9/"}}
        assert (await client.put(f"{SUBS}/h", json=body)).status_code == 201
        await client.put(f"{STREAMS}/events/a", headers=JSON, content=b'{"n":1}')
        claim = await client.post(f"{SUBS}/h/claim", json={"worker": "w1"})
        expect.error(claim, 409, "WEBHOOK_SUBSCRIPTION")
        assert (await client.get(f"{SUBS}/h")).json()["holder"] is None


async def test_unsafe_url_refused_over_http(store: Store) -> None:
    async with app_client(store) as client:
        body = {"type": "webhook", "pattern": "e/*", "webhook": {"url": "http://10.0.0.1/hook"}}
        expect.error(await client.put(f"{SUBS}/h", json=body), 400, "WEBHOOK_URL_REJECTED")
        expect.error(await client.get(f"{SUBS}/h"), 404)
