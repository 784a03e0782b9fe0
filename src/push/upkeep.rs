//! Housekeeping: pending messages whose time is up, the daily pruning (old de-duplication
//! entries, uninstalled Flatpak apps), and giving memory back after startup or a burst.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info};

use std::collections::HashSet;

use super::cap::PendingCap;
use super::ingest::log_evicted;
use super::lifecycle::ExpiryReason;
use super::Push;
use crate::clock::now_ms;
use crate::connection::Unregister;
use crate::identity::{flatpak_installed, Sandbox};
use crate::store::Store;

const MAINTENANCE_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How long after the last burst memory is given back: not during a stream, which would
/// only take it again (SQLite's cache read back with `pread`, the heap faulted in).
const TRIM_AFTER: Duration = Duration::from_secs(3);
/// How long after the server's hello.
const TRIM_AFTER_HELLO: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub(super) struct Upkeep {
    /// Next daily housekeeping (pruning, uninstalled Flatpak apps).
    pub maintenance: Instant,
    /// When to hand memory left over from startup or a burst back to the system.
    pub trim_at: Option<Instant>,
    /// When the grace of a message the pending cap kept ends: the cap is applied again.
    pub cap_check: Option<Instant>,
    /// `$XDG_DATA_HOME`, where user Flatpak installations live.
    data_home: PathBuf,
}

impl Upkeep {
    pub fn new() -> Upkeep {
        Upkeep {
            maintenance: Instant::now() + MAINTENANCE_EVERY,
            // At the loop's first turn: it starts once every object is served, and
            // loading the subscriptions left SQLite's cache full and a heap of freed
            // copies (rows, the snapshot, zbus's building).
            trim_at: Some(Instant::now()),
            cap_check: None,
            data_home: directories::BaseDirs::new()
                .map(|b| b.data_dir().to_path_buf())
                .unwrap_or_default(),
        }
    }

    /// The push server said hello (at startup, the last step; or after a reconnect): give
    /// back what connecting left, once the registrations it starts are answered.
    pub fn connected(&mut self) {
        let at = Instant::now() + TRIM_AFTER_HELLO;
        if self.trim_at.is_none_or(|t| t > at) {
            self.trim_at = Some(at);
        }
    }

    /// A burst began: give its memory back a little after it.
    pub fn burst_started(&mut self) {
        let at = Instant::now() + TRIM_AFTER;
        self.trim_at = Some(self.trim_at.map_or(at, |t| t.max(at)));
    }

    /// When the first pending message expires.
    pub fn next_expiry(&self, store: &Store) -> Option<Instant> {
        store.next_expiry().ok().flatten().map(|at| {
            let wait = (at - now_ms()).max(0) as u64;
            Instant::now() + Duration::from_millis(wait)
        })
    }
}

impl Push {
    pub(super) fn upkeep_due(&mut self, now: Instant) {
        if self.upkeep.trim_at.is_some_and(|at| at <= now) {
            self.upkeep.trim_at = None;
            self.release_memory();
        }
        if now >= self.upkeep.maintenance {
            self.upkeep.maintenance = now + MAINTENANCE_EVERY;
            self.housekeeping();
        }
    }

    /// Give back what loading the subscriptions or a burst left behind: SQLite's page
    /// cache and the allocator's free pages. An idle daemon should be small.
    fn release_memory(&mut self) {
        if let Err(e) = self.store.release_memory() {
            debug!(error = %e, "cannot shrink SQLite's cache");
        }
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free memory to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Once at startup and once a day: forget de-duplication entries of messages the
    /// server can no longer send, and expire the
    /// subscriptions of Flatpak apps that are no longer installed.
    pub(super) fn housekeeping(&mut self) {
        let _ = self.store.prune_seen(now_ms());
        let data_home = &self.upkeep.data_home;
        let gone = self.index.ids_where(|s| {
            !s.expired
                && s.sandbox == Some(Sandbox::Flatpak)
                && !flatpak_installed(s.app_id.as_str(), data_home)
        });
        for id in gone {
            info!(
                subscription = id,
                "the Flatpak app is no longer installed: subscription expired"
            );
            self.expire(id, ExpiryReason::AppRemoved, Unregister::Revoked);
        }
    }

    pub(super) fn expire_messages(&mut self) {
        match self.store.expire_messages(now_ms()) {
            Ok(gone) => {
                for (sub, id) in gone {
                    info!(subscription = sub, message = %id, "pending message dropped: delivery.max_age passed");
                }
            }
            Err(e) => error!(error = %e, "cannot expire pending messages"),
        }
    }

    /// The pending cap as it applies now; `running` are the subscriptions whose app is.
    pub(super) fn pending_cap<'a>(&self, now: i64, running: &'a HashSet<i64>) -> PendingCap<'a> {
        let grace = self.policy.pending_grace.as_millis().min(i64::MAX as u128) as i64;
        PendingCap::new(self.policy.max_pending, now, running).with_grace(grace)
    }

    /// The cap kept messages beyond it for their grace alone: apply it again at `at`
    /// (unix ms), or earlier if already due then.
    pub(super) fn cap_again_at(&mut self, at: Option<i64>) {
        let Some(at) = at else { return };
        let wait = Duration::from_millis((at - now_ms()).max(0) as u64);
        let when = Instant::now() + wait;
        let check = &mut self.upkeep.cap_check;
        *check = Some(check.map_or(when, |c| c.min(when)));
    }

    pub(super) fn cap_due(&mut self, now: Instant) {
        if self.upkeep.cap_check.is_some_and(|at| at <= now) {
            self.upkeep.cap_check = None;
            self.apply_cap(&self.index.ids_where(|_| true));
        }
    }

    /// Apply the pending cap to `subscriptions` outside a burst: a subscription must not
    /// stay over it because nothing more came (or the daemon restarted).
    pub(super) fn apply_cap(&mut self, subscriptions: &[i64]) {
        if subscriptions.is_empty() {
            return;
        }
        let running: HashSet<i64> = subscriptions
            .iter()
            .copied()
            .filter(|id| {
                self.index
                    .get(*id)
                    .is_some_and(|r| self.delivery.app_present(&r.app_id))
            })
            .collect();
        let cap = self.pending_cap(now_ms(), &running);
        match self.store.apply_cap(subscriptions, &cap) {
            Ok(evicted) => {
                log_evicted(evicted);
                self.cap_again_at(cap.grace_ends());
            }
            Err(e) => error!(error = %e, "cannot apply the pending cap"),
        }
    }
}
