"""Webhook subscriptions: the signing key, the URL rule, and the delivery loop.

Theory of operation
-------------------
A webhook subscription is woken like a pull-wake one (the store's wake table mints the wake),
but nobody claims it over HTTP: :func:`deliver_webhooks`, one task per server beside the lease
sweeper, asks the store for woken webhook subscriptions, claims each as the worker
``webhook`` (an ordinary claim: token, generation, lease) and POSTs it to the receiver, signed
with the server's Ed25519 key. The body carries the claim's ``wake_id``, ``generation``, the
streams with their tail offsets, and ``callback_url`` + ``callback_token``: the receiver acks
through the callback route (the ack route under another name) with that token, or answers the
POST with ``{"done": true}`` and the server acks every pending stream at its tail for it.

Failures: a POST that fails (connection error, timeout, non-2xx) releases the claim, which
re-wakes the work, and the subscription is retried after a backoff (``RETRY_BASE_S`` doubling
up to ``RETRY_MAX_S``); a receiver that answers 2xx without ``done`` keeps the claim until its
lease ends, when the lease sweeper re-wakes the work and it is delivered again.

Signature: header ``webhook-signature: t=<unix seconds>,kid=<kid>,ed25519=<base64url>`` over
the bytes ``<t>.<raw body>``; the public key is served as a JWKS at ``JWKS_PATH``.

URL rule (:func:`check_webhook_url`): http or https only, a host, no credentials; every address
the host resolves to must be public, except that loopback targets are allowed when the server
itself listens on loopback. Caveat: the check runs on create and before each delivery, but
httpx resolves the name again to connect, so a DNS answer that changes in between is not
caught.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import secrets
import time
import urllib.parse
from typing import Any

import anyio
import attrs
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pullwake.server.errors import BadRequest, ServerError
from pullwake.server.store.base import AckItem, Claim, Store
from pullwake.server.store.rules.webhooks import WEBHOOK_WORKER

log = logging.getLogger("pullwake.server.webhooks")

JWKS_PATH = "/v1/stream/__ds/jwks.json"
SIGNATURE_HEADER = "webhook-signature"
#: Seconds between looks for woken webhook subscriptions: the shortest right after one was
#: found, doubling while none is, up to the longest (the most a delivery waits to start).
POLL_MIN_S = 0.05
POLL_MAX_S = 0.5
#: The most of a receiver's answer read (enough for ``{"done": true}``).
MAX_ANSWER_BYTES = 64 * 1024
RETRY_BASE_S = 0.5
RETRY_MAX_S = 60.0
#: At most this many deliveries in flight per server.
MAX_IN_FLIGHT = 16
_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@attrs.frozen
class WebhookSigner:
    """The server's Ed25519 webhook key: signs deliveries, publishes its JWK."""

    key: Ed25519PrivateKey

    @classmethod
    def from_seed(cls, seed: str) -> WebhookSigner:
        raw = base64.urlsafe_b64decode(seed + "=" * (-len(seed) % 4))
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @property
    def public_bytes(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def kid(self) -> str:
        """Return the key id: ``ds_`` and a digest of the public key (stable across restarts)."""
        return "ds_" + _b64url(hashlib.sha256(self.public_bytes).digest()[:12])

    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(self.public_bytes),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }

    def signature(self, body: bytes, now_s: int) -> str:
        """Return the ``webhook-signature`` header value for ``body`` sent at ``now_s``."""
        signed = self.key.sign(str(now_s).encode("ascii") + b"." + body)
        return f"t={now_s},kid={self.kid},ed25519={_b64url(signed)}"


def new_seed() -> str:
    return _b64url(secrets.token_bytes(32))


async def load_signer(store: Store) -> WebhookSigner:
    """Return the store's signer, creating and persisting the key on first use."""
    return WebhookSigner.from_seed(await store.webhook_key_seed(new_seed()))


def is_loopback_host(host: str) -> bool:
    """Tell whether a bind host is loopback-only (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _rejected(url: str, why: str) -> BadRequest:
    return BadRequest(
        f"webhook URL {url[:200]!r} rejected: {why}. Use a public http(s) URL without "
        "credentials (loopback targets only while the server listens on loopback).",
        code="WEBHOOK_URL_REJECTED",
    )


def _address_refusal(address: str, *, allow_loopback: bool) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if allow_loopback else "it points at a loopback address"
    if not ip.is_global or ip.is_multicast:
        return f"{ip} is not a public address (private, link-local or reserved)"
    return None


def url_shape(url: object) -> urllib.parse.SplitResult:
    """Check what can be checked without DNS; return the parsed URL (or raise 400)."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise BadRequest(
            "webhook.url must be an http(s) URL of at most 2048 characters.",
            code="WEBHOOK_URL_REJECTED",
        )
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        raise _rejected(url, "it is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise _rejected(url, "only http and https are allowed")
    if parts.username is not None or parts.password is not None:
        raise _rejected(url, "credentials in the URL are not allowed")
    if not parts.hostname:
        raise _rejected(url, "it names no host")
    return parts


async def check_webhook_url(url: object, *, allow_loopback: bool) -> str:
    """Return ``url`` if deliveries may go there, else raise 400 ``WEBHOOK_URL_REJECTED``."""
    parts = url_shape(url)
    assert isinstance(url, str)
    assert parts.hostname is not None
    host = parts.hostname
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        if host.lower() in _LOOPBACK_NAMES:
            addresses = ["127.0.0.1"]
        else:
            try:
                with anyio.fail_after(5):
                    infos = await anyio.getaddrinfo(host, parts.port or 443)
            except (OSError, TimeoutError):
                raise _rejected(url, f"the host {host!r} does not resolve") from None
            addresses = sorted({str(info[4][0]) for info in infos})
    for address in addresses:
        why = _address_refusal(address, allow_loopback=allow_loopback)
        if why is not None:
            raise _rejected(url, why)
    return url


def delivery_body(sub_id: str, won: Claim, callback_url: str) -> dict[str, Any]:
    """Return the JSON a receiver gets for one claimed wake."""
    return {
        "type": "wake",
        "subscription_id": sub_id,
        "wake_id": won.wake_id,
        "generation": won.generation,
        "callback_url": callback_url,
        "callback_token": won.token,
        "lease_ttl_ms": won.lease_ttl_ms,
        "streams": [
            {
                "path": link.path,
                "link_type": link.link_type,
                "acked_offset": link.acked_offset,
                "tail_offset": link.tail_offset,
                "has_pending": link.has_pending,
            }
            for link in won.streams
        ],
    }


def _answered_done(raw: bytes) -> bool:
    try:
        answer = json.loads(raw)
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("done") is True


@attrs.define
class WebhookDelivery:
    """Deliver woken webhook subscriptions of one server (see the module docstring)."""

    store: Store
    signer: WebhookSigner
    #: The server's own base URL, for ``callback_url`` (``http://host:port``).
    base_url: str
    clock: Any
    allow_loopback: bool
    client: httpx.AsyncClient
    # Invariant: holds the ids with a delivery task running; none is delivered twice at once.
    in_flight: set[str] = attrs.field(factory=set)
    # Invariant: sub id -> (failures in a row, monotonic time before which it is not retried).
    backoff: dict[str, tuple[int, float]] = attrs.field(factory=dict)
    delivered: int = 0
    failed: int = 0

    def statistics(self) -> dict[str, int]:
        return {
            "in_flight": len(self.in_flight),
            "backing_off": len(self.backoff),
            "delivered": self.delivered,
            "failed": self.failed,
        }

    async def run(self) -> None:
        """Look for woken webhook subscriptions forever, delivering each in its own task."""
        limiter = anyio.CapacityLimiter(MAX_IN_FLIGHT)
        interval = POLL_MIN_S
        async with anyio.create_task_group() as tg:
            while True:
                try:
                    woken = await self.store.woken_webhooks()
                except Exception:
                    log.exception("looking for webhook wakes failed; retrying")
                    woken = ()
                now = anyio.current_time()
                for sub_id in woken:
                    if sub_id in self.in_flight or self.backoff.get(sub_id, (0, 0.0))[1] > now:
                        continue
                    self.in_flight.add(sub_id)
                    tg.start_soon(self._deliver_one, sub_id, limiter)
                interval = POLL_MIN_S if woken else min(POLL_MAX_S, interval * 2)
                await anyio.sleep(interval)

    async def _deliver_one(self, sub_id: str, limiter: anyio.CapacityLimiter) -> None:
        try:
            async with limiter:
                ok = await self.deliver(sub_id)
            if ok:
                self.backoff.pop(sub_id, None)
            else:
                failures = self.backoff.get(sub_id, (0, 0.0))[0] + 1
                delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (failures - 1))
                self.backoff[sub_id] = (failures, anyio.current_time() + delay)
        finally:
            self.in_flight.discard(sub_id)

    async def deliver(self, sub_id: str) -> bool:
        """Claim and POST one woken subscription; return False when it must be retried."""
        try:
            sub = await self.store.subscription(sub_id)
            won = await self.store.claim(sub_id, WEBHOOK_WORKER, self.clock())
        except ServerError:
            return True  # deleted, claimed elsewhere, or no work left: nothing to deliver
        url = sub.config.webhook_url
        assert url is not None
        callback_url = f"{self.base_url}/v1/stream/__ds/subscriptions/{sub_id}/callback"
        body = json.dumps(delivery_body(sub_id, won, callback_url), separators=(",", ":")).encode(
            "utf-8"
        )
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: self.signer.signature(body, int(time.time())),
        }
        try:
            await check_webhook_url(url, allow_loopback=self.allow_loopback)
            async with self.client.stream("POST", url, content=body, headers=headers) as response:
                delivered = response.is_success
                answer = b""
                async for chunk in response.aiter_bytes():
                    answer += chunk
                    if len(answer) > MAX_ANSWER_BYTES:
                        break
        except (httpx.HTTPError, BadRequest) as exc:
            log.warning("webhook delivery to %s for %r failed: %s", url, sub_id, exc)
            delivered = False
        if not delivered:
            self.failed += 1
            try:
                await self.store.release(
                    sub_id, won.token, won.wake_id, won.generation, self.clock()
                )
            except ServerError:
                pass  # the receiver acked or the lease lapsed meanwhile
            return False
        self.delivered += 1
        if _answered_done(answer):
            acks = [
                AckItem(link.path, link.tail_offset) for link in won.streams if link.has_pending
            ]
            try:
                await self.store.ack(
                    sub_id, won.token, won.wake_id, won.generation, acks, True, self.clock()
                )
            except ServerError as exc:
                log.info("auto-ack of %r after done was refused: %s", sub_id, exc)
        return True


async def deliver_webhooks(
    store: Store, base_url: str, clock: Any, *, allow_loopback: bool, timeout: float = 10.0
) -> None:
    """Run the webhook delivery loop of one server until cancelled."""
    signer = await load_signer(store)
    limits = httpx.Timeout(timeout, connect=min(timeout, 5.0))
    async with httpx.AsyncClient(timeout=limits, follow_redirects=False) as client:
        delivery = WebhookDelivery(store, signer, base_url, clock, allow_loopback, client)
        await delivery.run()
