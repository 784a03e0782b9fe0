//! The push server's own SQLite file: its secret, users, channels and undelivered messages.
//!
//! Separate from the daemon's store on purpose: this is the *server's* state, and it
//! outlives a server restart so messages for offline clients survive one, as they survive
//! an autopush deploy. SQL stays in this file.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    uaid       TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS channels (
    uaid       TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    vapid_key  BLOB,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (uaid, channel_id)
);
CREATE INDEX IF NOT EXISTS channels_by_id ON channels (channel_id);
CREATE TABLE IF NOT EXISTS messages (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    version      TEXT NOT NULL UNIQUE,
    uaid         TEXT NOT NULL,
    channel_id   TEXT NOT NULL,
    data         TEXT,
    headers      TEXT,
    topic        TEXT,
    urgency      TEXT,
    ttl          INTEGER NOT NULL,
    expiry_ms    INTEGER NOT NULL,
    stored_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_uaid ON messages (uaid, seq);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open push server database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("push server database {path} has schema version {found}, newer than {SCHEMA_VERSION}")]
    TooNew { path: PathBuf, found: i64 },
    #[error("push server database: {0}")]
    Sql(#[from] rusqlite::Error),
}

impl StoreError {
    /// Another process holds the lock: worth a 503 with Retry-After, not a 500.
    pub fn is_busy(&self) -> bool {
        let StoreError::Sql(e) = self else {
            return false;
        };
        matches!(
            e.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        )
    }
}

/// A notification as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Notification {
    pub channel_id: String,
    pub version: String,
    /// The body, base64url without padding, as sent in the `data` field.
    pub data: Option<String>,
    /// `encoding` and, for aesgcm, `encryption` and `crypto_key`.
    pub headers: Option<BTreeMap<String, String>>,
}

impl Notification {
    pub fn to_json(&self) -> String {
        let mut msg = serde_json::Map::new();
        msg.insert("messageType".into(), "notification".into());
        msg.insert("channelID".into(), self.channel_id.clone().into());
        msg.insert("version".into(), self.version.clone().into());
        if let Some(data) = &self.data {
            msg.insert("data".into(), data.clone().into());
        }
        if let Some(headers) = &self.headers {
            let headers = headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
                .collect();
            msg.insert("headers".into(), serde_json::Value::Object(headers));
        }
        serde_json::Value::Object(msg).to_string()
    }
}

/// A notification with what only the server keeps.
#[derive(Clone, Debug)]
pub(crate) struct NewMessage {
    pub uaid: String,
    pub notification: Notification,
    pub topic: Option<String>,
    pub urgency: Option<String>,
    pub ttl: u32,
    pub expiry_ms: i64,
    pub stored_at_ms: i64,
}

pub(crate) enum ChannelLookup {
    NoUser,
    NoChannel,
    Found,
}

pub(crate) struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found,
            });
        }
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_err)?;
        Ok(Store { conn })
    }

    /// The endpoint-token HMAC key, created on first use and kept so endpoints stay valid
    /// across restarts.
    pub fn secret(&self) -> Result<Vec<u8>, StoreError> {
        let existing: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'secret'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(secret) = existing.filter(|s| s.len() >= 32) {
            return Ok(secret);
        }
        let secret = super::random_bytes::<32>().to_vec();
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('secret', ?1)",
            params![secret],
        )?;
        Ok(secret)
    }

    pub fn user_exists(&self, uaid: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM users WHERE uaid = ?1", params![uaid], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// Drops a user with all its channels and messages; returns the messages dropped.
    pub fn delete_user(&mut self, uaid: &str) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let dropped = tx.execute("DELETE FROM messages WHERE uaid = ?1", params![uaid])?;
        tx.execute("DELETE FROM channels WHERE uaid = ?1", params![uaid])?;
        tx.execute("DELETE FROM users WHERE uaid = ?1", params![uaid])?;
        tx.commit()?;
        Ok(dropped)
    }

    /// Creates the user on its first register (autopush defers writing a new user until
    /// then) and the channel, or updates the channel's key.
    pub fn upsert_channel(
        &mut self,
        uaid: &str,
        channel_id: &str,
        vapid_key: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO users (uaid, created_ms) VALUES (?1, ?2)",
            params![uaid, now_ms],
        )?;
        tx.execute(
            "INSERT INTO channels (uaid, channel_id, vapid_key, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (uaid, channel_id) DO UPDATE SET vapid_key = excluded.vapid_key",
            params![uaid, channel_id, vapid_key, now_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Creates the user record if it is not there yet (autopush writes a new user on its
    /// first register, even one that then fails).
    pub fn ensure_user(&self, uaid: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO users (uaid, created_ms) VALUES (?1, ?2)",
            params![uaid, now_ms],
        )?;
        Ok(())
    }

    /// Deletes a channel; false if there was no such channel. Its stored messages stay,
    /// as in autopush (Redis and Bigtable `remove_channel`): the client still gets them.
    pub fn delete_channel(&mut self, uaid: &str, channel_id: &str) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "DELETE FROM channels WHERE uaid = ?1 AND channel_id = ?2",
            params![uaid, channel_id],
        )?;
        Ok(n > 0)
    }

    pub fn lookup_channel(
        &self,
        uaid: &str,
        channel_id: &str,
    ) -> Result<ChannelLookup, StoreError> {
        if !self.user_exists(uaid)? {
            return Ok(ChannelLookup::NoUser);
        }
        let found = self
            .conn
            .query_row(
                "SELECT 1 FROM channels WHERE uaid = ?1 AND channel_id = ?2",
                params![uaid, channel_id],
                |_| Ok(()),
            )
            .optional()?;
        Ok(match found {
            Some(()) => ChannelLookup::Found,
            None => ChannelLookup::NoChannel,
        })
    }

    /// The uaid that most recently registered `channel_id`.
    pub fn uaid_for_channel(&self, channel_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT uaid FROM channels WHERE channel_id = ?1
                 ORDER BY created_ms DESC, rowid DESC LIMIT 1",
                params![channel_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Stores a message. One with a topic replaces the undelivered message of the same
    /// channel and topic (RFC 8030 §5.4).
    pub fn insert_message(&mut self, msg: &NewMessage) -> Result<(), StoreError> {
        let headers = msg
            .notification
            .headers
            .as_ref()
            .map(|h| serde_json::to_string(h).unwrap_or_default());
        let tx = self.conn.transaction()?;
        if let Some(topic) = &msg.topic {
            tx.execute(
                "DELETE FROM messages WHERE uaid = ?1 AND channel_id = ?2 AND topic = ?3",
                params![msg.uaid, msg.notification.channel_id, topic],
            )?;
        }
        tx.execute(
            "INSERT INTO messages
                (version, uaid, channel_id, data, headers, topic, urgency, ttl, expiry_ms, stored_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                msg.notification.version,
                msg.uaid,
                msg.notification.channel_id,
                msg.notification.data,
                headers,
                msg.topic,
                msg.urgency,
                i64::from(msg.ttl),
                msg.expiry_ms,
                msg.stored_at_ms,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn total_messages(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Up to `limit` unexpired messages for `uaid`, oldest first, skipping `exclude`
    /// (those already in flight on the connection), each with whether it has a topic.
    /// Expired ones are deleted on the way.
    pub fn fetch_batch(
        &self,
        uaid: &str,
        now_ms: i64,
        exclude: &HashSet<String>,
        limit: usize,
    ) -> Result<Vec<(Notification, bool)>, StoreError> {
        self.conn.execute(
            "DELETE FROM messages WHERE uaid = ?1 AND expiry_ms <= ?2",
            params![uaid, now_ms],
        )?;
        let want = i64::try_from(limit.saturating_add(exclude.len())).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(
            "SELECT channel_id, version, data, headers, topic IS NOT NULL FROM messages
             WHERE uaid = ?1 AND expiry_ms > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![uaid, now_ms, want], |r| {
            let headers: Option<String> = r.get(3)?;
            let n = Notification {
                channel_id: r.get(0)?,
                version: r.get(1)?,
                data: r.get(2)?,
                headers: headers.and_then(|h| serde_json::from_str(&h).ok()),
            };
            Ok((n, r.get::<_, bool>(4)?))
        })?;
        let mut out = Vec::with_capacity(limit);
        for row in rows {
            let (n, topic) = row?;
            if !exclude.contains(&n.version) {
                out.push((n, topic));
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn delete_message(&self, uaid: &str, version: &str) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM messages WHERE uaid = ?1 AND version = ?2",
            params![uaid, version],
        )? > 0)
    }

    /// `DELETE /m/<id>` from an application server: the id is the version.
    pub fn delete_message_by_version(&self, version: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM messages WHERE version = ?1", params![version])?
            > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(
        uaid: &str,
        ch: &str,
        version: &str,
        topic: Option<&str>,
        expiry_ms: i64,
    ) -> NewMessage {
        NewMessage {
            uaid: uaid.into(),
            notification: Notification {
                channel_id: ch.into(),
                version: version.into(),
                data: Some("AAEC".into()),
                headers: Some(BTreeMap::from([("encoding".into(), "aes128gcm".into())])),
            },
            topic: topic.map(Into::into),
            urgency: None,
            ttl: 60,
            expiry_ms,
            stored_at_ms: 0,
        }
    }

    #[test]
    fn messages_survive_reopen_and_topics_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.sqlite");
        let secret = {
            let mut store = Store::open(&path).unwrap();
            store.upsert_channel("u1", "c1", None, 1).unwrap();
            store
                .insert_message(&message("u1", "c1", "v1", Some("t"), 1000))
                .unwrap();
            store
                .insert_message(&message("u1", "c1", "v2", Some("t"), 1000))
                .unwrap();
            store
                .insert_message(&message("u1", "c1", "v3", None, 1000))
                .unwrap();
            store
                .insert_message(&message("u1", "c1", "old", None, 10))
                .unwrap();
            store.secret().unwrap()
        };
        let store = Store::open(&path).unwrap();
        assert_eq!(store.secret().unwrap(), secret);
        let batch = store.fetch_batch("u1", 100, &HashSet::new(), 10).unwrap();
        let versions: Vec<_> = batch.iter().map(|(n, _)| n.version.as_str()).collect();
        assert_eq!(versions, ["v2", "v3"]);
        let topics: Vec<_> = batch.iter().map(|(_, t)| *t).collect();
        assert_eq!(topics, [true, false]);
        assert_eq!(
            batch[0].0.headers.as_ref().unwrap()["encoding"],
            "aes128gcm"
        );
        let skip = HashSet::from(["v2".to_owned()]);
        let batch = store.fetch_batch("u1", 100, &skip, 10).unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(store.total_messages().unwrap(), 2);
    }
}
