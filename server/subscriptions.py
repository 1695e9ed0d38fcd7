"""HTTP handlers for pull-wake subscriptions under ``/v1/stream/__ds/subscriptions/{id}``.

The store decides everything that needs a transaction (linking, wakes, claims, fencing); these
handlers validate input, check the caller's rights, and shape answers as the protocol shows
them. Paths in bodies are relative to the stream root; like the reference server we strip
leading and trailing slashes before validating them.

Extensions to the protocol's subscription view (additive, spec §9.1): ``generation``,
``wake_id``, ``holder`` and ``lease_expires_at_ms``, so operators can see who holds what.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pullwake.server import events, names, webhooks
from pullwake.server.auth import Principal, subscription_not_visible
from pullwake.server.bodies import (
    bool_field,
    int_field,
    read_json_object,
    str_field,
    str_list_field,
)
from pullwake.server.context import AppContext, context_of
from pullwake.server.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    ServerError,
    Unauthorized,
)
from pullwake.server.store.base import (
    AckItem,
    Claim,
    LinkedStream,
    Subscription,
    SubscriptionConfig,
)


def _relative(path: str, what: str) -> str:
    return names.check_path(path.strip("/"), what)


def _iso(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _link_json(link: LinkedStream) -> dict[str, Any]:
    return {"path": link.path, "link_type": link.link_type, "acked_offset": link.acked_offset}


def subscription_json(sub: Subscription, webhook: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a subscription as ``GET .../subscriptions/{id}`` shows it (``webhook``: the
    webhook view of a webhook subscription, see :func:`_webhook_view`)."""
    view: dict[str, Any] = {
        "id": sub.id,
        "subscription_id": sub.id,
        "type": sub.config.type,
        "pattern": sub.config.pattern,
        "streams": [_link_json(link) for link in sub.streams],
        "wake_stream": sub.config.wake_stream,
        "lease_ttl_ms": sub.config.lease_ttl_ms,
        "created_at": _iso(sub.created_at_ms),
        "status": "active",
        "generation": sub.generation,
        "wake_id": sub.wake_id,
        "holder": sub.holder,
        "lease_expires_at_ms": sub.lease_expires_at_ms,
    }
    if sub.config.description is not None:
        view["description"] = sub.config.description
    if webhook is not None:
        view["webhook"] = webhook
        del view["wake_stream"]
    return view


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _webhook_view(ctx: AppContext, request: Request, sub: Subscription) -> dict[str, Any]:
    """Return ``{url, signing: {alg, kid, jwks_url}}``: where the receiver finds the key."""
    signer = await webhooks.load_signer(ctx.store)
    return {
        "url": sub.config.webhook_url,
        "signing": {
            "alg": "ed25519",
            "kid": signer.kid,
            "jwks_url": _base_url(request) + webhooks.JWKS_PATH,
        },
    }


async def _shown(ctx: AppContext, request: Request, sub: Subscription) -> dict[str, Any]:
    if sub.config.type != "webhook":
        return subscription_json(sub)
    return subscription_json(sub, await _webhook_view(ctx, request, sub))


def _sub_id(request: Request) -> str:
    return names.check_identifier(request.path_params["sub_id"], "subscription id")


async def _visible(ctx: AppContext, principal: Principal, sub_id: str) -> Subscription:
    try:
        sub = await ctx.store.subscription(sub_id)
    except NotFound:
        if principal.unrestricted:
            raise
        # Alike for missing and someone else's: a runner token cannot enumerate ids.
        raise subscription_not_visible(principal, sub_id) from None
    await ctx.policy.require_subscription(principal, sub)
    return sub


async def _require_visible(ctx: AppContext, principal: Principal, sub_id: str) -> None:
    """Check a runner's right to a subscription before a claim, ack or release.

    The admin (or anyone, with auth off) may touch every subscription, and the store's own
    transaction answers 404 for a missing one, so the check, two store calls, runs only for
    runner tokens: one store call per request on the hot path instead of two or three.
    """
    if not principal.unrestricted:
        await _visible(ctx, principal, sub_id)


def parse_config(body: dict[str, Any]) -> SubscriptionConfig:
    """Validate a create body into a normalised configuration (or raise ``BadRequest``)."""
    kind = body.get("type")
    if kind not in ("pull-wake", "webhook"):
        raise BadRequest(
            "The field 'type' must be 'pull-wake' or 'webhook'.", code="INVALID_REQUEST"
        )
    pattern = str_field(body, "pattern")
    if pattern is not None:
        pattern = names.check_pattern(pattern.strip("/")) if pattern else None
    streams = sorted({_relative(s, "stream path") for s in str_list_field(body, "streams")})
    if pattern is None and not streams:
        raise BadRequest(
            "A subscription needs a 'pattern', a 'streams' list, or both.",
            code="INVALID_REQUEST",
        )
    webhook_url: str | None = None
    if kind == "webhook":
        hook = body.get("webhook")
        if not isinstance(hook, dict):
            raise BadRequest(
                'A webhook subscription needs "webhook": {"url": "https://..."}.',
                code="INVALID_REQUEST",
            )
        webhooks.url_shape(hook.get("url"))
        webhook_url = str(hook["url"])
        wake_stream = ""
    else:
        wake_stream = _relative(str_field(body, "wake_stream", required=True) or "", "wake_stream")
    lease_ttl_ms = int_field(
        body,
        "lease_ttl_ms",
        default=names.DEFAULT_LEASE_TTL_MS,
        minimum=names.MIN_LEASE_TTL_MS,
        maximum=names.MAX_LEASE_TTL_MS,
    )
    return SubscriptionConfig(
        wake_stream=wake_stream,
        pattern=pattern,
        streams=tuple(streams),
        lease_ttl_ms=lease_ttl_ms,
        description=str_field(body, "description"),
        type=kind,
        webhook_url=webhook_url,
    )


async def put(request: Request) -> Response:
    """Create (201) or re-confirm (200) a subscription; 409 if the id has another config."""
    ctx = context_of(request)
    principal = ctx.auth.authenticate(request.headers)
    sub_id = _sub_id(request)
    ctx.policy.require_admin(principal, "create subscriptions")
    config = parse_config(await read_json_object(request, ctx.config.max_body_bytes))
    if config.webhook_url is not None:
        await webhooks.check_webhook_url(
            config.webhook_url, allow_loopback=webhooks.is_loopback_host(ctx.config.host)
        )
    created, sub = await ctx.store.put_subscription(sub_id, config, ctx.clock())
    return JSONResponse(await _shown(ctx, request, sub), status_code=201 if created else 200)


async def get(request: Request) -> Response:
    """Return a subscription with its links and cursors."""
    ctx = context_of(request)
    principal = ctx.auth.authenticate(request.headers)
    sub = await _visible(ctx, principal, _sub_id(request))
    return JSONResponse(await _shown(ctx, request, sub))


async def delete(request: Request) -> Response:
    """Delete a subscription (204, also when it does not exist, like the reference)."""
    ctx = context_of(request)
    principal = ctx.auth.authenticate(request.headers)
    sub_id = _sub_id(request)
    ctx.policy.require_admin(principal, "delete subscriptions")
    try:
        await ctx.store.delete_subscription(sub_id)
    except NotFound:
        pass
    return Response(status_code=204)


async def add_streams(request: Request) -> Response:
    """Link streams explicitly (idempotent; new links start at the tail)."""
    ctx = context_of(request)
    principal = ctx.auth.authenticate(request.headers)
    sub_id = _sub_id(request)
    ctx.policy.require_admin(principal, "change subscriptions")
    body = await read_json_object(request, ctx.config.max_body_bytes)
    streams = [_relative(s, "stream path") for s in str_list_field(body, "streams", required=True)]
    await ctx.store.add_streams(sub_id, streams, ctx.clock())
    return Response(status_code=204)


async def remove_stream(request: Request) -> Response:
    """Remove an explicit link (idempotent; a glob link stays while the pattern matches)."""
    ctx = context_of(request)
    principal = ctx.auth.authenticate(request.headers)
    sub_id = _sub_id(request)
    ctx.policy.require_admin(principal, "change subscriptions")
    path = _relative(request.path_params["path"], "stream path")
    await ctx.store.remove_stream(sub_id, path, ctx.clock())
    return Response(status_code=204)


def _outcome(exc: ServerError) -> str:
    return exc.code.lower()


# -- pullwake extensions (docs/server.md "pullwake extensions") ------------------------------

#: The negotiation header: the runner lists what it understands, the answer what applies.
EXTENSIONS_HEADER = "pullwake-extensions"
#: A lower inline budget a runner may ask for (bytes of messages in one answer).
INLINE_MAX_HEADER = "pullwake-inline-max-bytes"
INLINE_MESSAGES = "inline-messages"
CLAIM_NEXT = "claim-next"
#: The extensions this server applies, in the order its answers list them.
SUPPORTED_EXTENSIONS = (INLINE_MESSAGES, CLAIM_NEXT)
#: The most message bytes one claim answer carries inline (the cap on the request's ask).
INLINE_MAX_BYTES = 64 * 1024


@attrs.frozen
class Negotiated:
    """What a claim or ack request offered that this server applies to it."""

    extensions: tuple[str, ...] = ()
    #: The inline byte budget (0: no messages inline).
    inline_bytes: int = 0

    @property
    def claim_next(self) -> bool:
        return CLAIM_NEXT in self.extensions

    def headers(self) -> dict[str, str]:
        """The answer's confirmation (none when nothing was offered: a plain answer)."""
        if not self.extensions:
            return {}
        return {EXTENSIONS_HEADER: ", ".join(self.extensions)}


def negotiate(request: Request) -> Negotiated:
    """Read the request's ``Pullwake-Extensions`` (and ``Pullwake-Inline-Max-Bytes``)."""
    raw = request.headers.get(EXTENSIONS_HEADER)
    if raw is None:
        return Negotiated()
    offered = {part.strip().lower() for part in raw.split(",")}
    applied = tuple(name for name in SUPPORTED_EXTENSIONS if name in offered)
    budget = 0
    if INLINE_MESSAGES in applied:
        budget = INLINE_MAX_BYTES
        asked = request.headers.get(INLINE_MAX_HEADER)
        if asked is not None:
            text = asked.strip()
            if not text.isascii() or not text.isdigit() or len(text) > 12:
                raise BadRequest(
                    f"{INLINE_MAX_HEADER} must be a whole number of bytes, got {asked[:40]!r}.",
                    code="INVALID_REQUEST",
                )
            budget = min(budget, int(text))
    return Negotiated(applied, budget)


def _claim_view(won: Claim) -> dict[str, Any]:
    return {
        "wake_id": won.wake_id,
        "generation": won.generation,
        "token": won.token,
        "streams": [
            {
                **_link_json(link),
                "tail_offset": link.tail_offset,
                "has_pending": link.has_pending,
            }
            for link in won.streams
        ],
        "lease_ttl_ms": won.lease_ttl_ms,
    }


def _dumps(value: object) -> bytes:
    # As Starlette's JSONResponse renders, so an extended answer differs only where it adds.
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def claim_body(won: Claim) -> bytes:
    """Return the claim answer's JSON, with ``messages`` when the claim carries some.

    The stored messages are serialized JSON values already (a GET joins them the same way),
    so they are spliced in as they are rather than decoded and encoded again.
    """
    head = _dumps(_claim_view(won))
    if not won.messages:
        return head
    parts = [
        _dumps(read.path)
        + b':{"items":['
        + b",".join(read.messages)
        + b'],"next_offset":'
        + _dumps(read.next_offset)
        + b',"up_to_date":'
        + (b"true" if read.up_to_date else b"false")
        + b"}"
        for read in won.messages
    ]
    return head[:-1] + b',"messages":{' + b",".join(parts) + b"}}"


def _count_claim(ctx: AppContext, sub_id: str, worker: str, won: Claim) -> None:
    ctx.metrics.claims.labels("ok").inc()
    events.log_claim(sub_id, worker, won.wake_id, won.generation)


def _claim_as(principal: Principal, worker: str) -> None:
    if not principal.unrestricted and worker != principal.runner_id:
        raise Forbidden(
            f"Runner {principal.runner_id!r} may claim only as itself; send "
            f'{{"worker": "{principal.runner_id}"}}.'
        )


async def claim(request: Request) -> Response:
    """Claim the pending wake: answers the token, generation, streams and lease."""
    ctx = context_of(request)
    principal = ctx.auth.authenticate(request.headers)
    sub_id = _sub_id(request)
    negotiated = negotiate(request)
    body = await read_json_object(request, ctx.config.max_body_bytes)
    worker = names.check_identifier(str_field(body, "worker", required=True) or "", "worker")
    _claim_as(principal, worker)
    await _require_visible(ctx, principal, sub_id)
    try:
        won = await ctx.store.claim(
            sub_id, worker, ctx.clock(), inline_bytes=negotiated.inline_bytes
        )
    except ServerError as exc:
        ctx.metrics.claims.labels(_outcome(exc)).inc()
        raise
    _count_claim(ctx, sub_id, worker, won)
    if not negotiated.extensions:
        return JSONResponse(_claim_view(won))
    return Response(claim_body(won), media_type="application/json", headers=negotiated.headers())


def _claim_token(request: Request) -> str:
    raw = request.headers.get("authorization", "")
    scheme, _, token = raw.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "Send the claim token from the claim answer as 'Authorization: Bearer <token>'.",
            code="INVALID_TOKEN",
        )
    return token.strip()


def _fence_fields(body: dict[str, Any]) -> tuple[str, int]:
    wake_id = str_field(body, "wake_id", required=True) or ""
    generation = int_field(body, "generation", minimum=0, maximum=2**62)
    return wake_id, generation


def _acks(body: dict[str, Any]) -> list[AckItem]:
    raw = body.get("acks")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("The field 'acks' must be a list.", code="INVALID_REQUEST")
    items = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise BadRequest(
                'Each ack must be an object {"stream": path, "offset": offset}.',
                code="INVALID_REQUEST",
            )
        stream = entry.get("stream", entry.get("path"))
        offset = entry.get("offset")
        if not isinstance(stream, str) or not isinstance(offset, str):
            raise BadRequest(
                "Each ack needs a string 'stream' and a string 'offset'.", code="INVALID_REQUEST"
            )
        try:
            stream = _relative(stream, "ack stream")
            names.check_offset(offset)
        except BadRequest as exc:
            raise Conflict(
                f"The ack names no offset of a linked stream: {exc.message}",
                code="INVALID_OFFSET",
            ) from None
        items.append(AckItem(stream=stream, offset=offset))
    return items


async def ack(request: Request) -> Response:
    """Apply acks (inclusive); without ``done`` this extends the lease, with it releases."""
    ctx = context_of(request)
    principal = ctx.auth.authenticate(request.headers, claim_route=True)
    sub_id = _sub_id(request)
    token = _claim_token(request)
    body = await read_json_object(request, ctx.config.max_body_bytes)
    await _require_visible(ctx, principal, sub_id)
    wake_id, generation = _fence_fields(body)
    acks = _acks(body)
    done = bool_field(body, "done")
    negotiated = negotiate(request)
    next_worker = _claim_next_worker(body) if negotiated.claim_next and done else None
    if next_worker is not None:
        _claim_as(principal, next_worker)
    try:
        result = await ctx.store.ack(
            sub_id,
            token,
            wake_id,
            generation,
            acks,
            done,
            ctx.clock(),
            claim_next_worker=next_worker,
            inline_bytes=negotiated.inline_bytes,
        )
    except ServerError as exc:
        ctx.metrics.acks.labels("done" if done else "extend", _outcome(exc)).inc()
        raise
    ctx.metrics.acks.labels("done" if done else "extend", "ok").inc()
    if done:
        events.log_ack(sub_id, wake_id, generation)
    if not negotiated.extensions:
        return JSONResponse({"ok": True, "next_wake": result.next_wake})
    answer = _dumps({"ok": True, "next_wake": result.next_wake})
    if result.next_claim is not None:
        assert next_worker is not None
        _count_claim(ctx, sub_id, next_worker, result.next_claim)
        answer = answer[:-1] + b',"next_claim":' + claim_body(result.next_claim) + b"}"
    return Response(answer, media_type="application/json", headers=negotiated.headers())


def _claim_next_worker(body: dict[str, Any]) -> str | None:
    """Return the worker of a done-ack's ``"claim_next": {"worker": id}``, if it has one."""
    raw = body.get("claim_next")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("worker"), str):
        raise BadRequest(
            'The field \'claim_next\' must be {"worker": "<id>"}.', code="INVALID_REQUEST"
        )
    return names.check_identifier(raw["worker"], "claim_next worker")


async def release(request: Request) -> Response:
    """Give the claim back without acking (re-wakes if work is pending)."""
    ctx = context_of(request)
    principal = ctx.auth.authenticate(request.headers, claim_route=True)
    sub_id = _sub_id(request)
    token = _claim_token(request)
    body = await read_json_object(request, ctx.config.max_body_bytes)
    await _require_visible(ctx, principal, sub_id)
    wake_id, generation = _fence_fields(body)
    try:
        await ctx.store.release(sub_id, token, wake_id, generation, ctx.clock())
    except ServerError as exc:
        ctx.metrics.releases.labels(_outcome(exc)).inc()
        raise
    ctx.metrics.releases.labels("ok").inc()
    events.log_release(sub_id, wake_id, generation)
    return Response(status_code=204)


async def callback(request: Request) -> Response:
    """Ack a webhook wake with the ``callback_token`` of its delivery (the ack route's rules:
    200 ``{ok, next_wake}``, 409 ``FENCED`` for a stale generation or wake id)."""
    return await ack(request)


async def jwks(request: Request) -> Response:
    """Serve the public key that signs webhook deliveries, as a JSON Web Key Set."""
    signer = await webhooks.load_signer(context_of(request).store)
    return JSONResponse({"keys": [signer.jwk()]}, media_type="application/jwk-set+json")


_ALLOWED_BY_SHAPE = (
    (re.compile(r"subscriptions/[^/]+"), "PUT, GET, DELETE"),
    (re.compile(r"subscriptions/[^/]+/streams"), "POST"),
    (re.compile(r"subscriptions/[^/]+/streams/.+"), "DELETE"),
    (re.compile(r"subscriptions/[^/]+/(claim|ack|release|callback)"), "POST"),
    (re.compile(r"jwks\.json"), "GET"),
)


async def reserved(request: Request) -> Response:
    """Answer the rest of the reserved ``__ds`` prefix: 405 on a known route, else 404."""
    rest = request.url.path.removeprefix("/v1/stream/__ds").lstrip("/")
    for shape, allowed in _ALLOWED_BY_SHAPE:
        if shape.fullmatch(rest):
            raise MethodNotAllowed(
                f"{request.method} is not allowed on this route; use one of: {allowed}.",
                allow=allowed,
            )
    raise NotFound(
        f"{request.url.path[:200]!r} is not a control route; subscriptions live at "
        "/v1/stream/__ds/subscriptions/{id}.",
        code="NOT_FOUND",
    )
