//! Messages: a burst recorded in one transaction (de-duplication against `seen`, the
//! counters, the pending cap as `push`'s `CapPolicy` decides it), then what is pending,
//! acknowledgements, expiry and pruning of the de-duplication table.

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};
use crate::ids::ChannelId;
use crate::model::StoredMessage;

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

/// One notification of a burst, as `push` decided to record it.
#[derive(Debug)]
pub struct BatchItem {
    pub channel_id: ChannelId,
    pub version: String,
    /// Until when (ms) the server could send it again: its `seen` entry is kept so long.
    pub seen_until: i64,
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

impl Store {
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
        self.write(|tx| {
            let mut outcomes = Vec::with_capacity(items.len());
            let mut touched = Vec::new();
            let mut latest: Vec<Counters> = Vec::new();
            {
                let mut seen = tx.prepare_cached(
                    "INSERT OR IGNORE INTO seen (channel_id, version, at, expires)
                 VALUES (?1, ?2, ?3, ?4)",
                )?;
                // A burst expires a subscription only when it uses up its quota.
                let mut counters = tx.prepare_cached(
                "UPDATE subscriptions SET push_count = ?2, last_push = ?3, quota = ?4, expired = ?5,
                     expired_reason = CASE WHEN ?5 AND NOT expired THEN 'quota'
                                           ELSE expired_reason END
                 WHERE id = ?1",
            )?;
                let mut insert = tx.prepare_cached(
                "INSERT INTO messages (id, subscription_id, channel_id, version, payload, received,
                     ttl, topic, urgency, shown)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
                for item in items {
                    let fresh = seen.execute(params![
                        item.channel_id.as_str(),
                        item.version,
                        now_ms,
                        item.seen_until
                    ])?;
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
                            m.urgency,
                            m.shown
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
            let evicted = evict_over_cap(tx, &touched, cap)?;
            Ok((outcomes, evicted))
        })
    }

    /// Apply the pending cap to `subscriptions` outside a burst (when a grace ends, at
    /// startup); returns the messages dropped.
    pub fn apply_cap(
        &mut self,
        subscriptions: &[i64],
        cap: &impl CapPolicy,
    ) -> Result<Evicted, StoreError> {
        self.write(|tx| evict_over_cap(tx, subscriptions, cap))
    }

    pub fn pending(&self, subscription_id: i64) -> Result<Vec<StoredMessage>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, subscription_id, channel_id, version, payload, received, ttl, topic, urgency,
                 shown
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
                r.get::<_, bool>(9)?,
            ))
        })?;
        let mut out = Vec::new();
        let waiting = self.acks_waiting.borrow();
        for row in rows {
            let (id, sub, ch, version, payload, received, ttl, topic, urgency, shown) = row?;
            if waiting.iter().any(|(s, m)| *s == sub && *m == id) {
                continue;
            }
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
                shown,
            });
        }
        Ok(out)
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
        let stored = self
            .conn
            .prepare_cached("SELECT count(*) FROM messages WHERE subscription_id = ?1")?
            .query_row([subscription_id], |r| r.get::<_, i64>(0))? as u64;
        let waiting = self.acks_waiting.borrow();
        let acked = waiting
            .iter()
            .filter(|(s, _)| *s == subscription_id)
            .count() as u64;
        Ok(stored.saturating_sub(acked))
    }

    /// The daemon showed a pending message as a desktop notification.
    pub fn mark_shown(&self, subscription_id: i64, message_id: &str) -> Result<(), StoreError> {
        self.write(|c| {
            c.prepare_cached(
                "UPDATE messages SET shown = 1 WHERE subscription_id = ?1 AND id = ?2",
            )?
            .execute(params![subscription_id, message_id])?;
            Ok(())
        })
    }

    /// Forget a message the app acknowledged; `false` if there was none. Committed before
    /// this returns.
    pub fn ack(&self, subscription_id: i64, message_id: &str) -> Result<bool, StoreError> {
        let found = self.ack_many(&[(subscription_id, message_id)])?;
        self.settle()?;
        Ok(found[0])
    }

    /// Forget acknowledged messages; returns, per message, whether it was pending.
    ///
    /// The deletes are not done here: they wait (in memory; this store's reads already
    /// leave those messages out) for the next write — a burst of notifications, usually
    /// milliseconds away under a stream — and are committed in its transaction, or in one
    /// of their own by `settle` once `settle_at` comes. Under a stream that is one commit
    /// and one write of the shared pages per burst instead of two. `acks_outcome` says
    /// when they are committed: nobody may be told before, or a `kill -9` meanwhile would
    /// bring an acknowledged message back.
    pub fn ack_many(&self, acks: &[(i64, &str)]) -> Result<Vec<bool>, StoreError> {
        // One read transaction for all the checks, not one (with its locks) per message.
        let batch = acks.len() > 1 && self.conn.is_autocommit();
        if batch {
            self.exec("BEGIN")?;
        }
        let out = self.ack_checked(acks);
        if batch {
            self.exec("COMMIT")?;
        }
        out
    }

    fn ack_checked(&self, acks: &[(i64, &str)]) -> Result<Vec<bool>, StoreError> {
        let mut exists = self
            .conn
            .prepare_cached("SELECT 1 FROM messages WHERE subscription_id = ?1 AND id = ?2")?;
        let mut out = Vec::with_capacity(acks.len());
        for (sub, id) in acks {
            let waiting = self
                .acks_waiting
                .borrow()
                .iter()
                .any(|(s, m)| s == sub && m == id);
            let found = !waiting && exists.exists(params![sub, id])?;
            if found {
                self.acks_waiting.borrow_mut().push((*sub, id.to_string()));
                if self.acks_since.get().is_none() {
                    self.acks_since.set(Some(std::time::Instant::now()));
                }
            }
            out.push(found);
        }
        Ok(out)
    }

    /// Delete the acknowledged messages waiting for a write, inside the open transaction.
    pub(super) fn delete_acked(&self) -> Result<(), StoreError> {
        let mut del = self
            .conn
            .prepare_cached("DELETE FROM messages WHERE subscription_id = ?1 AND id = ?2")?;
        for (sub, id) in self.acks_waiting.borrow().iter() {
            del.execute(params![sub, id])?;
        }
        Ok(())
    }

    /// Delete messages whose time is up; returns (subscription, message id) of each.
    pub fn expire_messages(&mut self, now_ms: i64) -> Result<Vec<(i64, String)>, StoreError> {
        self.write(|tx| {
            let mut st = tx.prepare_cached(
                "DELETE FROM messages WHERE received + ttl * 1000 <= ?1
                 RETURNING subscription_id, id",
            )?;
            let rows = st.query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The earliest time a pending message expires, to arm one timer for all.
    pub fn next_expiry(&self) -> Result<Option<i64>, StoreError> {
        // Asked at every turn of the owner loop; only a write changes it.
        if let Some(known) = self.next_expiry.get() {
            return Ok(known);
        }
        // Served by the messages_by_expiry index (the expression must match it).
        let at = self
            .conn
            .prepare_cached("SELECT min(received + ttl * 1000) FROM messages")?
            .query_row([], |r| r.get::<_, Option<i64>>(0))?;
        self.next_expiry.set(Some(at));
        Ok(at)
    }

    /// Drop de-duplication entries whose message the server can no longer send at
    /// `now_ms`, except for messages still stored.
    pub fn prune_seen(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.write(|c| Ok(c.execute(
            "DELETE FROM seen WHERE expires <= ?1 AND NOT EXISTS
               (SELECT 1 FROM messages m WHERE m.channel_id = seen.channel_id AND m.version = seen.version)",
            [now_ms],
        )?))
    }
}

pub(super) const OVER_CAP: &str = "SELECT rowid, received FROM messages WHERE subscription_id = ?1
     ORDER BY received DESC, rowid DESC LIMIT -1 OFFSET ?2";

/// Drop what `cap` says of each subscription's messages beyond `cap.keep_newest()`.
fn evict_over_cap(
    tx: &rusqlite::Connection,
    subscriptions: &[i64],
    cap: &impl CapPolicy,
) -> Result<Evicted, StoreError> {
    let mut evicted = Vec::new();
    // Walks `messages_by_subscription` alone (rowid and received are in the index):
    // reading `id` for every row would read every 3 KiB row's page.
    let mut over = tx.prepare_cached(OVER_CAP)?;
    let mut del = tx.prepare_cached("DELETE FROM messages WHERE rowid = ?1 RETURNING id")?;
    for &sub in subscriptions {
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
    Ok(evicted)
}
