"""What a handler sees: the :class:`Claim` it gets, its :class:`Batch` reads, the :class:`Wake`.

A handler is ``async def handler(claim: Claim) -> None`` (:data:`Handler`). It reads the
claimed messages with :meth:`Claim.batches` or :meth:`Claim.messages`, may commit progress with
:meth:`Claim.ack`, and returns (the runner acks ``done``) or raises (the runner releases the
claim). How claims are taken and finished is the claim pipeline's business
(:mod:`.claims`); this module holds only the values a handler touches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs

from .client import AckAnswer, ClaimGrant, Client, StreamState
from .errors import Fenced, LeaseLost, ProtocolViolation, Rejected, RequestFailed
from .offsets import offset_after

__all__ = ["Batch", "Claim", "Handler", "Wake"]


@attrs.frozen
class Wake:
    """A wake event read from the wake stream."""

    subscription_id: str
    stream: str | None = None
    generation: int | None = None
    ts: int | None = None

    @classmethod
    def parse(cls, message: Any) -> Wake | None:
        """Return the wake a wake-stream message holds, or ``None`` if it is no wake."""
        if not isinstance(message, dict) or message.get("type") != "wake":
            return None
        sub = message.get("subscription_id")
        if not isinstance(sub, str) or not sub:
            return None
        stream = message.get("stream")
        generation = message.get("generation")
        ts = message.get("ts")
        return cls(
            sub,
            stream if isinstance(stream, str) else None,
            generation if isinstance(generation, int) else None,
            ts if isinstance(ts, int) else None,
        )


@attrs.frozen
class Batch:
    """One read of a claimed stream: its messages and the offset that acks all of them.

    ``messages`` holds decoded JSON values (JSON streams) or one ``bytes`` item (others).
    Ack ``offset`` (``await claim.ack(batch.stream, batch.offset)``) only once every message of
    the batch is handled: offsets are per read, not per message.
    """

    stream: str
    messages: tuple[Any, ...]
    offset: str


Handler = Callable[["Claim"], Awaitable[None]]


# -- the claim handed to handlers -----------------------------------------------------------


class Claim:
    """A claimed subscription, as the handler sees it.

    ``streams`` is the snapshot the claim took: per stream, the acked offset and the tail to
    read up to. :meth:`batches` and :meth:`messages` read the claimed messages (from the acked
    offset to the snapshot's tail); a failed read raises in the handler, never ends the
    iteration early. :meth:`ack` commits progress and extends the lease. When the handler
    returns, the runner acks ``done`` at the tail of every stream (or past it, when a read
    returned messages appended after the snapshot); when it raises, the claim is released.
    """

    def __init__(self, grant: ClaimGrant, wake: Wake | None, client: Client) -> None:
        self._grant = grant
        self.wake = wake
        self._client = client
        # Invariant: per stream, the offset the server has acked for this claim so far.
        self._acked: dict[str, str] = {s.path: s.acked_offset for s in grant.streams}
        # Invariant: per stream, the end offset of the last batch handed to the handler.
        self._delivered: dict[str, str] = {}
        # Invariant: set (with the reason) once the lease is known to be lost.
        self.lost: LeaseLost | None = None
        self._on_lost: Callable[[LeaseLost], None] | None = None

    @property
    def subscription_id(self) -> str:
        return self._grant.subscription_id

    @property
    def wake_id(self) -> str:
        return self._grant.wake_id

    @property
    def generation(self) -> int:
        return self._grant.generation

    @property
    def lease_ttl_ms(self) -> int:
        return self._grant.lease_ttl_ms

    @property
    def streams(self) -> tuple[StreamState, ...]:
        """The snapshot of every linked stream (acked and tail offsets as claimed)."""
        return self._grant.streams

    @property
    def pending_streams(self) -> tuple[StreamState, ...]:
        """The streams of the snapshot that had messages past their acked offset."""
        return tuple(s for s in self._grant.streams if s.has_pending)

    def stream(self, path: str) -> StreamState:
        """Return the snapshot of one stream; ``KeyError`` if the claim does not cover it."""
        for state in self._grant.streams:
            if state.path == path:
                return state
        raise KeyError(f"claim {self.wake_id} of {self.subscription_id!r} has no stream {path!r}")

    def acked(self, path: str) -> str:
        """Return the offset acked so far on ``path`` in this claim."""
        self.stream(path)
        return self._acked[path]

    async def batches(self, path: str) -> AsyncIterator[Batch]:
        """Yield the claimed messages of ``path`` batch by batch, from the acked offset.

        Raises :class:`~pullwake.runtime.errors.RequestFailed` when a read fails: the handler
        never sees fewer messages than it claimed without knowing it.
        """
        state = self.stream(path)
        tail = state.tail_offset
        offset = self._acked[path]
        # The claim answer's inline read (the inline-messages extension) is the first read
        # from the claimed acked offset: it stands for that GET, the rest is read as usual.
        inline = self._grant.inline.get(path)
        while offset_after(tail, offset):
            if inline is not None and offset == state.acked_offset:
                chunk = inline
            else:
                chunk = await self._client.read(path, offset)
            if not offset_after(chunk.next_offset, offset):
                raise ProtocolViolation(
                    f"reading {path!r} after {offset} returned no progress although the claim's "
                    f"snapshot ends at {tail}",
                    method="GET",
                    url=path,
                )
            offset = chunk.next_offset
            previous = self._delivered.get(path)
            if previous is None or offset_after(offset, previous):
                self._delivered[path] = offset
            yield Batch(path, chunk.messages, offset)

    async def messages(self, path: str) -> AsyncIterator[Any]:
        """Yield the claimed messages of ``path`` one by one (see :meth:`batches`)."""
        async for batch in self.batches(path):
            for message in batch.messages:
                yield message

    async def ack(self, path: str, offset: str) -> None:
        """Commit progress on ``path`` up to ``offset`` (inclusive); extends the lease too.

        Raises :class:`LeaseLost` (and the handler is cancelled) when the lease is gone.
        """
        self.stream(path)
        await self.acknowledge([(path, offset)], done=False)
        if offset_after(offset, self._acked[path]):
            self._acked[path] = offset

    # -- used by the pipeline ------------------------------------------------------------

    def final_acks(self) -> list[tuple[str, str]]:
        """Return the acks that complete the claim: each stream up to its tail or past it."""
        acks = []
        for state in self._grant.streams:
            target = state.tail_offset
            delivered = self._delivered.get(state.path)
            if delivered is not None and offset_after(delivered, target):
                target = delivered
            if offset_after(target, self._acked[state.path]):
                acks.append((state.path, target))
        return acks

    async def acknowledge(
        self, acks: list[tuple[str, str]], *, done: bool, timeout: float | None = None
    ) -> bool:
        """Send one ack of several streams (``done`` ends the claim); the pipeline's ack.

        Handlers use :meth:`ack`. Raises :class:`LeaseLost` once the lease is gone.
        """
        answer = await self.finish(acks, done=done, timeout=timeout)
        return answer.next_wake

    async def finish(
        self,
        acks: list[tuple[str, str]],
        *,
        done: bool = True,
        claim_next: str | None = None,
        timeout: float | None = None,
    ) -> AckAnswer:
        """Send one ack as :meth:`acknowledge` does; with ``claim_next`` (the worker) a done-ack
        may come back with the next claim (the claim-next extension). The pipeline's ack."""
        if self.lost is not None:
            raise self.lost
        try:
            return await self._client.finish(
                self._grant, acks, done=done, claim_next=claim_next, timeout=timeout
            )
        except (Fenced, Rejected) as exc:
            self._mark_lost(exc)
            assert self.lost is not None
            raise self.lost from exc

    def on_lease_lost(self, callback: Callable[[LeaseLost], None]) -> None:
        """Call ``callback`` once the lease is found lost (the pipeline cancels the handler)."""
        self._on_lost = callback

    def _mark_lost(self, cause: RequestFailed) -> None:
        if self.lost is None:
            self.lost = LeaseLost(
                f"the lease of claim {self.wake_id} (generation {self.generation}) on "
                f"subscription {self.subscription_id!r} was lost ({cause.code or cause.status}); "
                "the handler was cancelled and the server will wake the subscription again. "
                "Keep handlers from blocking the event loop longer than the lease "
                f"({self.lease_ttl_ms} ms)"
            )
            if self._on_lost is not None:
                self._on_lost(self.lost)

    @property
    def grant(self) -> ClaimGrant:
        return self._grant

    def describe(self) -> str:
        """Return a short name for logs and errors: subscription, wake id and generation."""
        return (
            f"handler for subscription {self.subscription_id!r} "
            f"(wake {self.wake_id}, generation {self.generation})"
        )

    def log_fields(self) -> dict[str, object]:
        """Return the fields of a log line about this claim (a log call's ``extra=``)."""
        return {
            "subscription": self.subscription_id,
            "wake_id": self.wake_id,
            "generation": self.generation,
        }

    def __repr__(self) -> str:
        return f"<Claim {self.subscription_id!r} wake={self.wake_id} gen={self.generation}>"
