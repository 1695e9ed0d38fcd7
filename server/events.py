"""The server's event log: its start-up banner and one INFO line per claim, ack, release and
lease expiry.

Each line names what an operator greps for, and passes it as ``extra=`` too, so ``--log-format
json`` gives it as fields (``subscription``, ``wake_id``, ``generation``, ``worker``). The
logger is ``pullwake.server.events``; raise it to WARNING to keep the banner and errors only.
Lease expiry is logged per lease, with the ids of the claim that lapsed and the runner that
held it (the sweeper gets them from ``Store.expire_leases``).
"""

from __future__ import annotations

import logging
import re

from pullwake.server.config import ServerConfig
from pullwake.server.store.base import ExpiredLease

__all__ = [
    "auth_mode",
    "log_ack",
    "log_banner",
    "log_claim",
    "log_lease_expired",
    "log_release",
    "redact_dsn",
]

log = logging.getLogger("pullwake.server.events")

_USERINFO_PASSWORD = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*):[^@/]*@")
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)[^&]*", re.IGNORECASE)


def redact_dsn(url: str) -> str:
    """Return ``url`` with any password (``user:secret@`` or ``?password=``) as ``***``."""
    url = _USERINFO_PASSWORD.sub(r"\g<scheme>:***@", url)
    return _QUERY_PASSWORD.sub(r"\g<key>***", url)


def store_kind(url: str) -> str:
    """Name the store a database URL opens: ``sqlite``, ``postgresql`` or the scheme."""
    scheme = url.partition(":")[0].lower()
    return "postgresql" if scheme in ("postgres", "postgresql") else scheme


def auth_mode(config: ServerConfig) -> str:
    """Describe the auth the server enforces, without a secret."""
    if not config.auth_enabled:
        return "off (no tokens: bind to loopback only)"
    parts = []
    if config.admin_token is not None:
        parts.append("admin token")
    if config.runner_tokens:
        count = len(config.runner_tokens)
        parts.append(f"{count} runner token{'s' if count != 1 else ''}")
    return "bearer tokens (" + ", ".join(parts) + ")"


def log_banner(url: str, config: ServerConfig, http: str) -> None:
    """Log the start-up banner: where the server listens, on what store, with which auth."""
    store = store_kind(config.database_url)
    dsn = redact_dsn(config.database_url)
    auth = auth_mode(config)
    log.info(
        "pullwake server at %s, serving HTTP with %s; store %s (%s); auth %s",
        url,
        http,
        store,
        dsn,
        auth,
        extra={"url": url, "store": store, "auth": auth, "http": http},
    )


def log_claim(sub_id: str, worker: str, wake_id: str, generation: int) -> None:
    log.info(
        "claim %s by %s (wake %s, generation %d)",
        sub_id,
        worker,
        wake_id,
        generation,
        extra={
            "subscription": sub_id,
            "worker": worker,
            "wake_id": wake_id,
            "generation": generation,
        },
    )


def log_ack(sub_id: str, wake_id: str, generation: int) -> None:
    """Log an ack with ``done`` (the work finished; lease extensions are not logged)."""
    log.info(
        "done %s (wake %s, generation %d)",
        sub_id,
        wake_id,
        generation,
        extra={"subscription": sub_id, "wake_id": wake_id, "generation": generation},
    )


def log_release(sub_id: str, wake_id: str, generation: int) -> None:
    log.info(
        "release %s (wake %s, generation %d)",
        sub_id,
        wake_id,
        generation,
        extra={"subscription": sub_id, "wake_id": wake_id, "generation": generation},
    )


def log_lease_expired(lease: ExpiredLease) -> None:
    """Log one lease the sweep cleared: its holder let it lapse, and the work is woken again."""
    log.info(
        "lease expired %s held by %s (wake %s, generation %d); waking it again",
        lease.subscription_id,
        lease.worker,
        lease.wake_id,
        lease.generation,
        extra={
            "subscription": lease.subscription_id,
            "worker": lease.worker,
            "wake_id": lease.wake_id,
            "generation": lease.generation,
        },
    )
