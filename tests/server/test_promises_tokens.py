"""Claim tokens and cursors: the cases a skeptical reviewer would try, on SQLite and PostgreSQL.

- A token of the right shape whose signature does not verify is refused with 401
  ``INVALID_TOKEN``: one signed with another secret for exactly the current claim, and the
  current token with its payload edited (a later generation). ``"forged"`` is refused for its
  shape before any signature is computed, so it proves nothing about the signature check.
- A cursor is moved only by the holder of the current claim: once the claim ended (a done-ack,
  a release), its token's acks and done-acks are fenced and change nothing, before and after a
  restart of the store, even when new work is waiting past the cursor.
"""

from __future__ import annotations

import base64
import json

import pytest

from pullwake.server.errors import Conflict, Unauthorized
from pullwake.server.store import Store
from pullwake.server.store.base import AckItem, Claim
from pullwake.server.store.tokens import TokenClaims, new_secret, sign_token
from tests.fixtures.servers import app_client
from tests.server import expect
from tests.server.expect import SUBS, bearer
from tests.server.stores import (
    T0,
    StoreFactory,
    ack_all,
    make_subscription,
    store_factory_fixture,  # noqa: F401  (fixture)
    store_fixture,  # noqa: F401  (fixture)
    store_url_fixture,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.anyio


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def tampered_tokens(claim: Claim, sub_id: str, worker: str) -> dict[str, str]:
    """Well-formed tokens (three parts, readable payload) whose signature does not verify."""
    head, _, signature = claim.token.split(".")
    edited = json.dumps(
        [sub_id, claim.generation + 1, claim.wake_id, worker], separators=(",", ":")
    )
    return {
        # Exactly the current claim, signed with a key the server does not hold.
        "other secret": sign_token(
            new_secret(), TokenClaims(sub_id, claim.generation, claim.wake_id, worker)
        ),
        # The current token's payload edited, its signature kept.
        "edited payload": f"{head}.{_b64(edited.encode('ascii'))}.{signature}",
    }


async def test_a_well_formed_token_with_a_bad_signature_is_401_over_http(
    opened_store: Store,
) -> None:
    async with app_client(opened_store) as client:
        await expect.json_stream(client, "wake/w1")
        await expect.json_stream(client, "events/a")
        await expect.subscribe(client, "s1", wake_stream="wake/w1", pattern="events/*")
        tail = await expect.append_json(client, "events/a", {"n": 1})
        won = await expect.claim(client, "s1", "w1")
        fence = {"wake_id": won["wake_id"], "generation": won["generation"]}
        done = {**fence, "acks": [{"stream": "events/a", "offset": tail}], "done": True}
        before = (await client.get(f"{SUBS}/s1")).json()
        grant = Claim(won["wake_id"], won["generation"], won["token"], (), won["lease_ttl_ms"])
        for why, token in tampered_tokens(grant, "s1", "w1").items():
            for route, body in (("ack", done), ("release", fence)):
                answer = await client.post(f"{SUBS}/s1/{route}", json=body, headers=bearer(token))
                error = expect.error(answer, 401, "INVALID_TOKEN")
                assert "signature" in error["message"], (why, route, error)
        assert (await client.get(f"{SUBS}/s1")).json() == before
        # The genuine token still works: nothing above disturbed the claim.
        finished = await client.post(f"{SUBS}/s1/ack", json=done, headers=bearer(won["token"]))
        assert finished.json() == {"ok": True, "next_wake": False}


async def test_a_well_formed_token_with_a_bad_signature_changes_nothing_in_the_store(
    store: Store,
) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store)
    await store.append("events/a", [b"1", b"2"], T0)
    claim = await store.claim("sub", "w1", T0)
    snapshot = await store.subscription("sub")
    tail = (await store.stream("events/a")).tail_offset
    for why, token in tampered_tokens(claim, "sub", "w1").items():
        for done in (False, True):
            with pytest.raises(Unauthorized) as exc:
                await store.ack(
                    "sub",
                    token,
                    claim.wake_id,
                    claim.generation,
                    [AckItem("events/a", tail)],
                    done,
                    T0 + 1,
                )
            assert exc.value.code == "INVALID_TOKEN", why
        with pytest.raises(Unauthorized) as exc:
            await store.release("sub", token, claim.wake_id, claim.generation, T0 + 1)
        assert exc.value.code == "INVALID_TOKEN", why
    assert await store.subscription("sub") == snapshot


async def refused_everything(store: Store, old: Claim, offset: str) -> None:
    """Every ack and done-ack, and a release, with a claim that is no longer held: FENCED."""
    for done in (False, True):
        with pytest.raises(Conflict) as exc:
            await store.ack(
                "sub",
                old.token,
                old.wake_id,
                old.generation,
                [AckItem("events/a", offset)],
                done,
                T0,
            )
        assert exc.value.code == "FENCED"
    with pytest.raises(Conflict) as exc:
        await store.release("sub", old.token, old.wake_id, old.generation, T0)
    assert exc.value.code == "FENCED"


async def test_no_ack_without_a_held_claim_rewrites_the_cursor_before_or_after_a_restart(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory()
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store)
    first = await store.append("events/a", [b"1"], T0)
    old = await store.claim("sub", "w1", T0)
    assert await ack_all(store, "sub", old) is False  # the claim ends; nothing is pending
    committed = await store.subscription("sub")
    (link,) = committed.streams
    assert link.acked_offset == first.next_offset
    assert committed.holder is None

    # No claim is held and no wake is in flight: the ended claim's token moves nothing (an
    # ack would also restart a lease nobody holds).
    await refused_everything(store, old, link.acked_offset)
    assert await store.subscription("sub") == committed

    # New work waits past the cursor: acking it with the ended claim would skip it unhandled.
    newer = await store.append("events/a", [b"2"], T0)
    waiting = await store.subscription("sub")
    await refused_everything(store, old, newer.next_offset)
    assert await store.subscription("sub") == waiting

    # After a restart (a second store on the same database, same signing secret), likewise.
    restarted = await store_factory()
    assert await restarted.subscription("sub") == waiting
    await refused_everything(restarted, old, newer.next_offset)
    assert await restarted.subscription("sub") == waiting
    fresh = await restarted.claim("sub", "w2", T0)
    (fresh_link,) = fresh.streams
    assert (fresh_link.acked_offset, fresh_link.has_pending) == (first.next_offset, True)
