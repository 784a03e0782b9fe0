//! Getting stored messages to their apps: which apps are on the bus, background delivery
//! and its retries, the rate limit on shown notifications, and the grace a mutable
//! declarative message gives its app before the daemon shows it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info};

use super::declarative::Declarative;
use super::{Delivery, DomainEvent, Kind, MessageFlags, MessageId, Policy, Push, SubscriptionInfo};
use crate::connection::backoff::doubling;
use crate::ids::AppId;
use crate::store::Store;

/// Background delivery retries: 5 s doubling to 10 min.
pub(super) const RETRY_BASE: Duration = Duration::from_secs(5);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(600);

/// A message whose background delivery failed: each message keeps its own back-off, so
/// another message of the subscription getting through does not reset or forget it.
#[derive(Debug, Clone, Copy)]
struct Retry {
    subscription: i64,
    at: Instant,
    /// Failures in a row.
    failures: u32,
}

/// A mutable declarative message offered to its app: shown if not acknowledged by the
/// deadline.
#[derive(Debug, Clone)]
pub(super) struct MutableWait {
    pub deadline: Instant,
    pub subscription: i64,
    pub declarative: Declarative,
    pub urgency: String,
}

#[derive(Debug, Default)]
pub(super) struct DeliveryState {
    /// The unique bus names of each app's connections.
    presence: HashMap<AppId, HashSet<String>>,
    /// When we last delivered to an app in the background (activation), for the grace.
    last_background: HashMap<AppId, Instant>,
    /// Messages handed to an app by a method call whose answer is still awaited.
    inflight: HashSet<MessageId>,
    retries: HashMap<MessageId, Retry>,
    /// Whether a notification server can show declarative messages; until told, none.
    notification_server: bool,
    /// When each app last had a notification shown, for the rate limit.
    shown: HashMap<AppId, VecDeque<Instant>>,
    /// Mutable declarative messages offered to their app, by message id.
    mutable_waiting: HashMap<MessageId, MutableWait>,
}

impl DeliveryState {
    pub fn app_present(&self, app: &AppId) -> bool {
        self.presence.get(app).is_some_and(|s| !s.is_empty())
    }

    /// Apps with a connection on the bus.
    pub fn apps(&self) -> impl Iterator<Item = &AppId> {
        self.presence.keys()
    }

    pub fn notification_server(&self) -> bool {
        self.notification_server
    }

    pub fn next_retry(&self) -> Option<Instant> {
        self.retries.values().map(|r| r.at).min()
    }

    pub fn next_grace(&self) -> Option<Instant> {
        self.mutable_waiting.values().map(|w| w.deadline).min()
    }

    pub fn forget_retries(&mut self, subscription: i64) {
        self.retries.retain(|_, r| r.subscription != subscription);
    }

    /// The app handled it: the daemon does not show it.
    pub fn taken(&mut self, message: &MessageId) {
        self.mutable_waiting.remove(message);
    }

    pub fn offer_mutable(&mut self, message: MessageId, wait: MutableWait) {
        self.mutable_waiting.insert(message, wait);
    }

    /// About to hand `message` to its app by a method call; `false` if one is under way.
    pub fn start_call(&mut self, message: &MessageId) -> bool {
        self.inflight.insert(message.clone())
    }

    pub fn delivered_in_background(&mut self, app: &AppId) {
        self.last_background.insert(app.clone(), Instant::now());
    }

    /// Notifications on, and allowed for this app.
    pub fn may_show(&self, policy: &Policy, store: &Store, app: &AppId) -> bool {
        self.notification_server
            && policy.notifications_enabled
            && store.notifications_allowed(app).unwrap_or(true)
    }

    /// Take one of the app's shows for this minute, if any is left.
    pub fn rate_ok(&mut self, policy: &Policy, app: &AppId) -> bool {
        let now = Instant::now();
        let window = self.shown.entry(app.clone()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            window.pop_front();
        }
        if window.len() >= policy.rate_per_minute as usize {
            return false;
        }
        window.push_back(now);
        true
    }

    /// Record a connection of `app` appearing or leaving; whether the app was there before.
    fn set_presence(&mut self, app: &AppId, unique: String, present: bool) -> bool {
        let was = self.app_present(app);
        if present {
            self.presence.entry(app.clone()).or_default().insert(unique);
        } else if let Some(set) = self.presence.get_mut(app) {
            set.remove(&unique);
            if set.is_empty() {
                self.presence.remove(app);
            }
        }
        was
    }
}

impl Push {
    /// Anything that waited for an app while the daemon was down gets a first try.
    pub(super) fn deliver_waiting(&mut self) {
        let waiting = self.index.ids_where(|s| s.bus_name.is_some() && !s.expired);
        for id in waiting {
            if let Some(d) = self.background_delivery(id) {
                self.deliver_pending(id, d);
            }
        }
    }

    pub(super) fn notification_server(&mut self, available: bool) {
        if available != self.delivery.notification_server {
            info!(available, "desktop notification server");
        }
        self.delivery.notification_server = available;
    }

    /// The answer of a `Client.Message` or UnifiedPush call.
    pub(super) fn delivered(&mut self, subscription: i64, message_id: MessageId, ok: bool) {
        self.delivery.inflight.remove(&message_id);
        if ok {
            self.delivery.mutable_waiting.remove(&message_id);
            self.delivery.retries.remove(&message_id);
            match self.store.ack_many(&[(subscription, message_id.as_str())]) {
                Ok(found) if found[0] => self.announce(&[subscription], false),
                Ok(_) => {}
                Err(e) => error!(error = %e, "cannot forget a delivered message"),
            }
            return;
        }
        let failures = self
            .delivery
            .retries
            .get(&message_id)
            .map_or(0, |r| r.failures)
            + 1;
        let wait = doubling(RETRY_BASE, RETRY_MAX, failures);
        info!(subscription, message = %message_id, retry_in_s = wait.as_secs(), "background delivery failed: the message stays pending");
        let at = Instant::now() + wait;
        let retry = Retry {
            subscription,
            at,
            failures,
        };
        self.delivery.retries.insert(message_id, retry);
    }

    pub(super) fn retries_due(&mut self, now: Instant) {
        let mut due: HashMap<i64, HashSet<MessageId>> = HashMap::new();
        for (message, r) in self
            .delivery
            .retries
            .iter_mut()
            .filter(|(_, r)| r.at <= now)
        {
            // Parked far ahead until this attempt's answer reschedules or clears it.
            r.at = now + RETRY_MAX;
            due.entry(r.subscription)
                .or_default()
                .insert(message.clone());
        }
        for (id, messages) in due {
            let found = match self.background_delivery(id) {
                Some(d) => self.deliver_some(id, d, |m| messages.contains(m)),
                None => Vec::new(),
            };
            // Gone meanwhile (acknowledged, expired, dropped): nothing left to retry.
            for m in messages.iter().filter(|m| !found.contains(m)) {
                self.delivery.retries.remove(m);
            }
        }
    }

    /// Mutable messages the app did not take in time: the daemon shows them.
    pub(super) fn mutable_due(&mut self, now: Instant) {
        let late: Vec<MessageId> = self
            .delivery
            .mutable_waiting
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for message_id in late {
            let Some(w) = self.delivery.mutable_waiting.remove(&message_id) else {
                continue;
            };
            let Some(rec) = self.index.get(w.subscription) else {
                continue;
            };
            let app = &rec.app_id;
            if self.delivery.may_show(&self.policy, &self.store, app)
                && self.delivery.rate_ok(&self.policy, app)
            {
                debug!(subscription = w.subscription, message = %message_id, "the app did not take a mutable message: showing it");
                if let Err(e) = self.store.mark_shown(w.subscription, &message_id) {
                    error!(error = %e, "cannot note a message as shown");
                }
                self.emit(DomainEvent::ShowNotification {
                    subscription: SubscriptionInfo::from_record(rec),
                    declarative: w.declarative,
                    urgency: w.urgency,
                });
            }
        }
    }

    /// How a subscription's messages go out while its app is not on the bus, if at all.
    pub(super) fn background_delivery(&self, id: i64) -> Option<Delivery> {
        let rec = self.index.get(id)?;
        match (rec.kind, &rec.bus_name) {
            (Kind::UnifiedPush(_), _) => Some(Delivery::UnifiedPush),
            (Kind::WebPush, Some(bus)) => Some(Delivery::Activate(bus.clone())),
            (Kind::WebPush, None) => None,
        }
    }

    pub(super) fn presence_changed(&mut self, app: AppId, unique: String, present: bool) {
        let was = self.delivery.set_presence(&app, unique, present);
        if !present || was {
            return;
        }
        let ids = self.index.ids_where(|s| s.app_id == app);
        if ids.is_empty() {
            return;
        }
        let caused_by_us = self
            .delivery
            .last_background
            .get(&app)
            .is_some_and(|t| t.elapsed() < self.policy.activation_grace);
        if caused_by_us {
            debug!(%app, "app started by a background delivery: quota unchanged");
        } else {
            debug!(%app, "app is in use: restoring quota");
            for id in &ids {
                self.restore_quota(*id);
            }
        }
        // Give a returning app what it missed.
        for id in ids {
            let d = match self.index.get(id).map(|s| s.kind) {
                Some(Kind::UnifiedPush(_)) => Delivery::UnifiedPush,
                _ => Delivery::Signal,
            };
            self.deliver_pending(id, d);
        }
    }

    pub(super) fn deliver_pending(&mut self, id: i64, delivery: Delivery) {
        self.deliver_some(id, delivery, |_| true);
    }

    /// Deliver those of a subscription's pending messages that `which` picks; returns the
    /// ids of those found pending (a store error: all of them, to try again later).
    fn deliver_some(
        &mut self,
        id: i64,
        delivery: Delivery,
        which: impl Fn(&MessageId) -> bool,
    ) -> Vec<MessageId> {
        let Some(rec) = self.index.get(id) else {
            return Vec::new();
        };
        let msgs = match self.store.pending(id) {
            Ok(m) => m,
            Err(e) => {
                error!(error = %e, "cannot read pending messages");
                return self
                    .delivery
                    .retries
                    .keys()
                    .filter(|m| which(m))
                    .cloned()
                    .collect();
            }
        };
        let info = SubscriptionInfo::from_record(rec);
        let by_call = delivery != Delivery::Signal;
        let mut found = Vec::new();
        for m in msgs.into_iter().filter(|m| which(&m.id)) {
            found.push(m.id.clone());
            if by_call && !self.delivery.start_call(&m.id) {
                continue;
            }
            self.emit(DomainEvent::Message {
                subscription: info.clone(),
                message: m,
                delivery: delivery.clone(),
                flags: MessageFlags::default(),
            });
        }
        found
    }
}
