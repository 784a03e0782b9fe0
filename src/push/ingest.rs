//! A burst of notifications from the server: decrypt, `plan` it, tell running apps early,
//! commit it in one transaction, acknowledge to the server, then apply what was committed
//! (counters, presentation, delivery, expiry).
//!
//! **Architecture invariant:** the server is acknowledged only after the commit.

use std::collections::{HashMap, HashSet};

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::decrypt::{decrypt_burst, Job};
use super::delivery::{DeliveryState, MutableWait, RETRY_BASE, RETRY_MAX};
use super::lifecycle::ExpiryReason;
use super::plan::{plan_burst, Clock, Facts, Planned, Presentation};
use super::{
    Delivery, DomainEvent, MessageFlags, MessageId, Policy, Push, StoredMessage, SubscriptionInfo,
    SubscriptionRecord,
};
use crate::clock::now_ms;
use crate::connection::backoff::doubling;
use crate::connection::{Ack, Acknowledgement, Event, Notification, Unregister};
use crate::ids::{AppId, ChannelId};
use crate::store::{BatchItem, Recorded, Store};

/// Notifications handled in one transaction at most.
const MAX_BATCH: usize = 128;
/// A burst this large is a stream: more of it is likely already read, or readable.
const STREAM_BURST: usize = 8;
/// Bound on the messages remembered as signalled but not stored (and as acknowledged so).
const MAX_UNSTORED: usize = 10_000;

/// A message a running app was told of before a commit that then failed.
#[derive(Debug, Clone)]
struct Unstored {
    subscription: i64,
    channel: ChannelId,
    version: String,
}

#[derive(Debug, Default)]
pub(super) struct BurstState {
    /// Messages stored since the daemon started.
    pub received: u64,
    /// Messages signalled before a commit that failed, by message id. The server sends
    /// them again; an app that acks one meanwhile is answered as for a stored message, not
    /// NotFound.
    unstored: HashMap<MessageId, Unstored>,
    /// Of those, the ones the app acknowledged: their next copy from the server is
    /// acknowledged to it and neither stored nor signalled again.
    acked_unstored: HashSet<(ChannelId, String)>,
    /// After a failed store: when to reconnect so the server sends the unstored messages
    /// again.
    pub redeliver: Option<Instant>,
    /// Stores that failed in a row (for the pause before that reconnect).
    store_failures: u32,
}

impl BurstState {
    /// An app acknowledged `message`, which is not stored: if it was signalled before a
    /// failed commit (to this subscription), its next copy is acknowledged and not stored.
    /// The subscription, if so.
    pub fn acked_before_stored(&mut self, sub: Option<i64>, message: &MessageId) -> Option<i64> {
        let u = self
            .unstored
            .remove(message)
            .filter(|u| Some(u.subscription) == sub)?;
        if self.acked_unstored.len() >= MAX_UNSTORED {
            self.acked_unstored.clear();
        }
        self.acked_unstored.insert((u.channel, u.version));
        Some(u.subscription)
    }

    /// The commit failed: remember what the apps were told, and when to ask the server
    /// again.
    fn store_failed(&mut self, items: &[BatchItem], signalled: &HashSet<MessageId>) {
        // Bounded: past the limit those acks get NotFound and the copies come again.
        if self.unstored.len() + signalled.len() > MAX_UNSTORED {
            self.unstored.clear();
        }
        for i in items {
            if let Some(m) = i.message.as_ref().filter(|m| signalled.contains(&m.id)) {
                let u = Unstored {
                    subscription: m.subscription_id,
                    channel: i.channel_id.clone(),
                    version: i.version.clone(),
                };
                self.unstored.insert(m.id.clone(), u);
            }
        }
        // Not acknowledged: the server keeps these, but sends them again only on a new
        // connection. Reconnect after a pause, longer each time the storage still fails.
        // One reconnect per cycle: further failures before it (the rest of the burst) must
        // not push it later.
        if self.redeliver.is_none() {
            self.store_failures += 1;
            let wait = doubling(RETRY_BASE, RETRY_MAX, self.store_failures);
            self.redeliver = Some(Instant::now() + wait);
        }
    }

    fn stored(&mut self, items: &[BatchItem]) {
        self.redeliver = None;
        self.store_failures = 0;
        if !self.unstored.is_empty() {
            for m in items.iter().filter_map(|i| i.message.as_ref()) {
                self.unstored.remove(&m.id);
            }
        }
    }
}

/// What the plan sees of the owner loop's state.
struct LiveFacts<'a> {
    index: &'a super::index::Index,
    store: &'a Store,
    policy: &'a Policy,
    delivery: &'a mut DeliveryState,
    acked_unstored: &'a mut HashSet<(ChannelId, String)>,
}

impl Facts for LiveFacts<'_> {
    fn subscription(&self, channel: &ChannelId) -> Option<&SubscriptionRecord> {
        self.index.get(self.index.by_channel(channel)?)
    }

    fn seen(&self, channel: &ChannelId, version: &str) -> bool {
        matches!(self.store.seen(channel, version), Ok(true))
    }

    fn take_acked_unstored(&mut self, channel: &ChannelId, version: &str) -> bool {
        !self.acked_unstored.is_empty()
            && self
                .acked_unstored
                .remove(&(channel.clone(), version.to_string()))
    }

    fn app_present(&self, app: &AppId) -> bool {
        self.delivery.app_present(app)
    }

    fn may_show(&self, app: &AppId) -> bool {
        self.delivery.may_show(self.policy, self.store, app)
    }

    fn take_show(&mut self, app: &AppId) -> bool {
        self.delivery.rate_ok(self.policy, app)
    }
}

impl Push {
    /// `first` and the notifications already queued behind it, up to `MAX_BATCH`; another
    /// event read meanwhile is held for the loop's next turn. When that is already a
    /// stream (`STREAM_BURST` or more), the connection task is let run once more first,
    /// to read what its socket already holds: the burst then shares one commit with them
    /// instead of each part paying its own fsync. A lone message never waits for this.
    pub(super) async fn drain_burst(&mut self, first: Notification) -> Vec<Notification> {
        let mut batch = vec![first];
        self.take_queued(&mut batch);
        if batch.len() >= STREAM_BURST && batch.len() < MAX_BATCH && self.io.held.is_none() {
            tokio::task::yield_now().await;
            self.take_queued(&mut batch);
        }
        batch
    }

    fn take_queued(&mut self, batch: &mut Vec<Notification>) {
        while batch.len() < MAX_BATCH {
            match self.io.conn_events.try_recv() {
                Ok(Event::Notification(n)) => batch.push(n),
                Ok(other) => {
                    self.io.held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
    }

    /// A burst of notifications: decrypt, plan, store in one transaction, then ack, then
    /// deliver.
    pub(super) async fn notifications(&mut self, batch: Vec<Notification>) {
        let now = now_ms();
        self.upkeep.burst_started();
        let ttl = self.policy.max_age.as_secs().min(u32::MAX as u64) as u32;
        // Decrypt the whole burst first: the plan needs every payload.
        let decrypted = decrypt_burst(&batch, &self.decrypt_jobs(&batch));
        let plan = {
            let mut facts = LiveFacts {
                index: &self.index,
                store: &self.store,
                policy: &self.policy,
                delivery: &mut self.delivery,
                acked_unstored: &mut self.burst.acked_unstored,
            };
            plan_burst(batch, decrypted, &mut facts, Clock { now_ms: now, ttl })
        };
        for (channel, why) in plan.unregister {
            self.io.conn.unregister(channel, why);
        }
        let signalled = self.signal_early(&plan.items, &plan.planned);
        if !signalled.is_empty() {
            // The D-Bus side was woken on this, the daemon's one thread: let it write
            // those signals before the commit's fsync, or they wait for it after all.
            tokio::task::yield_now().await;
        }
        let mut acks = plan.acks;
        let stored = self.commit(plan.items, plan.planned, now, &signalled, &mut acks);
        // Only now, after the commit, may the server forget them.
        self.io.conn.ack(acks).await;
        self.apply(stored, &signalled);
        self.update_hello();
    }

    fn decrypt_jobs(&self, batch: &[Notification]) -> Vec<Option<Job>> {
        batch
            .iter()
            .map(|n| {
                let id = self.index.by_channel(&n.channel_id)?;
                self.index
                    .get(id)
                    .filter(|r| !r.expired)
                    .map(|r| (r.keys.clone(), r.kind))
            })
            .collect()
    }

    /// Tell running apps of their ordinary messages before the commit (see `plan`).
    fn signal_early(&self, items: &[BatchItem], planned: &[Planned]) -> HashSet<MessageId> {
        let mut signalled = HashSet::new();
        for (item, p) in items.iter().zip(planned) {
            let (Some(m), true) = (&item.message, p.early) else {
                continue;
            };
            let Some(rec) = self.index.get(p.subscription) else {
                continue;
            };
            signalled.insert(m.id.clone());
            self.emit(DomainEvent::Message {
                subscription: SubscriptionInfo::from_record(rec),
                message: m.clone(),
                delivery: Delivery::Signal,
                flags: MessageFlags::default(),
            });
        }
        signalled
    }

    /// Record the burst in one transaction; add each recorded notification's ack to
    /// `acks`. Returns what was stored (not the copies the store recognised).
    fn commit(
        &mut self,
        items: Vec<BatchItem>,
        planned: Vec<Planned>,
        now: i64,
        signalled: &HashSet<MessageId>,
        acks: &mut Vec<Acknowledgement>,
    ) -> Vec<(BatchItem, Planned)> {
        if items.is_empty() {
            return Vec::new();
        }
        let running: HashSet<i64> = items
            .iter()
            .filter_map(|i| i.message.as_ref().map(|m| m.subscription_id))
            .filter(|id| {
                self.index
                    .get(*id)
                    .is_some_and(|r| self.delivery.app_present(&r.app_id))
            })
            .collect();
        let cap = self.pending_cap(now, &running);
        match self.store.record_batch(&items, now, &cap) {
            Ok((outcomes, evicted)) => {
                self.burst.stored(&items);
                log_evicted(evicted);
                self.cap_again_at(cap.grace_ends());
                let mut stored = Vec::new();
                for ((item, outcome), p) in items.into_iter().zip(outcomes).zip(planned) {
                    let ack = match outcome {
                        Recorded::Duplicate => Ack::NotDelivered,
                        Recorded::Stored => p.ack,
                    };
                    acks.push(Acknowledgement {
                        channel_id: item.channel_id.clone(),
                        version: item.version.clone(),
                        ack,
                    });
                    if outcome == Recorded::Stored {
                        stored.push((item, p));
                    }
                }
                stored
            }
            Err(e) => {
                // The running apps already have some of them: remember which, so their
                // acks are taken (and their copies not shown again).
                self.burst.store_failed(&items, signalled);
                error!(error = %e, count = items.len(), "cannot store notifications: not acknowledged; the server will send them again");
                Vec::new()
            }
        }
    }

    /// Apply what was committed to memory, then tell the apps.
    fn apply(&mut self, stored: Vec<(BatchItem, Planned)>, signalled: &HashSet<MessageId>) {
        let mut touched: Vec<i64> = Vec::new();
        for (item, p) in stored {
            self.burst.received += 1;
            let id = p.subscription;
            let (Some(c), Some(rec)) = (item.counters, self.index.get_mut(id)) else {
                continue;
            };
            let quota_changed = rec.quota != c.quota;
            rec.push_count = c.push_count;
            rec.last_push = c.last_push;
            rec.quota = c.quota;
            rec.expired = c.expired;
            if p.expires_now {
                rec.expired_reason = ExpiryReason::Quota.as_str().to_string();
            }
            if !touched.contains(&id) {
                touched.push(id);
            }
            let rec = rec.clone();
            let info = SubscriptionInfo::from_record(&rec);
            if let Some(m) = item.message {
                self.deliver_stored(&rec, &info, m, p.presentation, signalled);
            }
            if quota_changed {
                self.emit(DomainEvent::QuotaChanged {
                    subscription: info.clone(),
                });
            }
            if p.expires_now {
                info!(subscription = id, app = %rec.app_id, "quota used up: subscription expired");
                self.io
                    .conn
                    .unregister(rec.channel_id.clone(), Unregister::Quota);
                self.emit(DomainEvent::Expired {
                    subscription: info,
                    reason: ExpiryReason::Quota.as_str(),
                });
            }
        }
        self.announce(&touched, true);
    }

    /// A stored message: shown, offered, signalled or delivered in the background, as
    /// planned and as its app is there or not.
    fn deliver_stored(
        &mut self,
        rec: &SubscriptionRecord,
        info: &SubscriptionInfo,
        m: StoredMessage,
        presentation: Presentation,
        signalled: &HashSet<MessageId>,
    ) {
        let id = rec.id;
        let present = self.delivery.app_present(&rec.app_id);
        let mut flags = MessageFlags::default();
        let delivery = match (presentation, rec.kind, present) {
            // Shown by us: a running app hears of it; a stopped one is not started for it
            // (the message waits).
            (Presentation::Show(d), _, _) => {
                self.emit(DomainEvent::ShowNotification {
                    subscription: info.clone(),
                    declarative: d,
                    urgency: m.urgency.clone(),
                });
                flags.notification_shown = true;
                present.then_some(Delivery::Signal)
            }
            (Presentation::Mutable(d), _, _) => {
                flags.declarative = true;
                let wait = MutableWait {
                    deadline: Instant::now() + self.policy.mutable_grace,
                    subscription: id,
                    declarative: d,
                    urgency: m.urgency.clone(),
                };
                self.delivery.offer_mutable(m.id.clone(), wait);
                if present {
                    Some(Delivery::Signal)
                } else {
                    self.background_delivery(id)
                }
            }
            (Presentation::Ordinary, super::Kind::WebPush, true) => Some(Delivery::Signal),
            (Presentation::Ordinary, _, _) => self.background_delivery(id),
        };
        let Some(delivery) = delivery else {
            return;
        };
        if delivery == Delivery::Signal && signalled.contains(&m.id) {
            // Sent before the commit.
            return;
        }
        if !present {
            self.delivery.delivered_in_background(&rec.app_id);
        }
        if delivery != Delivery::Signal {
            self.delivery.start_call(&m.id);
        }
        self.emit(DomainEvent::Message {
            subscription: info.clone(),
            message: m,
            delivery,
            flags,
        });
    }

    /// The reconnect after a failed store is due: the server sends what it keeps again.
    pub(super) fn redeliver_due(&mut self, now: Instant) {
        if self.burst.redeliver.is_some_and(|at| at <= now) {
            info!("asking the server again for the messages that could not be stored");
            self.burst.redeliver = None;
            let conn = self.io.conn.clone();
            tokio::spawn(async move { conn.reconnect().await });
        }
    }
}

/// Every drop is logged, once per subscription and burst (a flood must not become a flood
/// of log lines).
pub(super) fn log_evicted(evicted: Vec<(i64, String)>) {
    let mut per_sub: HashMap<i64, (usize, String)> = HashMap::new();
    for (sub, msg) in evicted {
        per_sub.entry(sub).or_insert((0, msg)).0 += 1;
    }
    for (sub, (count, first)) in per_sub {
        warn!(subscription = sub, count, first_message = %first, "pending messages dropped, oldest first: delivery.max_pending_per_subscription reached");
    }
}
