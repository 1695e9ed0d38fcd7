"""The store contract: what the HTTP layer may ask of a database, and nothing more.

Theory of operation
-------------------
All durable state lives behind :class:`Store`: streams and their messages, pull-wake
subscriptions (links, cursors, generation, holder, lease), the wake events they append, the
signing secret for claim tokens, and the runner registry. The HTTP layer never sees SQL and
never decides a wake: every operation that reads then writes runs as **one transaction** inside
the store, so two server processes on one PostgreSQL can never double-claim, and a crash between
two statements can never leave half a claim.

There is one implementation of the rules (``server/store/rules/``, synchronous code over a
small dialect-neutral transaction) and two dialects (SQLite and PostgreSQL). Calls reach the
database through ``anyio.to_thread`` so the server runs on asyncio and trio alike.

Change notification: after a transaction that appended to a stream commits, the store tells
every local waiter on that path (SQLite: in-process; PostgreSQL: ``NOTIFY`` on commit, so
waiters in other server processes wake too). ``wait_for_change`` never polls on a timer.

Every error the store raises is a :class:`~pullwake.server.errors.StoreError` subclass with an
HTTP status and a short code; driver errors are translated at one edge (``map_store_errors``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import attrs

from pullwake.server.names import DEFAULT_LEASE_TTL_MS

# -- value types ----------------------------------------------------------------------------

#: The offset a reader passes to start from the beginning of a stream.
START_OFFSET = "-1"
#: The offset a reader passes to start at the tail.
NOW_OFFSET = "now"


@attrs.frozen
class StreamMeta:
    path: str
    content_type: str
    #: The offset after the last message: what a reader passes to read only newer data.
    #: Invariant: minted by the store (never ``START_OFFSET`` or ``NOW_OFFSET``).
    tail_offset: str
    created_at_ms: int
    #: True once the stream was closed: it takes no more appends, ever.
    closed: bool = False
    #: The sliding TTL window in seconds (``Stream-TTL``), or None.
    ttl_seconds: int | None = None
    #: The absolute expiry (``Stream-Expires-At``) in epoch ms, or None.
    expires_at_ms: int | None = None


@attrs.frozen
class Fork:
    """What a new stream forks from: ``source`` up to ``offset`` (its tail when None), then
    ``sub_offset`` more bytes (or, for JSON, messages) of the next append."""

    source: str
    offset: str | None = None
    sub_offset: int = 0


@attrs.frozen
class StreamOptions:
    """How a stream is created, besides its content type (all optional)."""

    #: A sliding TTL in seconds; each read or write restarts it. Not with ``expires_at_ms``.
    ttl_seconds: int | None = None
    #: An absolute expiry in epoch ms. Not with ``ttl_seconds``.
    expires_at_ms: int | None = None
    #: Create the stream closed (its initial items are then all it will ever hold).
    closed: bool = False
    fork: Fork | None = None


@attrs.frozen
class Message:
    #: The offset of this message: reading "after" it starts with the next one.
    offset: str
    #: The bytes as appended (for JSON streams: one JSON value, serialized).
    data: bytes


@attrs.frozen
class ReadResult:
    messages: tuple[Message, ...]
    #: Where the next read starts: the last returned message's offset, or the tail when none
    #: was returned. Invariant: minted by the store, never ``START_OFFSET`` or ``NOW_OFFSET``,
    #: so callers hand it on as it is.
    next_offset: str
    #: True when ``next_offset`` is the tail.
    up_to_date: bool
    #: True when the stream was closed at the time of the read (EOF once ``up_to_date``).
    closed: bool = False


@attrs.frozen
class Producer:
    """An idempotent producer's claim on one append: ``Producer-Id``/``-Epoch``/``-Seq``."""

    id: str
    epoch: int
    seq: int


@attrs.frozen
class AppendResult:
    #: The new tail. Invariant: minted by the store (never a sentinel).
    next_offset: str
    #: (wake stream path, wake event) pairs appended in the same transaction.
    wakes: tuple[tuple[str, bytes], ...] = ()
    #: True when an idempotent producer retried an append already applied: nothing was added.
    duplicate: bool = False
    #: The producer's state after this append: its epoch and highest accepted sequence number.
    producer: Producer | None = None
    #: True when the stream is closed after this append (closed by it or before).
    closed: bool = False


@attrs.frozen
class SubscriptionConfig:
    """A subscription's configuration, normalised (sorted streams, defaults set).

    A ``pull-wake`` subscription appends wake events to ``wake_stream``; a ``webhook`` one has
    no wake stream (``""``) and is woken by a signed POST to ``webhook_url`` instead."""

    wake_stream: str
    pattern: str | None = None
    streams: tuple[str, ...] = ()
    lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS
    description: str | None = None
    type: Literal["pull-wake", "webhook"] = "pull-wake"
    #: Invariant: set exactly when ``type`` is ``webhook``.
    webhook_url: str | None = None


@attrs.frozen
class LinkedStream:
    path: str
    link_type: Literal["glob", "explicit"]
    acked_offset: str
    tail_offset: str

    @property
    def has_pending(self) -> bool:
        return self.tail_offset > self.acked_offset


@attrs.frozen
class Subscription:
    id: str
    config: SubscriptionConfig
    streams: tuple[LinkedStream, ...]
    created_at_ms: int
    generation: int
    wake_id: str | None
    holder: str | None
    lease_expires_at_ms: int | None


@attrs.frozen
class InlineRead:
    """Messages of one claimed JSON stream read in the claim's own transaction (the
    ``inline-messages`` extension): from its acked offset, within the answer's byte budget."""

    path: str
    #: Each message as stored: one serialized JSON value.
    messages: tuple[bytes, ...]
    #: Where a plain read continues: the last message's offset (the tail when up to date).
    next_offset: str
    #: True when ``next_offset`` is the stream's tail (nothing more to read for this claim).
    up_to_date: bool


@attrs.frozen
class Claim:
    wake_id: str
    generation: int
    token: str
    streams: tuple[LinkedStream, ...]
    lease_ttl_ms: int
    #: The pending messages carried in the answer (only when asked for: ``inline_bytes``).
    messages: tuple[InlineRead, ...] = ()


@attrs.frozen
class AckItem:
    stream: str
    offset: str


@attrs.frozen
class AckResult:
    next_wake: bool
    #: The claim a done-ack took for ``claim_next_worker`` (the ``claim-next`` extension).
    next_claim: Claim | None = None


@attrs.frozen
class ExpiredLease:
    """One lease the sweep cleared: the claim that lapsed (its work is woken again)."""

    subscription_id: str
    wake_id: str
    generation: int
    #: The runner that held the claim and let its lease run out.
    worker: str


@attrs.frozen
class Runner:
    id: str
    label: str | None
    wake_stream: str | None
    wake_stream_offset: str | None
    registered_at_ms: int
    last_heartbeat_at_ms: int | None
    lease_ms: int | None
    #: The runner's own report in its last heartbeat (``status`` "stopped" means a clean stop).
    diagnostics: dict[str, object]


# -- the contract ---------------------------------------------------------------------------


class Store(Protocol):
    """The operations the server needs; each one is a single transaction.

    Errors (all ``StoreError`` subclasses, see ``server/errors.py``), by code:

    * 400 ``BadRequest``: ``INVALID_OFFSET`` (not ``-1``, ``now`` or a minted offset),
      ``INVALID_PATH`` (empty, leading ``/``, empty/``.``/``..`` segment, ``*`` in a stream
      path, first segment ``__ds``), ``INVALID_PATTERN``, ``INVALID_SUBSCRIPTION`` (type,
      lease_ttl_ms outside 1000..600000, neither pattern nor streams), ``INVALID_ID``,
      ``EMPTY_APPEND``, ``WAKE_STREAM_NOT_JSON``, ``BAD_REQUEST`` (other bad values).
    * 401 ``Unauthorized``: ``INVALID_TOKEN`` (malformed or forged), ``LEASE_EXPIRED`` (the
      token's lease lapsed; claim again on the next wake).
    * 404 ``NotFound``: ``STREAM_NOT_FOUND`` (also an expired stream),
      ``SUBSCRIPTION_NOT_FOUND`` (also for claim, ack and release on a deleted subscription:
      nothing is advanced), ``RUNNER_NOT_FOUND``.
    * 409 ``Conflict``: ``STREAM_EXISTS``, ``SUBSCRIPTION_EXISTS``, ``OFFSET_OUT_OF_RANGE``
      (a read offset past the stream's tail), ``ALREADY_CLAIMED`` (``extra``:
      ``current_holder``, ``generation``), ``NO_PENDING_WORK``, ``FENCED``, ``INVALID_ACK``,
      ``STREAM_SEQ_CONFLICT`` (a ``Stream-Seq`` not above the last one), ``PRODUCER_SEQ_GAP``,
      ``STREAM_CLOSED`` (an append to a closed stream), ``SOURCE_DELETED`` (a fork of a
      soft-deleted stream).
    * 403 ``Forbidden``: ``PRODUCER_FENCED`` (an idempotent producer's epoch is stale).
    * 410 ``Gone``: ``STREAM_GONE`` (a soft-deleted stream: forks still read it).
    * 503 ``StoreUnavailable``: the database cannot be reached, or the store is not open
      (``STORE_NOT_OPEN``) or closed (``STORE_CLOSED``).

    Offsets are exactly 20 decimal digits (``offsets.OFFSET_WIDTH``), from one counter shared
    by all streams of a store: fixed width, URL-safe, sortable, and still growing across a
    stream deleted and created again. A message's offset is the position right after it;
    an empty stream's tail is a real offset. ``now_ms`` parameters let tests drive lease
    expiry without sleeping.
    """

    async def open(self) -> None:
        """Connect, apply pending migrations, load or create the token-signing secret."""

    async def aclose(self) -> None:
        """Release connections and wake every ``wait_for_change`` so it can return."""

    # streams ----------------------------------------------------------------------------
    async def create_stream(
        self,
        path: str,
        content_type: str | None,
        now_ms: int,
        *,
        items: Sequence[bytes] = (),
        options: StreamOptions | None = None,
    ) -> tuple[bool, StreamMeta]:
        """Create a stream holding ``items``, in one transaction; ``(True, meta)`` when new,
        ``(False, meta)`` when it already exists with the same configuration (content type,
        TTL or expiry, closure, fork source, offset and sub-offset; ``items`` are then
        ignored), ``Conflict("STREAM_EXISTS")`` otherwise (also for the path of a
        soft-deleted stream). Links the stream to every subscription whose pattern matches or
        that names it, at its tail before ``items``.

        ``content_type`` None means ``application/octet-stream``, or for a fork its source's
        type. Content types are compared normalised (media type and parameter names
        lower-cased, no spaces around ``;``), and ``meta.content_type`` is the normalised form.

        ``options`` (see :class:`StreamOptions`): a sliding TTL or an absolute expiry (both is
        ``BadRequest("INVALID_EXPIRY")``); created closed; a fork of a live source
        (``NotFound`` missing, ``Conflict("SOURCE_DELETED")`` soft-deleted,
        ``Conflict("CONTENT_TYPE_MISMATCH")`` another type, ``BadRequest`` for an offset
        past its tail or a sub-offset past the next append). A fork with neither TTL nor
        expiry inherits its source's. An expired stream at ``path`` is removed first."""
        ...

    async def stream(self, path: str, *, now_ms: int | None = None) -> StreamMeta:
        """Metadata of one stream; ``NotFound`` when missing or expired (as of ``now_ms``,
        the wall clock when None), ``Gone`` when soft-deleted. Never restarts a TTL."""
        ...

    async def append(
        self,
        path: str,
        items: Sequence[bytes],
        now_ms: int,
        *,
        content_type: str | None = None,
        writer_seq: str | None = None,
        producer: Producer | None = None,
        close: bool = False,
    ) -> AppendResult:
        """Append ``items`` (one message each) in one transaction; issue wakes for every
        subscription that now has pending work and none in flight. With ``content_type``, the
        stream must hold that type (else ``Conflict("CONTENT_TYPE_MISMATCH")``, nothing
        appended): the check and the append are one transaction.

        ``producer``: an idempotent producer's (id, epoch, seq), checked first (see
        ``rules/producers.py``): a retry of an accepted append returns ``duplicate=True`` and
        appends nothing. ``writer_seq``: a ``Stream-Seq`` value that must sort byte-wise after
        the stream's last one (``Conflict("STREAM_SEQ_CONFLICT")`` otherwise).

        ``close`` closes the stream after the items (``items`` may then be empty). A closed
        stream refuses appends with ``Conflict("STREAM_CLOSED")`` (its headers carry
        ``Stream-Closed`` and the final offset) before any content type check; a close-only
        append to it succeeds and changes nothing. Restarts a sliding TTL."""
        ...

    async def read(
        self, path: str, offset: str, max_bytes: int, *, now_ms: int | None = None
    ) -> ReadResult:
        """Messages after ``offset`` (``START_OFFSET`` or ``NOW_OFFSET`` allowed), at most
        about ``max_bytes`` (always at least one message when any is there), and at most
        10000 messages. ``NOW_OFFSET`` returns no messages and the tail. An offset past the
        tail is ``Conflict("OFFSET_OUT_OF_RANGE")``. A fork's read sees its source's messages
        up to the fork point, then its own. Never restarts a TTL (see ``touch_stream``)."""
        ...

    async def touch_stream(self, path: str, now_ms: int) -> None:
        """Restart the sliding TTL of a live stream (a read happened); nothing otherwise."""
        ...

    async def delete_stream(self, path: str, *, now_ms: int | None = None) -> None:
        """Delete a stream and its links (``NotFound``, ``Gone`` when soft-deleted). A stream
        that forks still read is soft-deleted: its path stays taken and its messages stay
        for the forks; it is removed with the last of them."""
        ...

    async def expire_streams(self, now_ms: int) -> int:
        """Remove streams whose TTL or expiry passed, as ``delete_stream`` does; return how
        many (a bounded batch: call again while it returns a full one)."""
        ...

    def change_mark(self, path: str) -> int:
        """Return a mark of the changes announced for ``path`` so far, for
        ``wait_for_change(since=...)``."""
        ...

    async def wait_for_change(
        self, path: str, offset: str, timeout: float, *, since: int | None = None
    ) -> bool:
        """Wait until ``path``'s tail moves past ``offset``, it is deleted or closed, or
        ``timeout`` seconds pass; return True when something changed. Never polls on a timer.

        Returns at once (True) when the tail is already past ``offset`` or the stream does
        not exist or is closed; ``NOW_OFFSET`` means "past the tail as it is now". Returns
        False on timeout and when the store closes.

        ``since``: a :meth:`change_mark` taken before the read that found ``offset`` to be the
        tail. When no change of ``path`` was announced since, the store trusts that read
        instead of looking at the tail again."""
        ...

    # subscriptions ------------------------------------------------------------------------
    async def put_subscription(
        self, sub_id: str, config: SubscriptionConfig, now_ms: int
    ) -> tuple[bool, Subscription]:
        """Create (True) or re-confirm (False) a subscription; ``Conflict`` if the id exists
        with another configuration.

        The configuration is validated and normalised first (streams sorted and
        de-duplicated); the comparison is on the normalised form, description included. A
        missing wake stream is created as ``application/json``; an existing one must be JSON.
        Existing matching streams are linked at their tail; a glob never links the
        subscription's own wake stream."""
        ...

    async def subscription(self, sub_id: str) -> Subscription: ...

    async def delete_subscription(self, sub_id: str) -> None: ...

    async def add_streams(self, sub_id: str, paths: Sequence[str], now_ms: int) -> None:
        """Name streams explicitly (idempotent). Existing streams are linked at their tail; a
        named stream that does not exist yet is linked when it is created."""
        ...

    async def remove_stream(self, sub_id: str, path: str, now_ms: int) -> None:
        """Drop an explicit name (idempotent); a link the pattern also makes stays (glob)."""
        ...

    async def claim(self, sub_id: str, worker: str, now_ms: int, *, inline_bytes: int = 0) -> Claim:
        """Start a lease for ``worker``: ``NO_PENDING_WORK`` / ``ALREADY_CLAIMED`` otherwise.
        A lapsed lease is cleared first (and its pending work re-woken).

        ``inline_bytes`` > 0: read each pending JSON stream from its acked offset in the same
        transaction, at most that many message bytes in all (``Claim.messages``); a stream
        whose first message alone is over what remains, or that is not JSON, is left out."""
        ...

    async def ack(
        self,
        sub_id: str,
        token: str,
        wake_id: str,
        generation: int,
        acks: Sequence[AckItem],
        done: bool,
        now_ms: int,
        *,
        claim_next_worker: str | None = None,
        inline_bytes: int = 0,
    ) -> AckResult:
        """Apply inclusive acks all-or-nothing (``INVALID_ACK``: unlinked stream, not an
        offset of that stream or its tail, before the cursor, past the tail); without
        ``done`` extend the lease, with ``done`` end the claim and re-wake pending work.

        Checked first, in this order: ``INVALID_TOKEN``, ``SUBSCRIPTION_NOT_FOUND``,
        ``LEASE_EXPIRED`` (the token's lease lapsed: the lapse is committed and pending work
        re-woken), ``FENCED`` (not the current generation/wake_id/holder, in token or body).

        ``claim_next_worker`` with ``done`` on a pull-wake subscription: when work is pending
        after the acks, claim it for that worker in the same transaction (as :meth:`claim`,
        with ``inline_bytes``) instead of appending a wake event: ``AckResult.next_claim``."""
        ...

    async def release(
        self, sub_id: str, token: str, wake_id: str, generation: int, now_ms: int
    ) -> None:
        """End the claim without acking (same checks as ``ack``); re-wake pending work."""
        ...

    async def expire_leases(self, now_ms: int) -> tuple[ExpiredLease, ...]:
        """Clear every lease past its expiry and re-wake pending work; return the cleared
        leases (ordered by subscription id), so each can be logged with its ids."""
        ...

    # webhooks -----------------------------------------------------------------------------
    async def webhook_key_seed(self, fresh: str) -> str:
        """Return the stored Ed25519 seed (base64url) that signs webhook deliveries, storing
        ``fresh`` when there is none yet, so a restart keeps the key and its ``kid``."""
        ...

    async def woken_webhooks(self) -> tuple[str, ...]:
        """Return the ids of webhook subscriptions with a wake in flight that nobody holds:
        the deliveries the server owes."""
        ...

    # runner registry ----------------------------------------------------------------------
    async def register_runner(
        self, runner_id: str, label: str | None, wake_stream: str | None, now_ms: int
    ) -> tuple[bool, Runner]:
        """Register (True) or re-register (False); a re-registration keeps the stored
        ``wake_stream_offset``, heartbeat fields and ``registered_at_ms``, and replaces
        ``label`` and ``wake_stream`` with the given values."""
        ...

    async def heartbeat(
        self,
        runner_id: str,
        lease_ms: int,
        wake_stream_offset: str | None,
        diagnostics: dict[str, object],
        now_ms: int,
    ) -> Runner:
        """Record a heartbeat (``RUNNER_NOT_FOUND`` if unknown): ``lease_ms`` >= 1, the offset
        only when not None (the stored one is kept otherwise), diagnostics (a JSON object,
        at most 64 KiB as JSON), and ``now_ms`` as ``last_heartbeat_at_ms``."""
        ...

    async def runner(self, runner_id: str) -> Runner:
        """One runner, or ``NotFound("RUNNER_NOT_FOUND")``."""
        ...

    async def claims_held_by(self, worker: str) -> tuple[Subscription, ...]:
        """Subscriptions whose lease ``worker`` holds (for the health view), including a
        lapsed lease not yet cleared: compare ``lease_expires_at_ms`` with the clock."""
        ...
