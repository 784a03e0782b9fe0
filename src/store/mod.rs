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
//!
//! This file opens the database (lock, pragmas, corruption, the WAL checkpoint thread) and
//! keeps the UAID, broadcasts and settings; `subscriptions` maps subscription rows to
//! `SubscriptionRecord`; `messages` records bursts and answers for pending messages;
//! `schema` migrates.

mod messages;
mod schema;
mod subscriptions;

use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use crate::ids::{AppId, Uaid};

pub use messages::{BatchItem, CapPolicy, Counters, Evicted, OverCap, Recorded};

pub const DB_FILE: &str = "webpushd.db";
pub const LOCK_FILE: &str = "webpushd.lock";

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

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Acknowledged messages whose deletes wait for the next write (see `ack_many`), and
    /// since when.
    acks_waiting: RefCell<Vec<(i64, String)>>,
    acks_since: Cell<Option<Instant>>,
    /// `next_expiry`'s answer until the next write.
    next_expiry: Cell<Option<Option<i64>>>,
    /// How the last transaction with acknowledgements ended, until asked.
    acks_outcome: RefCell<Option<Result<(), String>>>,
    // Held for the life of the store: the flock is the "one daemon per user" guarantee.
    _lock: File,
}

/// How long the deletes of acknowledged messages may wait for a write to commit with, at
/// most (see `Store::ack_many`); the answers to those acknowledgements wait as long.
pub const ACK_COMMIT_DELAY: Duration = Duration::from_millis(25);

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::warn!(error = %e, "cannot commit the last acknowledgements: those messages will be delivered again");
        }
    }
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
                        acks_since: Cell::new(None),
                        next_expiry: Cell::new(None),
                        acks_waiting: RefCell::new(Vec::new()),
                        acks_outcome: RefCell::new(None),
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
                        acks_since: Cell::new(None),
                        next_expiry: Cell::new(None),
                        acks_waiting: RefCell::new(Vec::new()),
                        acks_outcome: RefCell::new(None),
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
        // Every statement a message meets stays prepared (rusqlite keeps 16 by default,
        // fewer than a burst, its acknowledgements and the timers use).
        conn.set_prepared_statement_cache_capacity(32);
        // One plan per statement whatever the values bound: SQLite otherwise plans again
        // each time a value its plan looked at is bound (the pending cap's `OFFSET ?2`),
        // and that re-preparation was a fifteenth of a message's CPU at low rates.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
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

    /// Run `f` in one write transaction, committed (`synchronous = FULL`: it survives a
    /// power cut) before this returns. The deletes of acknowledged messages waiting for a
    /// write (see `ack_many`) are done in it first; if anything fails, nothing is
    /// committed and they wait on.
    fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let acks = !self.acks_waiting.borrow().is_empty();
        self.next_expiry.set(None);
        // Cached statements: rusqlite's `transaction()` parses BEGIN and COMMIT each time.
        self.exec("BEGIN IMMEDIATE")?;
        let done = (|| {
            if acks {
                self.delete_acked()?;
            }
            let v = f(&self.conn)?;
            self.exec("COMMIT")?;
            Ok(v)
        })();
        if done.is_err() && !self.conn.is_autocommit() {
            let _ = self.exec("ROLLBACK");
        }
        if acks && done.is_ok() {
            self.end_acks(Ok(()));
        }
        done
    }

    /// The acknowledgements that waited are committed (`Ok`) or given up (`Err`, their
    /// messages stay pending); kept for `acks_outcome`.
    fn end_acks(&self, outcome: Result<(), String>) {
        self.acks_waiting.borrow_mut().clear();
        self.acks_since.set(None);
        let mut slot = self.acks_outcome.borrow_mut();
        // A failure is not hidden by a later success before anyone asked.
        if !matches!(*slot, Some(Err(_))) {
            *slot = Some(outcome);
        }
    }

    /// Whether the acknowledgements made since this was last asked are committed (`Ok`) or
    /// were given up (`Err`, their messages stay pending); `None` while they still wait,
    /// or when there were none.
    pub fn acks_outcome(&self) -> Option<Result<(), String>> {
        self.acks_outcome.take()
    }

    /// Commit the deletes of acknowledged messages that wait for a write (see `ack_many`)
    /// in a transaction of their own, at `synchronous = NORMAL`: an acknowledgement lost
    /// in a power cut only brings its message back, so it need not wait for an fsync
    /// (storing stays FULL). If that fails they are given up.
    pub fn settle(&self) -> Result<(), StoreError> {
        if self.acks_waiting.borrow().is_empty() {
            return Ok(());
        }
        // Not inside the transaction: SQLite refuses to change the level there.
        self.exec("PRAGMA synchronous = NORMAL")?;
        let r = self.write(|_| Ok(()));
        self.exec("PRAGMA synchronous = FULL")?;
        if let Err(e) = &r {
            self.end_acks(Err(e.to_string()));
        }
        r
    }

    /// When the acknowledgements waiting for a write must be committed on their own.
    pub fn settle_at(&self) -> Option<Instant> {
        self.acks_since.get().map(|since| since + ACK_COMMIT_DELAY)
    }

    fn exec(&self, sql: &str) -> Result<(), StoreError> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
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
        self.write(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('uaid', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [uaid.as_str()],
            )?;
            Ok(())
        })
    }

    /// The push server (as configured: a URL or `local`) the stored UAID came from; `None`
    /// when not recorded (a UAID stored by an older version).
    pub fn uaid_server(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'uaid_server'",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Store the UAID with the server that assigned it, in one statement.
    pub fn set_uaid_of(&self, uaid: &Uaid, server: &str) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('uaid', ?1), ('uaid_server', ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [uaid.as_str(), server],
            )?;
            Ok(())
        })
    }

    /// The push server chosen over D-Bus (`SetServerUrl`), with the config file's
    /// `server_url` it was chosen over.
    pub fn server_override(&self) -> Result<Option<(String, String)>, StoreError> {
        let get = |key: &str| -> Result<Option<String>, StoreError> {
            Ok(self
                .conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?)
        };
        Ok(get("server_url")?.zip(get("server_url_over")?))
    }

    pub fn set_server_override(&self, server: &str, over: &str) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('server_url', ?1), ('server_url_over', ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [server, over],
            )?;
            Ok(())
        })
    }

    pub fn clear_server_override(&self) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute(
                "DELETE FROM meta WHERE key IN ('server_url', 'server_url_over')",
                [],
            )?;
            Ok(())
        })?;
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
        self.write(|c| {
            let mut st = c.prepare_cached(
                "INSERT INTO broadcasts (id, version) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            )?;
            for (id, v) in items {
                st.execute([id, v])?;
            }
            Ok(())
        })
    }

    /// Free the memory SQLite caches for this connection (pages read at startup or
    /// during a burst); it reads them again when needed.
    pub fn release_memory(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("PRAGMA shrink_memory")?;
        Ok(())
    }

    /// Whether `app` may show desktop notifications (default: yes).
    pub fn notifications_allowed(&self, app: &AppId) -> Result<bool, StoreError> {
        // Cached: asked for every message a running app is sent.
        let v: Option<bool> = self
            .conn
            .prepare_cached("SELECT allowed FROM notification_permissions WHERE app_id = ?1")?
            .query_row([app.as_str()], |r| r.get(0))
            .optional()?;
        Ok(v.unwrap_or(true))
    }

    /// The apps forbidden to show desktop notifications, by app id.
    pub fn notifications_denied(&self) -> Result<Vec<String>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT app_id FROM notification_permissions WHERE NOT allowed ORDER BY app_id",
        )?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_notifications_allowed(&self, app: &AppId, allowed: bool) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute(
                "INSERT INTO notification_permissions (app_id, allowed) VALUES (?1, ?2)
                 ON CONFLICT (app_id) DO UPDATE SET allowed = excluded.allowed",
                params![app.as_str(), allowed],
            )?;
            Ok(())
        })
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
    use crate::ids::ChannelId;
    use crate::model::examples::{message, record, CH};
    use crate::model::SubscriptionRecord;

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
                        seen_until: i64::MAX,
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

    fn store_one(store: &mut Store, rec: &SubscriptionRecord, id: i64, v: &str) -> String {
        let m = message(id, CH, v, 5);
        let mid = m.id.to_string();
        let item = BatchItem {
            seen_until: i64::MAX,
            channel_id: rec.channel_id.clone(),
            version: v.into(),
            counters: None,
            message: Some(m),
        };
        store.record_batch(&[item], 5, &KeepAll).unwrap();
        mid
    }

    /// Acknowledgements wait uncommitted for the next write and are committed with it, or
    /// on their own by `settle` at NORMAL; either way storing is FULL again afterwards (a
    /// message acknowledged to the server must survive a power cut).
    #[test]
    fn acknowledgements_wait_for_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let rec = record(CH, "scope");
        let id = store.insert_subscription(&rec).unwrap();
        let sync = |s: &Store| -> i64 {
            s.conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap()
        };
        // What another process (or the daemon after a kill -9) would find.
        let disk = Connection::open(store.path()).unwrap();
        let on_disk = || -> i64 {
            disk.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
                .unwrap()
        };
        let m1 = store_one(&mut store, &rec, id, "v1");
        let m2 = store_one(&mut store, &rec, id, "v2");
        assert_eq!(
            store.ack_many(&[(id, &m1), (id, "nope")]).unwrap(),
            [true, false]
        );
        assert_eq!(store.pending(id).unwrap().len(), 1, "seen here at once");
        assert_eq!(on_disk(), 2, "not committed yet");
        assert!(store.settle_at().is_some());
        // The next burst commits it.
        store_one(&mut store, &rec, id, "v3");
        assert_eq!(on_disk(), 2, "v2 and v3");
        assert_eq!(store.settle_at(), None);
        assert_eq!(sync(&store), 2, "FULL");
        // With no write coming, settle commits it.
        assert_eq!(store.ack_many(&[(id, &m2)]).unwrap(), [true]);
        assert_eq!(on_disk(), 2);
        store.settle().unwrap();
        assert_eq!(on_disk(), 1);
        assert_eq!(store.settle_at(), None);
        assert_eq!(sync(&store), 2, "FULL after settling");
        assert_eq!(store.pending(id).unwrap()[0].version, "v3");
    }

    #[test]
    fn waiting_acknowledgements_are_committed_when_the_store_closes() {
        let dir = tempfile::tempdir().unwrap();
        let rec = record(CH, "scope");
        let id = {
            let (mut store, _) = Store::open(dir.path()).unwrap();
            let id = store.insert_subscription(&rec).unwrap();
            let m = store_one(&mut store, &rec, id, "v1");
            store_one(&mut store, &rec, id, "v2");
            assert_eq!(store.ack_many(&[(id, &m)]).unwrap(), [true]);
            id
        };
        let (store, _) = Store::open(dir.path()).unwrap();
        let left: Vec<_> = store
            .pending(id)
            .unwrap()
            .into_iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(left, ["v2"]);
    }

    /// The statements a message meets are planned once: a plan that depended on the values
    /// bound (the pending cap's OFFSET) was made again for every burst.
    #[test]
    fn statements_are_not_planned_again_for_each_burst() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let rec = record(CH, "scope");
        let id = store.insert_subscription(&rec).unwrap();
        for i in 0..5 {
            store_one(&mut store, &rec, id, &format!("v{i}"));
        }
        let st = store.conn.prepare_cached(messages::OVER_CAP).unwrap();
        assert_eq!(
            st.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "the pending cap's query was prepared again"
        );
    }

    /// A write that fails undoes its own changes, not the acknowledgements waiting for it.
    #[test]
    fn a_failed_write_keeps_the_waiting_acknowledgements() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let rec = record(CH, "scope");
        let id = store.insert_subscription(&rec).unwrap();
        let m = store_one(&mut store, &rec, id, "v1");
        store_one(&mut store, &rec, id, "v2");
        assert_eq!(store.ack_many(&[(id, &m)]).unwrap(), [true]);
        let failed = store.write(|c| {
            c.execute("INSERT INTO meta (key, value) VALUES ('half', 'done')", [])?;
            Err::<(), _>(StoreError::Corrupt("given up halfway".into()))
        });
        assert!(failed.is_err());
        assert!(store.settle_at().is_some(), "still waiting");
        store.settle().unwrap();
        drop(store);
        let (store, _) = Store::open(dir.path()).unwrap();
        let half: Option<String> = store
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'half'", [], |r| {
                r.get(0)
            })
            .optional()
            .unwrap();
        assert_eq!(half, None, "the failed write was undone");
        assert_eq!(
            store.pending(id).unwrap().len(),
            1,
            "the acknowledgement was kept"
        );
    }

    /// A `seen` entry lasts as long as the server could send its message again, not a
    /// flat week: a lost ack followed by a long absence must not bring it back.
    #[test]
    fn seen_is_kept_until_the_message_could_no_longer_come() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        store.insert_subscription(&record(CH, "s")).unwrap();
        const DAY: i64 = 24 * 3600 * 1000;
        let item = |v: &str, until| BatchItem {
            seen_until: until,
            channel_id: ChannelId::parse(CH).unwrap(),
            version: v.into(),
            counters: None,
            message: None,
        };
        let now = 1_000;
        store
            .record_batch(
                &[item("long", now + 30 * DAY), item("short", now + 60_000)],
                now,
                &KeepAll,
            )
            .unwrap();
        let ch = ChannelId::parse(CH).unwrap();
        // Eight days on: the one with a minute's TTL is gone, the other still recognised.
        store.prune_seen(now + 8 * DAY).unwrap();
        assert!(!store.seen(&ch, "short").unwrap());
        assert!(store.seen(&ch, "long").unwrap());
        // Once its TTL is over, it goes too.
        store.prune_seen(now + 30 * DAY).unwrap();
        assert!(!store.seen(&ch, "long").unwrap());
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
                        seen_until: i64::MAX,
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
