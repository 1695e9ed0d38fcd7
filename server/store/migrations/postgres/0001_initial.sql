-- pullwake store, PostgreSQL (schema `pullwake`): streams, messages, subscriptions and their
-- links, runners. Positions (offsets) come from the sequence `offset_seq`.

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE SEQUENCE offset_seq AS BIGINT MINVALUE 1;

CREATE TABLE streams (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    content_type TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    tail_seq BIGINT NOT NULL
);

CREATE TABLE messages (
    seq BIGINT PRIMARY KEY,
    stream_id BIGINT NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    data BYTEA NOT NULL
);

CREATE INDEX messages_by_stream ON messages (stream_id, seq);

CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    config_json TEXT NOT NULL,
    wake_stream TEXT NOT NULL,
    pattern TEXT,
    lease_ttl_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    wake_id TEXT,
    holder TEXT,
    lease_expires_at_ms BIGINT,
    expired_generation BIGINT
);

CREATE INDEX subscriptions_by_holder ON subscriptions (holder);

CREATE TABLE subscription_names (
    sub_id TEXT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    PRIMARY KEY (sub_id, path)
);

CREATE INDEX subscription_names_by_path ON subscription_names (path);

CREATE TABLE links (
    sub_id TEXT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    stream_id BIGINT NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    by_glob INTEGER NOT NULL,
    by_name INTEGER NOT NULL,
    acked_seq BIGINT NOT NULL,
    wake_tail_seq BIGINT,
    PRIMARY KEY (sub_id, stream_id)
);

CREATE INDEX links_by_stream ON links (stream_id);

CREATE TABLE runners (
    id TEXT PRIMARY KEY,
    label TEXT,
    wake_stream TEXT,
    wake_stream_offset TEXT,
    registered_at_ms BIGINT NOT NULL,
    last_heartbeat_at_ms BIGINT,
    lease_ms BIGINT,
    diagnostics_json TEXT NOT NULL
);
