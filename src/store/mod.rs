//! The daemon's state on disk: UAID, broadcasts, subscriptions with their keys, and pending
//! messages, in one SQLite file.
//!
//! **Architecture invariant:** only this module (and the local push service's own store)
//! imports `rusqlite`; SQL never leaves it. The connection is private and the API speaks
//! domain types.
//!
//! Durability: WAL with `synchronous = FULL`, so a committed notification survives a power
//! cut, not only a killed process — the daemon acknowledges to the server right after the
//! commit, and the server then forgets the message. Bursts are written in one transaction
//! (`record_batch`) so the fsync is paid once per burst, not per message.

mod schema;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::crypto::SubscriptionKeys;
use crate::identity::Sandbox;
use crate::ids::{AppId, ChannelId, Scope, Uaid};
use crate::model::{Kind, StoredMessage, SubscriptionRecord};

pub const DB_FILE: &str = "webpushd.db";
pub const LOCK_FILE: &str = "webpushd.lock";

/// A pending message beyond a subscription's cap, as the store reports it to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCap {
    /// The store's key for it.
    pub key: i64,
    pub received: i64,
}

/// Which pending messages the pending cap drops: decided by `push`, carried out by
/// `record_batch` inside its transaction.
pub trait CapPolicy {
    /// How many of a subscription's newest messages are always kept.
    fn keep_newest(&self) -> u32;
    /// Of the messages beyond that (newest first), the keys of those to drop, in order.
    fn evict(&self, subscription: i64, over: &[OverCap]) -> Vec<i64>;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another webpushd is already running with state directory {0}")]
    Locked(PathBuf),
    #[error("database {path} was written by a newer webpushd (schema {found}, this version knows up to {known}); upgrade webpushd or move the file away")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("database {0} is locked by another process")]
    Busy(PathBuf),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("damaged row in the database: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the database file itself is unusable (as opposed to locked or unwritable).
    fn is_corruption(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
        )
    }
}

/// How a `Kind` is stored: the `kind` and `up_version` columns.
fn kind_columns(kind: Kind) -> (&'static str, i64) {
    match kind {
        Kind::WebPush => ("webpush", 0),
        Kind::UnifiedPush(v) => ("unifiedpush", v as i64),
    }
}

fn kind_from_columns(kind: &str, version: i64) -> Result<Kind, String> {
    match (kind, version) {
        ("webpush", _) => Ok(Kind::WebPush),
        ("unifiedpush", v @ 1..=2) => Ok(Kind::UnifiedPush(v as u8)),
        (k, v) => Err(format!("unknown kind {k:?} version {v}")),
    }
}

/// The plainly typed columns of a subscription row.
struct SubscriptionRecordPartial {
    id: i64,
    endpoint: String,
    app_server_key: Option<Vec<u8>>,
    push_count: u64,
    last_push: i64,
    quota: i32,
    expired: bool,
    system: bool,
    bus_name: Option<String>,
    created: i64,
    description: String,
}

/// One notification of a burst, as `push` decided to record it.
#[derive(Debug)]
pub struct BatchItem {
    pub channel_id: ChannelId,
    pub version: String,
    /// Counters to write for the subscription (already computed by `push`).
    pub counters: Option<Counters>,
    /// The message to keep for the app; `None` when it is not delivered (ack 101/102).
    pub message: Option<StoredMessage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub subscription_id: i64,
    pub push_count: u64,
    pub last_push: i64,
    pub quota: i32,
    pub expired: bool,
}

/// (subscription, message id) of messages dropped by the pending cap.
pub type Evicted = Vec<(i64, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Stored,
    /// Seen before: the server redelivered it. Nothing was written.
    Duplicate,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    // Held for the life of the store: the flock is the "one daemon per user" guarantee.
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// WAL pages after which the log is copied back into the database (SQLite's default for
/// its own automatic checkpoints).
const CHECKPOINT_PAGES: i32 = 1000;

/// Checkpoint the write-ahead log on a thread of its own, with its own connection.
///
/// SQLite's automatic checkpoint runs inside the commit that crosses the threshold: under
/// a stream that is several milliseconds (4 MB written back and two fsyncs) of the owner
/// loop every ~150 messages, visible as latency spikes. A PASSIVE checkpoint does not
/// block the writer. The thread starts on first need and ends with the store.
fn checkpoint_elsewhere(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    let path = path.to_path_buf();
    let mut worker: Option<std::sync::mpsc::SyncSender<()>> = None;
    conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
        if pages < CHECKPOINT_PAGES {
            return Ok(());
        }
        if worker.is_none() {
            worker = spawn_checkpointer(&path);
        }
        if let Some(w) = &worker {
            if let Err(std::sync::mpsc::TrySendError::Disconnected(())) = w.try_send(()) {
                worker = None;
            }
        }
        Ok(())
    }))?;
    Ok(())
}

fn spawn_checkpointer(path: &Path) -> Option<std::sync::mpsc::SyncSender<()>> {
    let conn = match Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the database for checkpoints");
            return None;
        }
    };
    let _ = conn.busy_timeout(std::time::Duration::from_secs(2));
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("webpushd-wal".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                if let Err(e) = r {
                    tracing::debug!(error = %e, "WAL checkpoint failed; tried again later");
                }
            }
        })
        .ok()?;
    Some(tx)
}

/// Create `dir` with mode 0700 (and tighten it if it exists).
pub fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    Ok(())
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| StoreError::Dir {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StoreError::Locked(dir.to_path_buf()));
        }
        return Err(StoreError::Dir { path, source: err });
    }
    Ok(file)
}

impl Store {
    /// Open (creating if needed) the database in `dir`, lock the directory and bring the
    /// schema up to date.
    ///
    /// A file that is not a database or is corrupt is moved aside (it holds keys, so it is
    /// kept for inspection, never deleted) and a fresh one is created, so a damaged file
    /// cannot put the daemon in a crash loop. `moved_aside` reports that.
    pub fn open(dir: &Path) -> Result<(Store, Option<PathBuf>), StoreError> {
        prepare_dir(dir)?;
        let lock = lock_dir(dir)?;
        let path = dir.join(DB_FILE);
        match Self::open_file(&path) {
            Ok(mut conn) => Ok((
                {
                    checkpoint_elsewhere(&mut conn, &path)?;
                    Store {
                        conn,
                        path,
                        _lock: lock,
                    }
                },
                None,
            )),
            Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                Err(StoreError::Busy(path))
            }
            Err(e) if e.is_corruption() => {
                let stamp = crate::clock::now_unix();
                let aside = dir.join(format!("{DB_FILE}.corrupt-{stamp}"));
                fs::rename(&path, &aside).map_err(|source| StoreError::Dir {
                    path: path.clone(),
                    source,
                })?;
                for suffix in ["-wal", "-shm"] {
                    let side = dir.join(format!("{DB_FILE}{suffix}"));
                    if side.exists() {
                        let _ = fs::rename(
                            &side,
                            dir.join(format!("{DB_FILE}.corrupt-{stamp}{suffix}")),
                        );
                    }
                }
                let mut conn = Self::open_file(&path)?;
                checkpoint_elsewhere(&mut conn, &path)?;
                Ok((
                    Store {
                        conn,
                        path,
                        _lock: lock,
                    },
                    Some(aside),
                ))
            }
            Err(e) => Err(e),
        }
    }

    fn open_file(path: &Path) -> Result<Connection, StoreError> {
        // Create the file ourselves so it is 0600 from the first byte.
        if !path.exists() {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| StoreError::Dir {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // The systemd unit makes /tmp and home read-only: never spill to a temp file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            )));
        }
        schema::migrate(&mut conn, path)?;
        Ok(conn)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn uaid(&self) -> Result<Option<Uaid>, StoreError> {
        let v: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'uaid'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(v.and_then(|s| Uaid::parse(&s).ok()))
    }

    pub fn set_uaid(&self, uaid: &Uaid) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('uaid', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [uaid.as_str()],
        )?;
        Ok(())
    }

    pub fn broadcasts(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, version FROM broadcasts ORDER BY id")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_broadcasts(&mut self, items: &[(String, String)]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO broadcasts (id, version) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            )?;
            for (id, v) in items {
                st.execute([id, v])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, channel_id, app_id, scope, endpoint, private_key, public_key, auth_secret,
                    app_server_key, push_count, last_push, quota, expired, system, bus_name, created,
                    kind, up_version, description, sandbox
             FROM subscriptions ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            let id: i64 = r.get(0)?;
            // Columns SQLite can type-check; our own validation follows below.
            let raw = (
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(5)?,
                r.get::<_, Vec<u8>>(6)?,
                r.get::<_, Vec<u8>>(7)?,
                r.get::<_, String>(16)?,
                r.get::<_, i64>(17)?,
                r.get::<_, String>(19)?,
            );
            let partial = SubscriptionRecordPartial {
                id,
                endpoint: r.get(4)?,
                app_server_key: r.get(8)?,
                push_count: r.get::<_, i64>(9)?.max(0) as u64,
                last_push: r.get(10)?,
                quota: r.get(11)?,
                expired: r.get(12)?,
                system: r.get(13)?,
                bus_name: r.get(14)?,
                created: r.get(15)?,
                description: r.get(18)?,
            };
            Ok((partial, raw))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (p, (ch, app, scope, private, public, auth, kind, up_version, sandbox)) = row?;
            let corrupt =
                |what: String| StoreError::Corrupt(format!("subscription {}: {what}", p.id));
            // One damaged row must not stop the daemon (and every restart after it): it is
            // left in the file for inspection and skipped. Its channel, if the server still
            // knows it, is unregistered the first time a message comes for it.
            let record = (|| -> Result<SubscriptionRecord, StoreError> {
                Ok(SubscriptionRecord {
                    id: p.id,
                    channel_id: ChannelId::parse(&ch).map_err(|e| corrupt(e.to_string()))?,
                    app_id: AppId::parse(&app).map_err(|e| corrupt(e.to_string()))?,
                    scope: Scope::parse(&scope).map_err(|e| corrupt(e.to_string()))?,
                    endpoint: p.endpoint,
                    keys: SubscriptionKeys::from_parts(private, public, auth)
                        .map_err(|e| corrupt(e.to_string()))?,
                    app_server_key: p.app_server_key,
                    push_count: p.push_count,
                    last_push: p.last_push,
                    quota: p.quota,
                    expired: p.expired,
                    system: p.system,
                    bus_name: p.bus_name,
                    created: p.created,
                    kind: kind_from_columns(&kind, up_version).map_err(corrupt)?,
                    description: p.description,
                    sandbox: Sandbox::parse(&sandbox),
                })
            })();
            match record {
                Ok(r) => out.push(r),
                Err(e) => tracing::error!(error = %e, "a damaged subscription was skipped"),
            }
        }
        Ok(out)
    }

    /// Insert a new subscription; returns its id. Ids are never reused (a deleted
    /// subscription's object path must not come to name another app's subscription), so
    /// the highest id ever given is kept in `meta`.
    pub fn insert_subscription(&mut self, s: &SubscriptionRecord) -> Result<i64, StoreError> {
        let tx = self.conn.transaction()?;
        let last: i64 = tx.query_row(
            "SELECT max(coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_subscription_id'), 0),
                        coalesce((SELECT max(id) FROM subscriptions), 0))",
            [],
            |r| r.get(0),
        )?;
        let id = last + 1;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('last_subscription_id', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [id.to_string()],
        )?;
        tx.execute(
            "INSERT INTO subscriptions (id, channel_id, app_id, scope, endpoint, private_key, public_key,
                 auth_secret, app_server_key, push_count, last_push, quota, expired, system, bus_name, created,
                 kind, up_version, description, sandbox)
             VALUES (?20, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
            params![
                s.channel_id.as_str(),
                s.app_id.as_str(),
                s.scope.as_str(),
                s.endpoint,
                s.keys.private_key(),
                s.keys.public_key(),
                s.keys.auth(),
                s.app_server_key,
                s.push_count as i64,
                s.last_push,
                s.quota,
                s.expired,
                s.system,
                s.bus_name,
                s.created,
                kind_columns(s.kind).0,
                kind_columns(s.kind).1,
                s.description,
                s.sandbox.map_or("", Sandbox::as_str),
                id,
            ],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Write every mutable field of a subscription (renewal, server reset, quota, expiry).
    pub fn update_subscription(&self, s: &SubscriptionRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE subscriptions SET channel_id = ?2, endpoint = ?3, private_key = ?4,
                 public_key = ?5, auth_secret = ?6, app_server_key = ?7, push_count = ?8,
                 last_push = ?9, quota = ?10, expired = ?11, system = ?12, bus_name = ?13,
                 description = ?14
             WHERE id = ?1",
            params![
                s.id,
                s.channel_id.as_str(),
                s.endpoint,
                s.keys.private_key(),
                s.keys.public_key(),
                s.keys.auth(),
                s.app_server_key,
                s.push_count as i64,
                s.last_push,
                s.quota,
                s.expired,
                s.system,
                s.bus_name,
                s.description,
            ],
        )?;
        Ok(())
    }

    /// Delete a subscription, its keys and its pending messages.
    pub fn delete_subscription(&self, id: i64) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM subscriptions WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Record a burst of notifications in one transaction. Each item is checked against
    /// what was seen before; duplicates change nothing. Then, for each subscription that
    /// got a message, the messages beyond `cap.keep_newest()` are shown to `cap` and those
    /// it names are dropped. Returns one outcome per item, in order, and the ids of the
    /// messages dropped.
    pub fn record_batch(
        &mut self,
        items: &[BatchItem],
        now_ms: i64,
        cap: &impl CapPolicy,
    ) -> Result<(Vec<Recorded>, Evicted), StoreError> {
        let tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(items.len());
        let mut touched = Vec::new();
        let mut latest: Vec<Counters> = Vec::new();
        {
            let mut seen = tx.prepare_cached(
                "INSERT OR IGNORE INTO seen (channel_id, version, at) VALUES (?1, ?2, ?3)",
            )?;
            let mut counters = tx.prepare_cached(
                "UPDATE subscriptions SET push_count = ?2, last_push = ?3, quota = ?4, expired = ?5
                 WHERE id = ?1",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (id, subscription_id, channel_id, version, payload, received,
                     ttl, topic, urgency)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for item in items {
                let fresh =
                    seen.execute(params![item.channel_id.as_str(), item.version, now_ms])?;
                if fresh == 0 {
                    outcomes.push(Recorded::Duplicate);
                    continue;
                }
                // Each item carries its subscription's running totals: only the last
                // fresh one per subscription needs writing, once, below.
                if let Some(c) = &item.counters {
                    match latest
                        .iter_mut()
                        .find(|l| l.subscription_id == c.subscription_id)
                    {
                        Some(l) => *l = *c,
                        None => latest.push(*c),
                    }
                }
                if let Some(m) = &item.message {
                    insert.execute(params![
                        m.id.as_str(),
                        m.subscription_id,
                        m.channel_id.as_str(),
                        m.version,
                        m.payload,
                        m.received,
                        m.ttl,
                        m.topic,
                        m.urgency
                    ])?;
                    if !touched.contains(&m.subscription_id) {
                        touched.push(m.subscription_id);
                    }
                }
                outcomes.push(Recorded::Stored);
            }
            for c in latest {
                counters.execute(params![
                    c.subscription_id,
                    c.push_count as i64,
                    c.last_push,
                    c.quota,
                    c.expired
                ])?;
            }
        }
        let mut evicted = Vec::new();
        {
            // Walks `messages_by_subscription` alone (rowid and received are in the index):
            // reading `id` for every row would read every 3 KiB row's page.
            let mut over = tx.prepare_cached(
                "SELECT rowid, received FROM messages WHERE subscription_id = ?1
                 ORDER BY received DESC, rowid DESC LIMIT -1 OFFSET ?2",
            )?;
            let mut del =
                tx.prepare_cached("DELETE FROM messages WHERE rowid = ?1 RETURNING id")?;
            for sub in touched {
                let rows: Vec<OverCap> = over
                    .query_map(params![sub, cap.keep_newest()], |r| {
                        Ok(OverCap {
                            key: r.get(0)?,
                            received: r.get(1)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                for key in cap.evict(sub, &rows) {
                    let id: String = del.query_row([key], |r| r.get(0))?;
                    evicted.push((sub, id));
                }
            }
        }
        tx.commit()?;
        Ok((outcomes, evicted))
    }

    pub fn pending(&self, subscription_id: i64) -> Result<Vec<StoredMessage>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, subscription_id, channel_id, version, payload, received, ttl, topic, urgency
             FROM messages WHERE subscription_id = ?1 ORDER BY received, rowid",
        )?;
        let rows = st.query_map([subscription_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, u32>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, sub, ch, version, payload, received, ttl, topic, urgency) = row?;
            out.push(StoredMessage {
                id: id.into(),
                subscription_id: sub,
                channel_id: ChannelId::parse(&ch)
                    .map_err(|e| StoreError::Corrupt(format!("message: {e}")))?,
                version,
                payload,
                received,
                ttl,
                topic,
                urgency,
            });
        }
        Ok(out)
    }

    /// Free the memory SQLite caches for this connection (pages read at startup or
    /// during a burst); it reads them again when needed.
    pub fn release_memory(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("PRAGMA shrink_memory")?;
        Ok(())
    }

    /// Whether a notification (channel, version) was already processed: the server sends
    /// what it holds unacknowledged again on every connection.
    pub fn seen(&self, channel_id: &ChannelId, version: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM seen WHERE channel_id = ?1 AND version = ?2")?
            .query_row(params![channel_id.as_str(), version], |_| Ok(()))
            .optional()?
            .is_some())
    }

    pub fn pending_count(&self, subscription_id: i64) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT count(*) FROM messages WHERE subscription_id = ?1")?
            .query_row([subscription_id], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Forget a message the app acknowledged; `false` if there was none.
    pub fn ack(&self, subscription_id: i64, message_id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM messages WHERE subscription_id = ?1 AND id = ?2")?
            .execute(params![subscription_id, message_id])?;
        Ok(n > 0)
    }

    /// Forget several acknowledged messages in one transaction (one fsync); returns, per
    /// message, whether it was pending.
    pub fn ack_many(&mut self, acks: &[(i64, &str)]) -> Result<Vec<bool>, StoreError> {
        // An acknowledgement lost in a power cut only brings a message back (delivery is
        // at least once), so it need not wait for an fsync of its own: at low rates that
        // was half of the daemon's added latency. Storing a message stays FULL.
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let result = self.ack_many_inner(acks);
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        result
    }

    fn ack_many_inner(&mut self, acks: &[(i64, &str)]) -> Result<Vec<bool>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut out = Vec::with_capacity(acks.len());
        {
            let mut del =
                tx.prepare_cached("DELETE FROM messages WHERE subscription_id = ?1 AND id = ?2")?;
            for (sub, id) in acks {
                out.push(del.execute(params![sub, id])? > 0);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Delete messages whose time is up; returns (subscription, message id) of each.
    pub fn expire_messages(&mut self, now_ms: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let tx = self.conn.transaction()?;
        let gone: Vec<(i64, String)> = {
            let mut st = tx.prepare_cached(
                "DELETE FROM messages WHERE received + ttl * 1000 <= ?1
                 RETURNING subscription_id, id",
            )?;
            let rows = st.query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        tx.commit()?;
        Ok(gone)
    }

    /// The earliest time a pending message expires, to arm one timer for all.
    pub fn next_expiry(&self) -> Result<Option<i64>, StoreError> {
        // Served by the messages_by_expiry index (the expression must match it).
        Ok(self
            .conn
            .prepare_cached("SELECT min(received + ttl * 1000) FROM messages")?
            .query_row([], |r| r.get::<_, Option<i64>>(0))?)
    }

    /// Drop de-duplication entries older than `before_ms`, except for messages still stored.
    pub fn prune_seen(&self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM seen WHERE at < ?1 AND NOT EXISTS
               (SELECT 1 FROM messages m WHERE m.channel_id = seen.channel_id AND m.version = seen.version)",
            [before_ms],
        )?)
    }

    /// Whether `app` may show desktop notifications (default: yes).
    pub fn notifications_allowed(&self, app: &AppId) -> Result<bool, StoreError> {
        let v: Option<bool> = self
            .conn
            .query_row(
                "SELECT allowed FROM notification_permissions WHERE app_id = ?1",
                [app.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.unwrap_or(true))
    }

    pub fn set_notifications_allowed(&self, app: &AppId, allowed: bool) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO notification_permissions (app_id, allowed) VALUES (?1, ?2)
             ON CONFLICT (app_id) DO UPDATE SET allowed = excluded.allowed",
            params![app.as_str(), allowed],
        )?;
        Ok(())
    }

    /// `PRAGMA integrity_check`, for tests and `pushctl status` diagnostics.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::examples::{message, record, CH};

    /// Keeps every message: the pending cap's policy is `push`'s, tested there.
    struct KeepAll;

    impl CapPolicy for KeepAll {
        fn keep_newest(&self) -> u32 {
            u32::MAX
        }

        fn evict(&self, _: i64, _: &[OverCap]) -> Vec<i64> {
            Vec::new()
        }
    }

    #[test]
    fn files_are_private_and_second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (store, moved) = Store::open(&state).unwrap();
        assert!(moved.is_none());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(store.path()), 0o600);
        assert!(matches!(Store::open(&state), Err(StoreError::Locked(_))));
        drop(store);
        Store::open(&state).unwrap();
    }

    #[test]
    fn uaid_subscriptions_and_messages_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rec = record(CH, "scope");
        {
            let (mut store, _) = Store::open(dir.path()).unwrap();
            store.set_uaid(&Uaid::parse("abc").unwrap()).unwrap();
            let id = store.insert_subscription(&rec).unwrap();
            let (out, evicted) = store
                .record_batch(
                    &[BatchItem {
                        channel_id: rec.channel_id.clone(),
                        version: "v1".into(),
                        counters: None,
                        message: Some(message(id, CH, "v1", 5)),
                    }],
                    5,
                    &KeepAll,
                )
                .unwrap();
            assert_eq!(out, vec![Recorded::Stored]);
            assert!(evicted.is_empty());
        }
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(store.uaid().unwrap().unwrap().as_str(), "abc");
        let subs = store.subscriptions().unwrap();
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].keys.public_key(), rec.keys.public_key());
        assert_eq!(store.pending(subs[0].id).unwrap().len(), 1);
    }

    #[test]
    fn subscription_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let a = store.insert_subscription(&record(CH, "a")).unwrap();
        store.delete_subscription(a).unwrap();
        let b = store
            .insert_subscription(&record("0d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d", "b"))
            .unwrap();
        assert!(b > a, "{b} reuses {a}");
    }

    /// The WAL is copied back into the database by the checkpoint thread (SQLite's own
    /// automatic checkpoint is off): without it the database file would never grow and
    /// the log would grow for ever.
    #[test]
    fn the_log_is_checkpointed_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let id = store.insert_subscription(&record(CH, "s")).unwrap();
        let db = dir.path().join(DB_FILE);
        let before = fs::metadata(&db).unwrap().len();
        for burst in 0..80 {
            let items: Vec<BatchItem> = (0..10)
                .map(|i| {
                    let mut m = message(id, CH, &format!("v{burst}-{i}"), 1);
                    m.payload = vec![7u8; 3000];
                    BatchItem {
                        channel_id: ChannelId::parse(CH).unwrap(),
                        version: m.version.clone(),
                        counters: None,
                        message: Some(m),
                    }
                })
                .collect();
            store.record_batch(&items, 1, &KeepAll).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let now = fs::metadata(&db).unwrap().len();
            if now > before + 1_000_000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "2.4 MB written, the database file went from {before} to {now} bytes: no checkpoint"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    #[test]
    fn garbage_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(DB_FILE), vec![0x42u8; 8192]).unwrap();
        let (store, moved) = Store::open(dir.path()).unwrap();
        let aside = moved.expect("moved aside");
        assert!(aside.exists());
        assert!(store.subscriptions().unwrap().is_empty());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }
}
