//! The pending-cap policy: which of a subscription's pending messages go when it holds
//! more than `delivery.max_pending_per_subscription`. The store reports the messages
//! beyond the cap (newest first) inside the burst's transaction and drops what this says.
//!
//! The oldest beyond the cap go, but only once they have had the grace
//! (`delivery.pending_grace`, `EVICTION_GRACE_MS` by default) to be acknowledged: a burst
//! to a running app must not lose what the app is about to ack. Beyond `GRACE_BOUND_*`
//! times the cap they go at once, so a flood stays bounded. Those it keeps only for their
//! grace are remembered (`grace_ends`): the cap is applied again when it ends, not only
//! when the next burst comes.

use std::cell::Cell;
use std::collections::HashSet;

use crate::store::{CapPolicy, OverCap};

/// How long a message is safe from the pending cap, unless configured.
pub const EVICTION_GRACE_MS: i64 = 30_000;
/// Within the grace, how many times the cap is kept for a subscription whose app is not
/// running (nobody is working through them: a flood stays small)...
pub const GRACE_BOUND_WAITING: i64 = 10;
/// ...and for one whose app is running and is sent every message as it comes: its
/// acknowledgements queue behind the messages on its bus connection, so under a burst
/// they lag by seconds.
pub const GRACE_BOUND_RUNNING: i64 = 100;

/// The cap as it applies to one burst.
#[derive(Debug, Clone)]
pub struct PendingCap<'a> {
    max_pending: u32,
    now_ms: i64,
    grace_ms: i64,
    /// Subscriptions whose app is running (see `GRACE_BOUND_RUNNING`).
    running: &'a HashSet<i64>,
    /// The earliest time a message kept beyond the cap only for its grace loses it.
    grace_ends: Cell<Option<i64>>,
}

impl<'a> PendingCap<'a> {
    pub fn new(max_pending: u32, now_ms: i64, running: &'a HashSet<i64>) -> PendingCap<'a> {
        PendingCap {
            max_pending,
            now_ms,
            grace_ms: EVICTION_GRACE_MS,
            running,
            grace_ends: Cell::new(None),
        }
    }

    /// With a grace other than `EVICTION_GRACE_MS`.
    pub fn with_grace(mut self, grace_ms: i64) -> PendingCap<'a> {
        self.grace_ms = grace_ms;
        self
    }

    /// When the cap must be applied again: the earliest end of the grace of a message it
    /// kept beyond the cap (across every subscription it was asked about), if any.
    pub fn grace_ends(&self) -> Option<i64> {
        self.grace_ends.get()
    }
}

impl CapPolicy for PendingCap<'_> {
    fn keep_newest(&self) -> u32 {
        self.max_pending
    }

    fn evict(&self, subscription: i64, over: &[OverCap]) -> Vec<i64> {
        let factor = if self.running.contains(&subscription) {
            GRACE_BOUND_RUNNING
        } else {
            GRACE_BOUND_WAITING
        };
        let hard = (self.max_pending as i64).saturating_mul(factor);
        let cutoff = self.now_ms - self.grace_ms;
        let mut evicted = Vec::new();
        for (n, m) in (self.max_pending as i64 + 1..).zip(over) {
            if m.received <= cutoff || n > hard {
                evicted.push(m.key);
            } else {
                let ends = m.received + self.grace_ms;
                let earliest = self.grace_ends.get().map_or(ends, |e| e.min(ends));
                self.grace_ends.set(Some(earliest));
            }
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ChannelId;
    use crate::model::examples::{message, record, CH};
    use crate::store::{BatchItem, Recorded, Store};

    fn over(received: &[i64]) -> Vec<OverCap> {
        received
            .iter()
            .enumerate()
            .map(|(i, &received)| OverCap {
                key: i as i64,
                received,
            })
            .collect()
    }

    #[test]
    fn within_the_grace_kept_up_to_the_bound_then_dropped() {
        let none = HashSet::new();
        let running = HashSet::from([7]);
        let now = 100_000;
        // Cap 2: positions 3.. are beyond it. Young ones stay up to 10x (20) the cap.
        let young = over(&[now; 25]);
        let cap = PendingCap::new(2, now, &none);
        assert_eq!(cap.evict(1, &young), (18..25).collect::<Vec<i64>>());
        // A running app's: up to 100x.
        let cap = PendingCap::new(2, now, &running);
        assert!(cap.evict(7, &young).is_empty());
        // Once the grace has passed they go at once.
        let old = over(&[now - EVICTION_GRACE_MS, now - EVICTION_GRACE_MS + 1]);
        assert_eq!(cap.evict(1, &old), [0]);
    }

    /// What it keeps for their grace alone, it says when to look again.
    #[test]
    fn says_when_the_grace_of_what_it_kept_ends() {
        let none = HashSet::new();
        let now = 100_000;
        let cap = PendingCap::new(2, now, &none).with_grace(1_000);
        assert_eq!(cap.grace_ends(), None);
        // One past its grace (goes), two within it (stay until theirs ends).
        assert_eq!(
            cap.evict(1, &over(&[now - 500, now - 800, now - 1_000])),
            [2]
        );
        assert_eq!(cap.grace_ends(), Some(now - 800 + 1_000));
        // Nothing kept beyond the cap: nothing to look at again.
        let cap = PendingCap::new(2, now, &none).with_grace(1_000);
        assert_eq!(cap.evict(1, &over(&[now - 2_000])), [0]);
        assert_eq!(cap.grace_ends(), None);
    }

    /// The policy as the store carries it out, inside the burst's transaction.
    #[test]
    fn duplicates_and_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let id = store.insert_subscription(&record(CH, "s")).unwrap();
        let item = |v: &str, t| BatchItem {
            seen_until: i64::MAX,
            channel_id: ChannelId::parse(CH).unwrap(),
            version: v.into(),
            counters: None,
            message: Some(message(id, CH, v, t)),
        };
        let none = HashSet::new();
        let (out, _) = store
            .record_batch(
                &[item("a", 1), item("a", 2), item("b", 3)],
                3,
                &PendingCap::new(100, 3, &none),
            )
            .unwrap();
        assert_eq!(
            out,
            vec![Recorded::Stored, Recorded::Duplicate, Recorded::Stored]
        );
        // Within the grace nothing is dropped; once it has passed, the oldest go.
        let (_, evicted) = store
            .record_batch(
                &[item("c", 4), item("d", 5)],
                5,
                &PendingCap::new(3, 5, &none),
            )
            .unwrap();
        assert!(evicted.is_empty());
        let later = 5 + EVICTION_GRACE_MS;
        let (_, evicted) = store
            .record_batch(
                &[item("e", later)],
                later,
                &PendingCap::new(3, later, &none),
            )
            .unwrap();
        assert_eq!(evicted.len(), 2);
        let left: Vec<String> = store
            .pending(id)
            .unwrap()
            .into_iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(left, vec!["c", "d", "e"]);
        // Acknowledged messages stay de-duplicated.
        let first = store.pending(id).unwrap()[0].id.clone();
        assert!(store.ack(id, &first).unwrap());
        let (out, _) = store
            .record_batch(&[item("c", 6)], 6, &PendingCap::new(100, 6, &none))
            .unwrap();
        assert_eq!(out, vec![Recorded::Duplicate]);
        // A flood within the grace is still bounded: ten times the cap while the app is
        // not running, a hundred times while it is.
        let flood: Vec<_> = (0..25).map(|i| item(&format!("f{i}"), later + 1)).collect();
        let (_, evicted) = store
            .record_batch(&flood, later + 1, &PendingCap::new(2, later + 1, &none))
            .unwrap();
        assert_eq!(store.pending(id).unwrap().len(), 20);
        assert_eq!(evicted.len(), 25 + 2 - 20);
        let running = HashSet::from([id]);
        let flood: Vec<_> = (0..250)
            .map(|i| item(&format!("g{i}"), later + 2))
            .collect();
        let (_, evicted) = store
            .record_batch(&flood, later + 2, &PendingCap::new(2, later + 2, &running))
            .unwrap();
        assert_eq!(store.pending(id).unwrap().len(), 200);
        assert_eq!(evicted.len(), 250 + 20 - 200);
    }
}
