"""Bearer-token authentication and the rules for what each caller may do.

The model
---------
* **No tokens configured**: everything is open, and the server refuses to bind anywhere but
  loopback (:func:`require_safe_bind`).
* **Admin token** (``--admin-token``): may do everything.
* **Runner tokens** (``--runner-token RUNNER_ID=SECRET``, repeatable): the caller *is* that
  runner. It may register and heartbeat only as itself, read only its own wake stream (the
  ``wake_stream`` of its registered row) and the streams linked to subscriptions whose lease it
  currently holds, and claim, ack, release or read only subscriptions whose wake stream is its
  own. Creating, appending to and deleting streams, and managing subscriptions, need the admin
  token.
* **Wake-stream binding**: a runner token may register the wake stream an admin already set for
  it, or one in its own namespace, ``wake/<RUNNER_ID>`` or below. So no runner can point its
  row at another runner's wake stream and read its wakes.

Where the token travels: ``Authorization: Bearer <token>``, or ``Pullwake-Authorization:
Bearer <token>`` (which wins when both are present). On ``.../ack`` and ``.../release`` the
``Authorization`` header carries the **claim token** the store signed (the protocol says so),
so there the caller's own token must travel in ``Pullwake-Authorization``.

Claim tokens are a different thing: the store signs and checks them (fencing); this module
never looks inside one.

Tokens are compared in constant time (over SHA-256 digests, so lengths never leak) and never
logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Mapping
from typing import Literal

import attrs

from pullwake.server.config import ServerConfig
from pullwake.server.errors import Forbidden, NotFound, Unauthorized, UnsafeBindError
from pullwake.server.store.base import Runner, Store, Subscription

#: The header that carries the caller's own token when ``Authorization`` is taken.
RUNNER_TOKEN_HEADER = "pullwake-authorization"
#: The namespace a runner token may register its wake stream in, per runner id.
WAKE_NAMESPACE = "wake"


@attrs.frozen
class Principal:
    """Who is calling: ``open`` (auth off), ``admin``, or one ``runner``."""

    kind: Literal["open", "admin", "runner"]
    runner_id: str | None = None

    @property
    def unrestricted(self) -> bool:
        return self.kind != "runner"


OPEN = Principal("open")
ADMIN = Principal("admin")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def parse_runner_token(spec: str) -> tuple[str, str]:
    """Split ``RUNNER_ID=SECRET`` (the secret may itself contain ``=``)."""
    runner_id, sep, secret = spec.partition("=")
    if not sep or not runner_id or not secret:
        raise ValueError(
            "a runner token must look like RUNNER_ID=SECRET, e.g. --runner-token worker-1=s3cr3t"
        )
    return runner_id, secret


def is_loopback(host: str) -> bool:
    """Return True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_safe_bind(config: ServerConfig) -> None:
    """Refuse to serve beyond loopback when no token protects the server."""
    if not config.auth_enabled and not is_loopback(config.host):
        raise UnsafeBindError(
            f"refusing to listen on {config.host}: without tokens anyone who can reach it may "
            "read, write and claim everything. Set --admin-token (and --runner-token "
            "RUNNER_ID=SECRET per runner), or bind to 127.0.0.1."
        )


class Authenticator:
    """Map a request's bearer token to a :class:`Principal` (constant-time comparisons)."""

    def __init__(self, admin_token: str | None, runner_tokens: Mapping[str, str]) -> None:
        # Invariant: only digests are kept, never the tokens themselves.
        self._admin = _digest(admin_token) if admin_token is not None else None
        self._runners = [(runner_id, _digest(t)) for runner_id, t in runner_tokens.items()]
        self.enabled = self._admin is not None or bool(self._runners)

    @classmethod
    def from_config(cls, config: ServerConfig) -> Authenticator:
        return cls(config.admin_token, config.runner_tokens)

    def authenticate(self, headers: Mapping[str, str], *, claim_route: bool = False) -> Principal:
        """Return who sent ``headers``; raise ``Unauthorized`` when auth is on and they fail."""
        if not self.enabled:
            return OPEN
        raw = headers.get(RUNNER_TOKEN_HEADER)
        if raw is None and not claim_route:
            raw = headers.get("authorization")
        if raw is None:
            where = (
                "Pullwake-Authorization: Bearer <token> (Authorization carries the claim token "
                "here)"
                if claim_route
                else "Authorization: Bearer <token>"
            )
            raise Unauthorized(f"This server requires a token; send {where}.", code="UNAUTHORIZED")
        scheme, _, token = raw.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "The authorization header is malformed; send 'Bearer <token>'.",
                code="UNAUTHORIZED",
            )
        digest = _digest(token.strip())
        matched: Principal | None = None
        if self._admin is not None and hmac.compare_digest(digest, self._admin):
            matched = ADMIN
        for runner_id, runner_digest in self._runners:
            if hmac.compare_digest(digest, runner_digest) and matched is None:
                matched = Principal("runner", runner_id)
        if matched is None:
            raise Unauthorized(
                "The token is not valid for this server; check --admin-token/--runner-token.",
                code="UNAUTHORIZED",
            )
        return matched


def subscription_not_visible(principal: Principal, sub_id: str) -> Forbidden:
    """The one answer a runner token gets for a subscription it may not use.

    The same for a subscription that does not exist and for one that wakes another runner,
    and it names nothing of the subscription's configuration: a runner token cannot tell
    which ids exist, so it cannot enumerate them.
    """
    return Forbidden(
        f"Runner {principal.runner_id!r} may use only subscriptions that wake its own wake "
        f"stream; {sub_id[:200]!r} is not one of them (or does not exist). Register the runner "
        "with the subscription's wake stream, or use the admin token."
    )


class Policy:
    """Decide what a principal may do; the checks that need data ask the store."""

    def __init__(self, store: Store, clock: Callable[[], int] | None = None) -> None:
        self._store = store
        # Epoch ms, to judge leases the sweeper has not cleared yet (None: trust the holder).
        self._clock = clock

    @staticmethod
    def require_admin(principal: Principal, action: str) -> None:
        if not principal.unrestricted:
            raise Forbidden(f"A runner token may not {action}; use the admin token.")

    @staticmethod
    def require_self(principal: Principal, runner_id: str) -> None:
        if not principal.unrestricted and principal.runner_id != runner_id:
            raise Forbidden(
                f"This token belongs to runner {principal.runner_id!r}; it may not act as "
                f"runner {runner_id!r}."
            )

    async def _own_wake_stream(self, principal: Principal) -> str | None:
        assert principal.runner_id is not None
        try:
            runner = await self._store.runner(principal.runner_id)
        except NotFound:
            return None
        return runner.wake_stream

    async def require_stream_read(self, principal: Principal, path: str) -> None:
        """Allow a runner its own wake stream and the streams of subscriptions it holds.

        Long-lived reads (SSE, long-poll) ask again before each batch they deliver
        (:meth:`may_still_read`), so a lease that ended, or a wake stream bound elsewhere,
        ends them.
        """
        if principal.unrestricted:
            return
        if path == await self._own_wake_stream(principal):
            return
        assert principal.runner_id is not None
        now_ms = None if self._clock is None else self._clock()
        for held in await self._store.claims_held_by(principal.runner_id):
            lapsed = now_ms is not None and (held.lease_expires_at_ms or 0) <= now_ms
            if not lapsed and any(link.path == path for link in held.streams):
                return
        raise Forbidden(
            f"Runner {principal.runner_id!r} may read only its own wake stream and the streams "
            "of subscriptions whose lease it holds."
        )

    async def may_still_read(self, principal: Principal, path: str) -> bool:
        """Tell whether ``principal`` may still read ``path`` (see :meth:`require_stream_read`)."""
        try:
            await self.require_stream_read(principal, path)
        except Forbidden:
            return False
        return True

    async def require_subscription(self, principal: Principal, sub: Subscription) -> None:
        """Allow a runner the subscriptions that wake it (their wake stream is its own)."""
        if principal.unrestricted:
            return
        own = await self._own_wake_stream(principal)
        if own is None or sub.config.wake_stream != own:
            raise subscription_not_visible(principal, sub.id)

    @staticmethod
    def require_wake_stream_binding(
        principal: Principal, runner_id: str, wake_stream: str | None, existing: Runner | None
    ) -> None:
        """Let a runner keep its admin-set wake stream or choose one in its own namespace."""
        if principal.unrestricted or wake_stream is None:
            return
        if existing is not None and existing.wake_stream == wake_stream:
            return
        own = f"{WAKE_NAMESPACE}/{runner_id}"
        if wake_stream == own or wake_stream.startswith(own + "/"):
            return
        raise Forbidden(
            f"A runner token may register the wake stream {own!r} (or below it), or the one an "
            f"admin registered for it; {wake_stream!r} needs the admin token."
        )
