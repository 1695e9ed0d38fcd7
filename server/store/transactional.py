"""The async face of a store: the :class:`~pullwake.server.store.base.Store` contract, written
once over a dialect that can run one synchronous transaction body in a worker thread.

Theory of operation
-------------------
Every operation becomes ``await self._call(rules.<rule>, ...)``: the rule runs off the event
loop inside one transaction the dialect opens and commits. By default (PostgreSQL) that is a
worker thread (``anyio.to_thread``, bounded by a :class:`anyio.CapacityLimiter` the size of the
dialect's connection pool) per call; a dialect may override :meth:`TransactionalStore._run` with
threads of its own (SQLite: one writer thread that commits queued writes in groups). Either
way the thread returns an :class:`Outcome`: the rule's value, the paths it changed, and an
error to raise after commit (see ``rules.CommitThenRaise``). Back in the event loop the change
board is told about the changed paths, so waiters are only ever touched from the loop.

The thread call and the notification are shielded from cancellation together: a worker thread
cannot be interrupted anyway, and a committed change must not lose its notification because
the caller was cancelled meanwhile. The cancellation is delivered right after.

States: ``new`` -> ``open`` (after :meth:`open` succeeded) -> ``closed`` (after
:meth:`aclose`). Calls outside ``open`` raise ``StoreUnavailable``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import anyio
import anyio.lowlevel
import attrs

from pullwake.server.errors import StoreError, StoreUnavailable
from pullwake.server.store import rules
from pullwake.server.store.base import (
    NOW_OFFSET,
    START_OFFSET,
    AckItem,
    AckResult,
    AppendResult,
    Claim,
    ExpiredLease,
    Producer,
    ReadResult,
    Runner,
    StreamMeta,
    StreamOptions,
    Subscription,
    SubscriptionConfig,
)
from pullwake.server.store.changes import ChangeBoard
from pullwake.server.store.offsets import parse_offset
from pullwake.server.store.tokens import new_secret

T = TypeVar("T")


def _now(now_ms: int | None) -> int:
    """``now_ms``, or the wall clock (epoch ms) when the caller passes none."""
    return int(time.time() * 1000) if now_ms is None else now_ms


@attrs.frozen
class Outcome:
    """What a transaction body left behind once its transaction ended."""

    value: Any
    #: Each changed path and its new tail position (None when not a plain append).
    changed: Mapping[str, int | None]
    #: Raised after the commit (and after waiters were told about ``changed``).
    error: StoreError | None = None


def run_body(
    tx: rules.Transaction,
    body: Callable[..., Any],
    args: Sequence[Any],
    commit: Callable[[], None],
    rollback: Callable[[], None],
) -> Outcome:
    """Run one rule inside an open transaction and end it: commit, or roll back and raise."""
    try:
        value = body(tx, *args)
    except rules.CommitThenRaise as deferred:
        commit()
        return Outcome(None, dict(tx.changed), deferred.error)
    except BaseException:
        rollback()
        raise
    commit()
    return Outcome(value, dict(tx.changed))


class TransactionalStore:
    """The contract over a dialect; subclasses implement the ``_*_sync`` hooks."""

    #: Name used in messages ("SQLite", "PostgreSQL").
    dialect_name = "database"

    def __init__(self, *, connections: int) -> None:
        self._changes = ChangeBoard()
        self._limiter = anyio.CapacityLimiter(connections)
        # Invariant: a non-empty secret whenever _state == "open".
        self._secret = ""
        # Invariant: moves only new -> open -> closed (or new -> closed).
        self._state: Literal["new", "open", "closed"] = "new"

    # -- dialect hooks (worker threads) --------------------------------------------------------

    def _open_sync(self) -> None:
        """Connect and apply pending migrations."""
        raise NotImplementedError

    def _close_sync(self) -> None:
        """Release every connection; must be safe after a failed or partial open."""
        raise NotImplementedError

    def _transact_sync(self, body: Callable[..., Any], args: Sequence[Any], write: bool) -> Outcome:
        """Run ``body(tx, *args)`` in one transaction, with driver errors translated."""
        raise NotImplementedError

    async def _started(self) -> None:
        """Run in the event loop once the store is open (PostgreSQL starts listening here)."""

    async def _stopping(self) -> None:
        """Run in the event loop when the store closes (or fails to open), before connections
        are released; must undo whatever part of ``_started`` ran."""

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, apply pending migrations, load or create the token-signing secret."""
        if self._state != "new":
            raise StoreUnavailable(
                f"this {self.dialect_name} store was already opened; make a new one instead",
                code="STORE_REUSED",
            )
        try:
            await anyio.to_thread.run_sync(self._open_sync, limiter=self._limiter)
            self._state = "open"
            self._secret = await self._call(rules.load_secret, new_secret())
            await self._started()
        except BaseException:
            self._state = "new"
            with anyio.CancelScope(shield=True):
                await self._stopping()
                await anyio.to_thread.run_sync(self._close_sync)
            raise

    async def aclose(self) -> None:
        """Release connections and wake every ``wait_for_change`` so it can return."""
        if self._state == "closed":
            return
        was_open = self._state == "open"
        self._state = "closed"
        self._changes.close()
        with anyio.CancelScope(shield=True):
            if was_open:
                await self._stopping()
            await anyio.to_thread.run_sync(self._close_sync)

    async def __aenter__(self) -> TransactionalStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._state == "new":
            raise StoreUnavailable(
                f"the {self.dialect_name} store is not open yet: await store.open() first",
                code="STORE_NOT_OPEN",
            )
        if self._state == "closed":
            raise StoreUnavailable(
                f"the {self.dialect_name} store is closed (the server is shutting down); retry "
                "against a running server",
                code="STORE_CLOSED",
            )

    async def _call(self, body: Callable[..., T], *args: Any, write: bool = True) -> T:
        self._check_open()
        outcome = await self._run(body, args, write)
        await anyio.lowlevel.checkpoint_if_cancelled()
        if outcome.error is not None:
            raise outcome.error
        value: T = outcome.value
        return value

    async def _run(self, body: Callable[..., Any], args: Sequence[Any], write: bool) -> Outcome:
        """Run one transaction off the loop and tell the change board what it changed; shielded
        from cancellation throughout. A dialect with threads of its own overrides this (and
        must keep those promises); the default hops to a worker thread per call."""
        with anyio.CancelScope(shield=True):
            outcome: Outcome = await anyio.to_thread.run_sync(
                self._transact_sync, body, args, write, limiter=self._limiter
            )
            self._changes.notify(outcome.changed)
        return outcome

    def statistics(self) -> dict[str, object]:
        """Counters for metrics: the state, and how many waiters watch how many paths."""
        return {"state": self._state, **self._changes.statistics()}

    # -- streams --------------------------------------------------------------------------------

    async def create_stream(
        self,
        path: str,
        content_type: str | None,
        now_ms: int,
        *,
        items: Sequence[bytes] = (),
        options: StreamOptions | None = None,
    ) -> tuple[bool, StreamMeta]:
        return await self._call(
            rules.create_stream, path, content_type, now_ms, list(items), options
        )

    async def stream(self, path: str, *, now_ms: int | None = None) -> StreamMeta:
        return await self._call(rules.stream, path, _now(now_ms), write=False)

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
        return await self._call(
            rules.append, path, list(items), now_ms, content_type, writer_seq, producer, close
        )

    async def read(
        self, path: str, offset: str, max_bytes: int, *, now_ms: int | None = None
    ) -> ReadResult:
        return await self._call(rules.read, path, offset, max_bytes, _now(now_ms), write=False)

    async def touch_stream(self, path: str, now_ms: int) -> None:
        await self._call(rules.touch_stream, path, now_ms)

    async def delete_stream(self, path: str, *, now_ms: int | None = None) -> None:
        await self._call(rules.delete_stream, path, _now(now_ms))

    async def expire_streams(self, now_ms: int) -> int:
        if not await self._call(rules.streams_due, now_ms, write=False):
            return 0
        return await self._call(rules.expire_streams, now_ms)

    def change_mark(self, path: str) -> int:
        return self._changes.mark(path)

    async def wait_for_change(
        self, path: str, offset: str, timeout: float, *, since: int | None = None
    ) -> bool:
        position: int | None = None
        if offset not in (START_OFFSET, NOW_OFFSET):
            position = parse_offset(offset)
        elif offset == START_OFFSET:
            position = 0
        deadline = anyio.current_time() + max(0.0, timeout)
        while True:
            # Watch first, then look: a change committed in between is still announced.
            with self._changes.watch(path) as watch:
                # Nothing announced for the path since the caller's read began: that read saw
                # the tail, so wait without looking (one query less per wake). Only once.
                trusted = position is not None and since == self.change_mark(path)
                since = None
                if not trusted:
                    tail = await self._call(rules.stream_tail, path, write=False)
                    if position is None:
                        position = tail
                    if tail is None or position is None or tail > position:
                        return True
                assert position is not None  # trusted needs one; a look set it or returned
                while True:
                    with anyio.move_on_at(deadline):
                        await watch.event.wait()
                    if not watch.event.is_set() or self._changes.closed:
                        return False
                    if watch.unknown:
                        break  # a change of unknown extent: look at the store again
                    if watch.tail is not None and watch.tail > position:
                        # An append through this process announced its tail: no need to
                        # ask the store (one query less per wake per reader).
                        return True
                    watch.rearm()  # an older change, already seen: keep waiting

    # -- subscriptions --------------------------------------------------------------------------

    async def put_subscription(
        self, sub_id: str, config: SubscriptionConfig, now_ms: int
    ) -> tuple[bool, Subscription]:
        return await self._call(rules.put_subscription, sub_id, config, now_ms)

    async def subscription(self, sub_id: str) -> Subscription:
        return await self._call(rules.subscription, sub_id, write=False)

    async def delete_subscription(self, sub_id: str) -> None:
        await self._call(rules.delete_subscription, sub_id)

    async def add_streams(self, sub_id: str, paths: Sequence[str], now_ms: int) -> None:
        await self._call(rules.add_streams, sub_id, list(paths), now_ms)

    async def remove_stream(self, sub_id: str, path: str, now_ms: int) -> None:
        await self._call(rules.remove_stream, sub_id, path, now_ms)

    async def claim(self, sub_id: str, worker: str, now_ms: int, *, inline_bytes: int = 0) -> Claim:
        if inline_bytes:
            return await self._call(
                rules.claim_inline, self._secret, sub_id, worker, now_ms, inline_bytes
            )
        return await self._call(rules.claim, self._secret, sub_id, worker, now_ms)

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
        if claim_next_worker is not None:
            return await self._call(
                rules.ack_claim_next,
                self._secret,
                sub_id,
                token,
                wake_id,
                generation,
                list(acks),
                done,
                now_ms,
                claim_next_worker,
                inline_bytes,
            )
        return await self._call(
            rules.ack, self._secret, sub_id, token, wake_id, generation, list(acks), done, now_ms
        )

    async def release(
        self, sub_id: str, token: str, wake_id: str, generation: int, now_ms: int
    ) -> None:
        await self._call(rules.release, self._secret, sub_id, token, wake_id, generation, now_ms)

    async def expire_leases(self, now_ms: int) -> tuple[ExpiredLease, ...]:
        return await self._call(rules.expire_leases, now_ms)

    # -- webhooks -------------------------------------------------------------------------------

    async def webhook_key_seed(self, fresh: str) -> str:
        return await self._call(rules.load_webhook_key, fresh)

    async def woken_webhooks(self) -> tuple[str, ...]:
        return await self._call(rules.woken_webhooks, write=False)

    # -- runner registry ------------------------------------------------------------------------

    async def register_runner(
        self, runner_id: str, label: str | None, wake_stream: str | None, now_ms: int
    ) -> tuple[bool, Runner]:
        return await self._call(rules.register_runner, runner_id, label, wake_stream, now_ms)

    async def heartbeat(
        self,
        runner_id: str,
        lease_ms: int,
        wake_stream_offset: str | None,
        diagnostics: dict[str, object],
        now_ms: int,
    ) -> Runner:
        return await self._call(
            rules.heartbeat, runner_id, lease_ms, wake_stream_offset, diagnostics, now_ms
        )

    async def runner(self, runner_id: str) -> Runner:
        return await self._call(rules.runner, runner_id, write=False)

    async def claims_held_by(self, worker: str) -> tuple[Subscription, ...]:
        return await self._call(rules.claims_held_by, worker, write=False)
