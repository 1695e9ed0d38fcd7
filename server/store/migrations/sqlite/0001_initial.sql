-- pullwake store, SQLite: streams, messages, subscriptions and their links, runners.
-- Positions (offsets) come from the single row of `counters` named 'offset'.

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

INSERT INTO counters (name, value) VALUES ('offset', 0);

CREATE TABLE streams (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    content_type TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    tail_seq INTEGER NOT NULL
);

CREATE TABLE messages (
    seq INTEGER PRIMARY KEY,
    stream_id INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    data BLOB NOT NULL
);

CREATE INDEX messages_by_stream ON messages (stream_id, seq);

CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    config_json TEXT NOT NULL,
    wake_stream TEXT NOT NULL,
    pattern TEXT,
    lease_ttl_ms INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    wake_id TEXT,
    holder TEXT,
    lease_expires_at_ms INTEGER,
    expired_generation INTEGER
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
    stream_id INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    by_glob INTEGER NOT NULL,
    by_name INTEGER NOT NULL,
    acked_seq INTEGER NOT NULL,
    wake_tail_seq INTEGER,
    PRIMARY KEY (sub_id, stream_id)
);

CREATE INDEX links_by_stream ON links (stream_id);

CREATE TABLE runners (
    id TEXT PRIMARY KEY,
    label TEXT,
    wake_stream TEXT,
    wake_stream_offset TEXT,
    registered_at_ms INTEGER NOT NULL,
    last_heartbeat_at_ms INTEGER,
    lease_ms INTEGER,
    diagnostics_json TEXT NOT NULL
);
