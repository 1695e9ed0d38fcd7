"""Webhook rules: the store-wide signing key, and which webhook wakes still need delivering.

A webhook subscription runs through the same wake table as a pull-wake one (``wakes.py``):
an append to a linked stream mints a wake (phase ``woken``) but appends no wake event, since
there is no wake stream. The server's delivery loop finds those wakes here, claims each as
the worker :data:`WEBHOOK_WORKER` (an ordinary claim, with token and lease) and POSTs it to
the receiver; the receiver acks through the callback route with that claim's token.
"""

from __future__ import annotations

from pullwake.server.store.rules.transaction import Transaction

#: The worker name the server claims webhook wakes as.
WEBHOOK_WORKER = "webhook"


def load_webhook_key(tx: Transaction, fresh: str) -> str:
    """Return the stored webhook signing seed, storing ``fresh`` if there is none yet."""
    tx.execute(
        "INSERT INTO settings (key, value) VALUES ('webhook_signing_seed', ?) "
        "ON CONFLICT (key) DO NOTHING",
        (fresh,),
    )
    row = tx.fetchone("SELECT value FROM settings WHERE key = 'webhook_signing_seed'")
    assert row is not None
    return str(row[0])


def woken_webhooks(tx: Transaction) -> tuple[str, ...]:
    """Return the webhook subscriptions with a wake in flight and no holder, by id."""
    return tuple(
        str(sub_id)
        for (sub_id,) in tx.fetchall(
            "SELECT id FROM subscriptions WHERE webhook_url IS NOT NULL AND wake_id IS NOT NULL "
            "AND holder IS NULL ORDER BY id"
        )
    )
