//! The pending-cap policy: which of a subscription's pending messages go when it holds
//! more than `delivery.max_pending_per_subscription`. The store reports the messages
//! beyond the cap (newest first) inside the burst's transaction and drops what this says.
//!
//! The oldest beyond the cap go, but only once they have had `EVICTION_GRACE_MS` to be
//! acknowledged: a burst to a running app must not lose what the app is about to ack.
//! Beyond `GRACE_BOUND_*` times the cap they go at once, so a flood stays bounded.

use std::collections::HashSet;

use crate::store::{CapPolicy, OverCap};

/// How long a message is safe from the pending cap.
pub const EVICTION_GRACE_MS: i64 = 30_000;
/// Within the grace, how many times the cap is kept for a subscription whose app is not
/// running (nobody is working through them: a flood stays small)...
pub const GRACE_BOUND_WAITING: i64 = 10;
/// ...and for one whose app is running and is sent every message as it comes: its
/// acknowledgements queue behind the messages on its bus connection, so under a burst
/// they lag by seconds.
pub const GRACE_BOUND_RUNNING: i64 = 100;

/// The cap as it applies to one burst.
#[derive(Debug, Clone, Copy)]
pub struct PendingCap<'a> {
    max_pending: u32,
    now_ms: i64,
    /// Subscriptions whose app is running (see `GRACE_BOUND_RUNNING`).
    running: &'a HashSet<i64>,
}

impl<'a> PendingCap<'a> {
    pub fn new(max_pending: u32, now_ms: i64, running: &'a HashSet<i64>) -> PendingCap<'a> {
        PendingCap {
            max_pending,
            now_ms,
            running,
        }
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
        let cutoff = self.now_ms - EVICTION_GRACE_MS;
        (self.max_pending as i64 + 1..)
            .zip(over)
            .filter(|(n, m)| m.received <= cutoff || *n > hard)
            .map(|(_, m)| m.key)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
