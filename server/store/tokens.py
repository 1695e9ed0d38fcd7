"""Claim tokens: HMAC-SHA256 signed statements of who holds which wake.

A token names the subscription, the generation and wake id of the claim, and the worker that
took it, and is signed with a secret the store generates once and keeps in its database, so a
token still verifies after a server restart (and on every server process sharing the database).
A token says nothing about whether its lease is still live: the store checks that against the
subscription's current state. Comparison is constant time.

Format: ``pw1.<payload>.<signature>``, both parts unpadded base64url; the payload is compact
JSON ``[subscription_id, generation, wake_id, worker]``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets

import attrs

from pullwake.server.errors import Unauthorized

_PREFIX = "pw1"
_MAX_TOKEN_CHARS = 4096


@attrs.frozen
class TokenClaims:
    subscription_id: str
    generation: int
    wake_id: str
    worker: str


def new_secret() -> str:
    """Make a fresh signing secret (hex, 256 bits)."""
    return secrets.token_hex(32)


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, signed: str) -> str:
    mac = hmac.new(secret.encode("ascii"), signed.encode("ascii"), hashlib.sha256)
    return _b64encode(mac.digest())


def sign_token(secret: str, claims: TokenClaims) -> str:
    """Write and sign a token for ``claims``."""
    payload = json.dumps(
        [claims.subscription_id, claims.generation, claims.wake_id, claims.worker],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    signed = f"{_PREFIX}.{_b64encode(payload.encode('ascii'))}"
    return f"{signed}.{_signature(secret, signed)}"


def _invalid(why: str) -> Unauthorized:
    return Unauthorized(
        f"claim token rejected: {why}; claim the subscription again to get a fresh token",
        code="INVALID_TOKEN",
    )


def verify_token(secret: str, token: str) -> TokenClaims:
    """Check a token's signature and read its claims; raise ``Unauthorized(INVALID_TOKEN)``."""
    if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
        raise _invalid("it is empty or too long")
    if not token.isascii():
        raise _invalid("it is not ASCII")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _PREFIX:
        raise _invalid("it is not a pullwake claim token")
    expected = _signature(secret, f"{parts[0]}.{parts[1]}")
    if not hmac.compare_digest(expected.encode("ascii"), parts[2].encode("ascii")):
        raise _invalid("its signature does not verify")
    try:
        fields = json.loads(_b64decode(parts[1]))
    except (binascii.Error, ValueError) as exc:
        raise _invalid("its payload is unreadable") from exc
    if (
        not isinstance(fields, list)
        or len(fields) != 4
        or not isinstance(fields[0], str)
        or type(fields[1]) is not int
        or not isinstance(fields[2], str)
        or not isinstance(fields[3], str)
    ):
        raise _invalid("its payload has the wrong shape")
    return TokenClaims(fields[0], fields[1], fields[2], fields[3])
