-- Stream lifecycle (closure, TTL and expiry, forks) on the streams table.
--   closed          1 once the stream was closed (monotonic: never back to 0)
--   ttl_seconds     the sliding TTL window (Stream-TTL), or NULL
--   expires_at_ms   the absolute expiry (Stream-Expires-At), or NULL
--   deadline_ms     when the stream expires (moved by reads and writes under a TTL), or NULL
--   deleted         1 when deleted while forks still read its messages (soft-deleted)
--   fork_of         the source stream of a fork, or NULL
--   fork_seq        a fork inherits the source's visible messages at positions <= fork_seq
--   fork_anchor_seq the Stream-Fork-Offset the fork was created with (as a position)
--   fork_sub_offset the Stream-Fork-Sub-Offset the fork was created with (0 when absent)

ALTER TABLE streams ADD COLUMN closed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE streams ADD COLUMN ttl_seconds BIGINT;
ALTER TABLE streams ADD COLUMN expires_at_ms BIGINT;
ALTER TABLE streams ADD COLUMN deadline_ms BIGINT;
ALTER TABLE streams ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE streams ADD COLUMN fork_of BIGINT REFERENCES streams (id);
ALTER TABLE streams ADD COLUMN fork_seq BIGINT;
ALTER TABLE streams ADD COLUMN fork_anchor_seq BIGINT;
ALTER TABLE streams ADD COLUMN fork_sub_offset BIGINT;

CREATE INDEX streams_by_deadline ON streams (deadline_ms) WHERE deadline_ms IS NOT NULL;
CREATE INDEX streams_by_source ON streams (fork_of) WHERE fork_of IS NOT NULL;
