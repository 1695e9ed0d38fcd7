"""Writer sequencing (``Stream-Seq``) and idempotent producers (``Producer-Id/-Epoch/-Seq``).

Both are checked inside the append's transaction, on the stream row the append has locked, so
two racing writers are decided one after the other and never both accepted for one slot.

Idempotent producers
--------------------
A producer is known per stream by its id, with the epoch it last wrote in and the highest
sequence number accepted in that epoch. An append that names a producer is judged by
:func:`judge_producer`, before anything else about the append is decided:

* epoch below the stored one: a zombie from before a restart, fenced (403
  ``PRODUCER_FENCED``; the answer names the current epoch);
* epoch above the stored one (a producer restarted and bumped its epoch): accepted only as
  sequence 0 of the new epoch (else 400), and the old epoch is fenced from then on;
* same epoch: the next sequence number is accepted; one already accepted is a retry whose
  first attempt succeeded, answered as a success that appends nothing (``duplicate``, with the
  highest accepted number, not the request's); one beyond the next is a gap (409
  ``PRODUCER_SEQ_GAP`` with the expected and received numbers): an earlier append was lost.

A producer the stream has never seen starts at sequence 0 in whatever epoch it names.

Writer sequencing
-----------------
``Stream-Seq`` is an opaque string a writer attaches to coordinate with other writers: each
must sort strictly after the last one accepted on the stream, comparing bytes (so ``"10"`` is
below ``"2"``, and ``"B"`` below ``"a"``). A duplicate or regression is 409
``STREAM_SEQ_CONFLICT`` and appends nothing. A producer's duplicate is answered before the
``Stream-Seq`` check: the retry of an append carries the same ``Stream-Seq``, and must still be
the success it was the first time.
"""

from __future__ import annotations

from pullwake.server.errors import BadRequest, Conflict, Forbidden
from pullwake.server.store.base import Producer
from pullwake.server.store.rules.transaction import Transaction, check_int

#: Longest ``Producer-Id`` and ``Stream-Seq`` accepted (bytes as UTF-8).
MAX_TOKEN_BYTES = 256


def check_producer(producer: Producer) -> Producer:
    """Validate a producer's id, epoch and sequence number (400 ``INVALID_PRODUCER``)."""
    if not isinstance(producer.id, str) or not producer.id:
        raise BadRequest("Producer-Id must not be empty.", code="INVALID_PRODUCER")
    if len(producer.id.encode("utf-8", "surrogatepass")) > MAX_TOKEN_BYTES:
        raise BadRequest(
            f"Producer-Id is longer than {MAX_TOKEN_BYTES} bytes; use a shorter id.",
            code="INVALID_PRODUCER",
        )
    check_int(producer.epoch, "Producer-Epoch")
    check_int(producer.seq, "Producer-Seq")
    return producer


def check_writer_seq(writer_seq: str) -> str:
    """Validate a ``Stream-Seq`` value: non-empty, at most :data:`MAX_TOKEN_BYTES`."""
    if not isinstance(writer_seq, str) or not writer_seq:
        raise BadRequest("Stream-Seq must not be empty.", code="INVALID_STREAM_SEQ")
    if len(writer_seq.encode("utf-8", "surrogatepass")) > MAX_TOKEN_BYTES:
        raise BadRequest(
            f"Stream-Seq is longer than {MAX_TOKEN_BYTES} bytes.", code="INVALID_STREAM_SEQ"
        )
    return writer_seq


def _seq_key(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def judge_producer(tx: Transaction, stream_id: int, producer: Producer) -> Producer | None:
    """Decide an idempotent producer's append on a locked stream.

    Return None when the append is new and must be applied (then call
    :func:`record_producer`), or the producer's current state when it is a duplicate. Raise
    ``Forbidden("PRODUCER_FENCED")``, ``BadRequest("PRODUCER_EPOCH_SEQ")`` or
    ``Conflict("PRODUCER_SEQ_GAP")`` otherwise.
    """
    row = tx.fetchone(
        "SELECT epoch, last_seq FROM producers WHERE stream_id = ? AND producer_id = ?",
        (stream_id, producer.id),
    )
    if row is None:
        expected = 0
    else:
        epoch, last_seq = int(row[0]), int(row[1])
        if producer.epoch < epoch:
            fenced = Forbidden(
                f"producer {producer.id!r} wrote in epoch {epoch}; epoch {producer.epoch} is "
                "fenced (another instance took over): stop this instance, or restart it with a "
                "higher epoch",
                code="PRODUCER_FENCED",
                current_epoch=epoch,
            )
            fenced.headers = {"producer-epoch": str(epoch)}
            raise fenced
        if producer.epoch > epoch:
            expected = 0
            if producer.seq != 0:
                raise BadRequest(
                    f"a new epoch ({producer.epoch}) starts at Producer-Seq 0, not {producer.seq}",
                    code="PRODUCER_EPOCH_SEQ",
                )
        elif producer.seq <= last_seq:
            return Producer(producer.id, epoch, last_seq)
        else:
            expected = last_seq + 1
    if producer.seq != expected:
        gap = Conflict(
            f"producer {producer.id!r} sent Producer-Seq {producer.seq} but the next one is "
            f"{expected}: an earlier append was lost; resend from {expected}",
            code="PRODUCER_SEQ_GAP",
            expected_seq=expected,
            received_seq=producer.seq,
        )
        gap.headers = {
            "producer-expected-seq": str(expected),
            "producer-received-seq": str(producer.seq),
        }
        raise gap
    return None


def record_producer(tx: Transaction, stream_id: int, producer: Producer, now_ms: int) -> None:
    """Store ``producer``'s epoch and sequence number as the last accepted."""
    tx.execute(
        "INSERT INTO producers (stream_id, producer_id, epoch, last_seq, updated_at_ms) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream_id, producer_id) DO UPDATE SET "
        "epoch = excluded.epoch, last_seq = excluded.last_seq, "
        "updated_at_ms = excluded.updated_at_ms",
        (stream_id, producer.id, producer.epoch, producer.seq, now_ms),
    )


def advance_writer_seq(tx: Transaction, stream_id: int, path: str, writer_seq: str) -> None:
    """Accept ``writer_seq`` on a locked stream if it sorts after the last one, else 409."""
    row = tx.fetchone("SELECT writer_seq FROM streams WHERE id = ?", (stream_id,))
    last = None if row is None else row[0]
    if last is not None and _seq_key(writer_seq) <= _seq_key(str(last)):
        raise Conflict(
            f"Stream-Seq {writer_seq[:80]!r} is not after the last one accepted on {path!r} "
            f"({str(last)[:80]!r}); Stream-Seq values must increase (compared byte-wise)",
            code="STREAM_SEQ_CONFLICT",
        )
    tx.execute("UPDATE streams SET writer_seq = ? WHERE id = ?", (writer_seq, stream_id))
