"""The pullwake extensions' rules: a claim that carries its pending messages, a done-ack that
claims the next work, each in the one transaction of the operation it extends.

``inline-messages``: :func:`claim_inline` is ``wakes.claim`` plus ``streams.inline_reads``
of the claimed streams, so the messages a runner gets are exactly those past the acked
offsets the claim reports. ``claim-next``: :func:`ack_claim_next` is ``wakes.ack`` with a
worker to claim for, plus the inline reads of the claim it took. docs/server.md
("pullwake extensions") has the wire format.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from pullwake.server.store.base import AckItem, AckResult, Claim
from pullwake.server.store.rules import wakes
from pullwake.server.store.rules.streams import inline_reads
from pullwake.server.store.rules.transaction import Transaction, check_int


def _with_messages(tx: Transaction, won: Claim, inline_bytes: int, now_ms: int) -> Claim:
    check_int(inline_bytes, "inline_bytes")
    if inline_bytes <= 0:
        return won
    return attrs.evolve(won, messages=inline_reads(tx, won.streams, inline_bytes, now_ms))


def claim_inline(
    tx: Transaction, secret: str, sub_id: str, worker: str, now_ms: int, inline_bytes: int
) -> Claim:
    won = wakes.claim(tx, secret, sub_id, worker, now_ms)
    return _with_messages(tx, won, inline_bytes, now_ms)


def ack_claim_next(
    tx: Transaction,
    secret: str,
    sub_id: str,
    token: str,
    wake_id: str,
    generation: int,
    acks: Sequence[AckItem],
    done: bool,
    now_ms: int,
    claim_next_worker: str | None,
    inline_bytes: int,
) -> AckResult:
    result = wakes.ack(
        tx, secret, sub_id, token, wake_id, generation, acks, done, now_ms, claim_next_worker
    )
    if result.next_claim is None:
        return result
    return attrs.evolve(
        result, next_claim=_with_messages(tx, result.next_claim, inline_bytes, now_ms)
    )
