-- Schema version 1. Frozen: later changes go in 002.sql and onwards.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Megaphone broadcast versions the client has seen.
CREATE TABLE broadcasts (
    id      TEXT PRIMARY KEY NOT NULL,
    version TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE subscriptions (
    -- Stable across renewals and server resets: it names the D-Bus object.
    id             INTEGER PRIMARY KEY,
    channel_id     TEXT NOT NULL UNIQUE,
    app_id         TEXT NOT NULL,
    scope          TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    -- Format of the three key columns below; 1 = raw P-256 d, uncompressed point, 16-byte secret.
    key_format     INTEGER NOT NULL DEFAULT 1,
    private_key    BLOB NOT NULL,
    public_key     BLOB NOT NULL,
    auth_secret    BLOB NOT NULL,
    app_server_key BLOB,
    push_count     INTEGER NOT NULL DEFAULT 0,
    last_push      INTEGER NOT NULL DEFAULT 0,
    -- Remaining background messages; -1 = exempt (system subscription).
    quota          INTEGER NOT NULL,
    expired        INTEGER NOT NULL DEFAULT 0,
    system         INTEGER NOT NULL DEFAULT 0,
    bus_name       TEXT,
    created        INTEGER NOT NULL,
    UNIQUE (app_id, scope)
);

-- Decrypted messages not yet acknowledged by their app.
CREATE TABLE messages (
    id              TEXT PRIMARY KEY NOT NULL,
    subscription_id INTEGER NOT NULL REFERENCES subscriptions(id) ON DELETE CASCADE,
    channel_id      TEXT NOT NULL,
    version         TEXT NOT NULL,
    payload         BLOB NOT NULL,
    received        INTEGER NOT NULL,
    ttl             INTEGER NOT NULL,
    topic           TEXT NOT NULL DEFAULT '',
    urgency         TEXT NOT NULL DEFAULT 'normal'
);
CREATE INDEX messages_by_subscription ON messages (subscription_id, received);

-- (channel, version) pairs already processed, to drop the server's redeliveries.
CREATE TABLE seen (
    channel_id TEXT NOT NULL,
    version    TEXT NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (channel_id, version)
) WITHOUT ROWID;
CREATE INDEX seen_by_time ON seen (at);
