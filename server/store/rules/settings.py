"""Settings rules: the store-wide values kept in the ``settings`` table."""

from __future__ import annotations

from pullwake.server.store.rules.transaction import Transaction


def load_secret(tx: Transaction, fresh: str) -> str:
    """Return the stored token-signing secret, storing ``fresh`` if there is none yet."""
    tx.execute(
        "INSERT INTO settings (key, value) VALUES ('token_secret', ?) ON CONFLICT (key) DO NOTHING",
        (fresh,),
    )
    row = tx.fetchone("SELECT value FROM settings WHERE key = 'token_secret'")
    assert row is not None
    return str(row[0])
