"""The store's rules, written once: every operation as one synchronous transaction body.

Theory of operation
-------------------
Each public function here takes an open :class:`Transaction` and does one store operation in
full: it reads, decides and writes, and either returns (the dialect commits) or raises a
``StoreError`` (the dialect rolls back, so nothing is applied). :class:`CommitThenRaise` is
the one exception to that: it commits what was done (say, an expired lease cleared on the way)
and then raises the error it carries.

The dialects (``sqlite.py``, ``postgres.py``) only open transactions, translate driver errors
and pass notifications on. The SQL uses ``?`` placeholders and the subset of SQL both
databases speak (``ON CONFLICT``, ``RETURNING``, window functions). Rows that a decision depends
on are read with :attr:`Transaction.row_lock` appended: ``FOR NO KEY UPDATE`` on PostgreSQL,
nothing on SQLite, where ``BEGIN IMMEDIATE`` already holds the database's write lock.

Data model: every message has a *position* from one counter shared by all streams; a stream's
tail is the position of its last message (or the position drawn when it was created, if it is
empty).

One module per aggregate; imports point down this list, never up:

* ``transaction`` -- :class:`Transaction`, :class:`CommitThenRaise`, shared argument checks.
* ``catalog``     -- stream rows several aggregates share: find, create (and link), append rows.
* ``forks``       -- forks: the fork point, reading across it, soft deletion and its collection.
* ``expiry``      -- sliding TTLs and absolute expiry: touching, sweeping expired streams.
* ``subscriptions`` -- subscription configuration, loading, links.
* ``wakes``       -- wakes and leases: wake issue, claim, ack, release, expiry (see its
  docstring for the invariants).
* ``streams``     -- the stream operations (append offers wakes through ``wakes``; closure).
* ``extensions``  -- the pullwake extensions: a claim with its messages inline, a done-ack
  that claims the next work (over ``wakes`` and ``streams``).
* ``runners``     -- the runner registry.
* ``settings``    -- store-wide settings (the token-signing secret).
* ``webhooks``    -- the webhook signing key, and the webhook wakes owed a delivery.

This package re-exports every operation, so a store calls ``rules.<operation>``.
"""

from __future__ import annotations

from pullwake.server.store.rules.expiry import expire_streams, streams_due, touch_stream
from pullwake.server.store.rules.extensions import ack_claim_next, claim_inline
from pullwake.server.store.rules.runners import heartbeat, register_runner, runner
from pullwake.server.store.rules.settings import load_secret
from pullwake.server.store.rules.streams import (
    append,
    create_stream,
    delete_stream,
    read,
    stream,
    stream_tail,
)
from pullwake.server.store.rules.subscriptions import (
    add_streams,
    delete_subscription,
    normalise_config,
    put_subscription,
    remove_stream,
    subscription,
)
from pullwake.server.store.rules.transaction import CommitThenRaise, Transaction
from pullwake.server.store.rules.wakes import (
    ack,
    claim,
    claims_held_by,
    expire_leases,
    release,
)
from pullwake.server.store.rules.webhooks import load_webhook_key, woken_webhooks

__all__ = [
    "CommitThenRaise",
    "Transaction",
    "ack",
    "ack_claim_next",
    "add_streams",
    "append",
    "claim",
    "claim_inline",
    "claims_held_by",
    "create_stream",
    "delete_stream",
    "delete_subscription",
    "expire_leases",
    "expire_streams",
    "heartbeat",
    "load_secret",
    "load_webhook_key",
    "normalise_config",
    "put_subscription",
    "read",
    "register_runner",
    "release",
    "remove_stream",
    "runner",
    "stream",
    "stream_tail",
    "streams_due",
    "subscription",
    "touch_stream",
    "woken_webhooks",
]
