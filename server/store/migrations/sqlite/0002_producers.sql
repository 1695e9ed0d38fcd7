-- Writer sequencing and idempotent producers (Durable Streams `Stream-Seq`, `Producer-*`).
-- `writer_seq` is the last `Stream-Seq` accepted on a stream (compared byte-wise); `producers`
-- holds each producer's epoch and last accepted sequence number, per stream.

ALTER TABLE streams ADD COLUMN writer_seq TEXT;

CREATE TABLE producers (
    stream_id INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    producer_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (stream_id, producer_id)
);
