//! The domain: subscriptions, notifications, quota and delivery.
//!
//! One task owns the `Store` and the in-memory index of subscriptions; everyone else sends
//! it `Input`s. Its loop selects over a closed set of inputs — connection events, D-Bus
//! requests, app presence, delivery results, its one timer — so every trigger is visible here.
//!
//! **Architecture invariant:** nothing acknowledges a notification with 100 before the
//! transaction that stores it has committed. A notification that cannot be stored is not
//! acknowledged at all, so the server keeps it.

pub mod declarative;
mod types;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use types::*;

use crate::clock::now_ms;
use crate::config::Config;
use crate::connection::backoff::doubling;
use crate::connection::{
    self, Ack, Acknowledgement, Event, HelloParams, Notification, RequestError, Unregister,
};
use crate::crypto::{self, Encoding, EncodingHeaders, SubscriptionKeys};
use crate::ids::{message_id, AppId, ChannelId, Scope, Uaid};
use crate::store::{BatchItem, Counters, Recorded, Store, StoredMessage, SubscriptionRecord};

/// Notifications handled in one transaction at most.
const MAX_BATCH: usize = 128;

/// Everything the owner loop reacts to.
#[derive(Debug)]
pub enum Input {
    Request(Request),
    /// An app's connection appeared on (`true`) or left (`false`) the bus.
    Presence {
        app: AppId,
        unique: String,
        present: bool,
    },
    /// The app's `Client.Message` method answered (`true`) or failed (`false`).
    Delivered {
        subscription: i64,
        message_id: String,
        ok: bool,
    },
    /// Whether a desktop notification server is there to show declarative messages (it has
    /// an owner on the bus, or can be activated).
    NotificationServer(bool),
    /// A channel registration finished (started by `Subscribe`, renewal or server reset).
    Registered {
        job: RegisterJob,
        result: Result<String, RequestError>,
    },
}

/// A registration in flight and what to do when it ends.
#[derive(Debug)]
pub struct RegisterJob {
    channel: ChannelId,
    keys: SubscriptionKeys,
    kind: JobKind,
}

#[derive(Debug)]
enum JobKind {
    New {
        app: AppId,
        sandbox: Option<Sandbox>,
        scope: Scope,
        options: SubscribeOptions,
        system: bool,
    },
    /// Re-register an existing subscription with a new channel.
    Renew { id: i64, reason: &'static str },
}

/// The cloneable way in.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Input>,
}

impl Handle {
    pub async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, PushError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Request(make(reply)))
            .await
            .map_err(|_| PushError::Unavailable("webpushd is shutting down".into()))?;
        rx.await
            .map_err(|_| PushError::Unavailable("webpushd is shutting down".into()))?
    }

    pub async fn presence(&self, app: AppId, unique: String, present: bool) {
        let _ = self
            .tx
            .send(Input::Presence {
                app,
                unique,
                present,
            })
            .await;
    }

    pub async fn notification_server(&self, available: bool) {
        let _ = self.tx.send(Input::NotificationServer(available)).await;
    }

    pub async fn delivered(&self, subscription: i64, message_id: String, ok: bool) {
        let _ = self
            .tx
            .send(Input::Delivered {
                subscription,
                message_id,
                ok,
            })
            .await;
    }
}

/// The part of `Config` the domain needs.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_quota: i32,
    pub activation_grace: Duration,
    pub exempt_apps: Vec<String>,
    pub max_pending: u32,
    pub max_age: Duration,
    pub notifications_enabled: bool,
    pub rate_per_minute: u32,
    pub mutable_grace: Duration,
}

impl Policy {
    pub fn from_config(c: &Config) -> Policy {
        Policy {
            max_quota: c.quota.max_per_subscription as i32,
            activation_grace: c.quota.activation_grace,
            exempt_apps: c.quota.exempt_apps.clone(),
            max_pending: c.delivery.max_pending_per_subscription,
            max_age: c.delivery.max_age,
            notifications_enabled: c.notifications.enabled,
            rate_per_minute: c.notifications.rate_per_minute,
            mutable_grace: c.notifications.mutable_grace,
        }
    }
}

pub struct Push {
    store: Store,
    policy: Policy,
    conn: connection::Handle,
    conn_events: mpsc::Receiver<Event>,
    inputs: mpsc::Receiver<Input>,
    self_tx: mpsc::Sender<Input>,
    out: mpsc::UnboundedSender<DomainEvent>,
    hello: watch::Sender<HelloParams>,
    cancel: CancellationToken,

    /// Boxed: a map keeps up to twice as many slots as entries, and a record is ~400 bytes.
    subs: HashMap<i64, Box<SubscriptionRecord>>,
    by_channel: HashMap<ChannelId, i64>,
    by_scope: HashMap<(AppId, Scope), i64>,
    /// Subscribe calls waiting for a registration of the same (app, scope).
    waiting: HashMap<(AppId, Scope), Vec<Reply<SubscriptionInfo>>>,
    /// Subscriptions whose re-registration is under way.
    renewing: HashSet<i64>,
    presence: HashMap<AppId, HashSet<String>>,
    /// When we last delivered to an app in the background (activation), for the grace.
    last_background: HashMap<AppId, Instant>,
    uaid: Option<Uaid>,
    received: u64,
    /// A connection event read while draining a burst, to handle next.
    held: Option<Event>,
    /// An input read while gathering a batch of acknowledgements, to handle next.
    held_input: Option<Input>,
    /// Messages handed to an app by a method call whose answer is still awaited.
    inflight: HashSet<String>,
    /// Subscriptions whose background delivery failed: when to try again, and how many
    /// times it failed in a row.
    retries: HashMap<i64, (Instant, u32)>,
    /// Messages a running app was told of before a commit that then failed (message id →
    /// subscription, channel, version). The server sends them again; an app that acks one
    /// meanwhile is answered as for a stored message, not NotFound.
    unstored: HashMap<String, (i64, ChannelId, String)>,
    /// Of those, the ones the app acknowledged: their next copy from the server is
    /// acknowledged to it and neither stored nor signalled again.
    acked_unstored: HashSet<(ChannelId, String)>,
    /// Next daily housekeeping (pruning, uninstalled Flatpak apps).
    maintenance: Instant,
    /// When to hand memory left over from startup or a burst back to the system.
    trim_at: Option<Instant>,
    /// `$XDG_DATA_HOME`, where user Flatpak installations live.
    data_home: std::path::PathBuf,
    /// After a failed store: when to reconnect so the server sends the unstored messages
    /// again.
    redeliver: Option<Instant>,
    /// Stores that failed in a row (for the pause before that reconnect).
    store_failures: u32,
    /// Whether a notification server can show declarative messages; until told, none.
    notification_server: bool,
    /// When each app last had a notification shown, for the rate limit.
    shown: HashMap<AppId, std::collections::VecDeque<Instant>>,
    /// Mutable declarative messages offered to their app: shown if not acknowledged by
    /// the deadline. Keyed by message id.
    mutable_waiting: HashMap<String, (Instant, i64, declarative::Declarative, String)>,
}

/// How a decrypted message is presented.
#[derive(Debug)]
enum Presentation {
    Ordinary,
    /// Shown by the daemon now.
    Show(declarative::Declarative),
    /// Offered to the app first; shown if it does not acknowledge within the grace.
    Mutable(declarative::Declarative),
}

/// Background delivery retries: 5 s doubling to 10 min.
const RETRY_BASE: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(600);
const MAINTENANCE_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Bound on the messages remembered as signalled but not stored (and as acknowledged so).
const MAX_UNSTORED: usize = 10_000;
/// How long after startup, or after the first message of a burst, memory is given back.
const TRIM_AFTER: Duration = Duration::from_secs(3);

impl Push {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        policy: Policy,
        conn: connection::Handle,
        conn_events: mpsc::Receiver<Event>,
        out: mpsc::UnboundedSender<DomainEvent>,
        hello: watch::Sender<HelloParams>,
        cancel: CancellationToken,
    ) -> Result<(Push, Handle), crate::store::StoreError> {
        let (tx, inputs) = mpsc::channel(1024);
        let uaid = store.uaid()?;
        let mut push = Push {
            store,
            policy,
            conn,
            conn_events,
            inputs,
            self_tx: tx.clone(),
            out,
            hello,
            cancel,
            subs: HashMap::new(),
            by_channel: HashMap::new(),
            by_scope: HashMap::new(),
            waiting: HashMap::new(),
            renewing: HashSet::new(),
            presence: HashMap::new(),
            last_background: HashMap::new(),
            uaid,
            received: 0,
            held: None,
            held_input: None,
            inflight: HashSet::new(),
            retries: HashMap::new(),
            unstored: HashMap::new(),
            acked_unstored: HashSet::new(),
            maintenance: Instant::now() + MAINTENANCE_EVERY,
            trim_at: Some(Instant::now() + TRIM_AFTER),
            data_home: directories::BaseDirs::new()
                .map(|b| b.data_dir().to_path_buf())
                .unwrap_or_default(),
            shown: HashMap::new(),
            mutable_waiting: HashMap::new(),
            notification_server: false,
            redeliver: None,
            store_failures: 0,
        };
        for rec in push.store.subscriptions()? {
            push.index(rec);
        }
        let broadcasts = push.store.broadcasts()?.into_iter().collect();
        push.hello.send_modify(|h| h.broadcasts = broadcasts);
        push.update_hello();
        push.housekeeping();
        Ok((push, Handle { tx }))
    }

    /// Every subscription, for the D-Bus side to serve objects before taking the bus name.
    pub fn snapshot(&self) -> Vec<SubscriptionInfo> {
        let mut v: Vec<_> = self.subs.values().map(|r| self.info(r)).collect();
        v.sort_by_key(|i| i.id);
        v
    }

    pub fn uaid(&self) -> Option<&Uaid> {
        self.uaid.as_ref()
    }

    fn index(&mut self, rec: SubscriptionRecord) {
        self.by_channel.insert(rec.channel_id.clone(), rec.id);
        self.by_scope
            .insert((rec.app_id.clone(), rec.scope.clone()), rec.id);
        self.subs.insert(rec.id, Box::new(rec));
    }

    fn unindex(&mut self, id: i64) -> Option<SubscriptionRecord> {
        let rec = self.subs.remove(&id)?;
        self.by_channel.remove(&rec.channel_id);
        self.by_scope
            .remove(&(rec.app_id.clone(), rec.scope.clone()));
        Some(*rec)
    }

    fn info(&self, r: &SubscriptionRecord) -> SubscriptionInfo {
        SubscriptionInfo::from_record(r)
    }

    fn emit(&self, e: DomainEvent) {
        let _ = self.out.send(e);
    }

    /// The UAID goes into hello only while an unexpired subscription exists.
    fn update_hello(&self) {
        let any = self.subs.values().any(|s| !s.expired);
        let uaid = if any { self.uaid.clone() } else { None };
        self.hello.send_if_modified(|h| {
            let changed = h.uaid != uaid;
            h.uaid = uaid;
            changed
        });
    }

    fn app_present(&self, app: &AppId) -> bool {
        self.presence.get(app).is_some_and(|s| !s.is_empty())
    }

    pub async fn run(mut self) {
        // Anything that waited for an app while the daemon was down gets a first try.
        let waiting: Vec<i64> = self
            .subs
            .values()
            .filter(|s| s.bus_name.is_some() && !s.expired)
            .map(|s| s.id)
            .collect();
        for id in waiting {
            if let Some(d) = self.background_delivery(id) {
                self.deliver_pending(id, d);
            }
        }
        let mut expiry = self.next_timer();
        loop {
            if let Some(ev) = self.held.take() {
                self.connection_event(ev).await;
                continue;
            }
            if let Some(input) = self.held_input.take() {
                self.input(input).await;
                continue;
            }
            // Not biased: under a stream of notifications, the apps' acknowledgements must
            // get their turn, or the pending cap evicts what they are about to ack.
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                ev = self.conn_events.recv() => match ev {
                    Some(ev) => self.connection_event(ev).await,
                    None => break,
                },
                input = self.inputs.recv() => match input {
                    Some(input) => self.input(input).await,
                    None => break,
                },
                _ = sleep_or_never(expiry) => self.timer(),
            }
            expiry = self.next_timer();
        }
        for (_, replies) in self.waiting.drain() {
            for r in replies {
                let _ = r.send(Err(PushError::Unavailable(
                    "webpushd is shutting down".into(),
                )));
            }
        }
        debug!("push loop stopped");
    }

    /// The one timer of the owner loop: the earliest of message expiry, a delivery retry
    /// and the daily housekeeping.
    fn next_timer(&self) -> Option<Instant> {
        let expiry = self.store.next_expiry().ok().flatten().map(|at| {
            let wait = (at - now_ms()).max(0) as u64;
            Instant::now() + Duration::from_millis(wait)
        });
        let retry = self.retries.values().map(|(at, _)| *at).min();
        let grace = self.mutable_waiting.values().map(|w| w.0).min();
        let redeliver = self.redeliver;
        [
            expiry,
            retry,
            grace,
            redeliver,
            self.trim_at,
            Some(self.maintenance),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn timer(&mut self) {
        let now = Instant::now();
        self.expire_messages();
        if self.redeliver.is_some_and(|at| at <= now) {
            info!("asking the server again for the messages that could not be stored");
            self.redeliver = None;
            let conn = self.conn.clone();
            tokio::spawn(async move { conn.reconnect().await });
        }
        let due: Vec<i64> = self
            .retries
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            // Parked far ahead until this attempt's answer reschedules or clears it.
            if let Some(entry) = self.retries.get_mut(&id) {
                entry.0 = now + RETRY_MAX;
            }
            if let Some(d) = self.background_delivery(id) {
                self.deliver_pending(id, d);
            }
        }
        if self.trim_at.is_some_and(|at| at <= now) {
            self.trim_at = None;
            self.release_memory();
        }
        if now >= self.maintenance {
            self.maintenance = now + MAINTENANCE_EVERY;
            self.housekeeping();
        }
        // Mutable messages the app did not take in time: the daemon shows them.
        let late: Vec<String> = self
            .mutable_waiting
            .iter()
            .filter(|(_, w)| w.0 <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for message_id in late {
            let Some((_, id, d, urgency)) = self.mutable_waiting.remove(&message_id) else {
                continue;
            };
            let Some(rec) = self.subs.get(&id).map(|r| SubscriptionRecord::clone(r)) else {
                continue;
            };
            if self.may_show(&rec.app_id) && self.rate_ok(&rec.app_id) {
                debug!(subscription = id, message = %message_id, "the app did not take a mutable message: showing it");
                self.emit(DomainEvent::ShowNotification {
                    subscription: self.info(&rec),
                    declarative: d,
                    urgency,
                });
            }
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

    /// Once at startup and once a day: forget old de-duplication entries, and expire the
    /// subscriptions of Flatpak apps that are no longer installed.
    fn housekeeping(&mut self) {
        let _ = self.store.prune_seen(now_ms() - 7 * 24 * 3600 * 1000);
        let gone: Vec<i64> = self
            .subs
            .values()
            .filter(|s| {
                !s.expired
                    && s.sandbox == Some(Sandbox::Flatpak)
                    && !crate::identity::flatpak_installed(s.app_id.as_str(), &self.data_home)
            })
            .map(|s| s.id)
            .collect();
        for id in gone {
            info!(
                subscription = id,
                "the Flatpak app is no longer installed: subscription expired"
            );
            self.expire(id, "app-removed", Unregister::Revoked);
        }
    }

    /// Expire a subscription now: unregister it, keep it with `Expired = true`, tell the app.
    fn expire(&mut self, id: i64, reason: &'static str, code: Unregister) {
        let Some(rec) = self.subs.get_mut(&id) else {
            return;
        };
        rec.expired = true;
        let rec = rec.clone();
        if let Err(e) = self.store.update_subscription(&rec) {
            error!(error = %e, "cannot store the expiry");
        }
        self.conn.unregister(rec.channel_id.clone(), code);
        let info = self.info(&rec);
        self.emit(DomainEvent::Updated(info.clone()));
        self.emit(DomainEvent::Expired {
            subscription: info,
            reason,
        });
        self.update_hello();
    }

    /// Notifications on, and allowed for this app.
    fn may_show(&self, app: &AppId) -> bool {
        self.notification_server
            && self.policy.notifications_enabled
            && self.store.notifications_allowed(app).unwrap_or(true)
    }

    /// Take one of the app's shows for this minute, if any is left.
    fn rate_ok(&mut self, app: &AppId) -> bool {
        let now = Instant::now();
        let window = self.shown.entry(app.clone()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            window.pop_front();
        }
        if window.len() >= self.policy.rate_per_minute as usize {
            return false;
        }
        window.push_back(now);
        true
    }

    fn show(&self, subscription: SubscriptionInfo, m: &StoredMessage, d: declarative::Declarative) {
        self.emit(DomainEvent::ShowNotification {
            subscription,
            declarative: d,
            urgency: m.urgency.clone(),
        });
    }

    /// How a subscription's messages go out while its app is not on the bus, if at all.
    fn background_delivery(&self, id: i64) -> Option<Delivery> {
        let rec = self.subs.get(&id)?;
        match (rec.kind, &rec.bus_name) {
            (Kind::UnifiedPush(_), _) => Some(Delivery::UnifiedPush),
            (Kind::WebPush, Some(bus)) => Some(Delivery::Activate(bus.clone())),
            (Kind::WebPush, None) => None,
        }
    }

    fn expire_messages(&mut self) {
        match self.store.expire_messages(now_ms()) {
            Ok(gone) => {
                for (sub, id) in gone {
                    info!(subscription = sub, message = %id, "pending message dropped: delivery.max_age passed");
                }
            }
            Err(e) => error!(error = %e, "cannot expire pending messages"),
        }
    }

    async fn connection_event(&mut self, ev: Event) {
        match ev {
            Event::Hello {
                uaid,
                sent,
                broadcasts,
            } => self.hello_event(uaid, sent, broadcasts),
            Event::Broadcast(b) => self.save_broadcasts(b),
            Event::Notification(n) => {
                let mut batch = vec![n];
                while batch.len() < MAX_BATCH {
                    match self.conn_events.try_recv() {
                        Ok(Event::Notification(n)) => batch.push(n),
                        Ok(other) => {
                            self.held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                self.notifications(batch).await;
            }
        }
    }

    fn save_broadcasts(&mut self, b: std::collections::BTreeMap<String, String>) {
        if b.is_empty() {
            return;
        }
        let items: Vec<_> = b.clone().into_iter().collect();
        if let Err(e) = self.store.set_broadcasts(&items) {
            error!(error = %e, "cannot store broadcast versions");
            return;
        }
        self.hello.send_modify(|h| h.broadcasts.extend(b));
    }

    fn hello_event(
        &mut self,
        uaid: Uaid,
        sent: Option<Uaid>,
        broadcasts: std::collections::BTreeMap<String, String>,
    ) {
        self.save_broadcasts(broadcasts);
        let reset = sent.as_ref().is_some_and(|s| *s != uaid);
        if self.uaid.as_ref() != Some(&uaid) {
            if let Err(e) = self.store.set_uaid(&uaid) {
                error!(error = %e, "cannot store the UAID");
            }
            self.uaid = Some(uaid.clone());
            self.emit(DomainEvent::Uaid(uaid.as_str().to_string()));
        }
        if reset {
            warn!(
                uaid = uaid.short(),
                "the server assigned a new UAID: registering every channel again"
            );
        }
        // Re-register after a reset, and retry any earlier re-registration that failed.
        let ids: Vec<i64> = self
            .subs
            .values()
            .filter(|s| !s.expired && (reset || s.endpoint.is_empty()))
            .map(|s| s.id)
            .collect();
        for id in ids {
            if let Some(s) = self.subs.get_mut(&id) {
                s.endpoint.clear();
            }
            self.start_renew(id, "server-reset", false);
        }
        self.update_hello();
    }

    /// Register a subscription again under a new channel id.
    fn start_renew(&mut self, id: i64, reason: &'static str, new_keys: bool) {
        if !self.renewing.insert(id) {
            return;
        }
        let Some(rec) = self.subs.get(&id) else {
            return;
        };
        let keys = if new_keys {
            match SubscriptionKeys::generate() {
                Ok(k) => k,
                Err(e) => {
                    error!(error = %e, "cannot generate keys");
                    self.renewing.remove(&id);
                    return;
                }
            }
        } else {
            rec.keys.clone()
        };
        let key = rec.app_server_key.as_deref().map(crypto::b64_encode);
        self.spawn_register(
            RegisterJob {
                channel: ChannelId::generate(),
                keys,
                kind: JobKind::Renew { id, reason },
            },
            key,
        );
    }

    fn spawn_register(&self, job: RegisterJob, key: Option<String>) {
        let conn = self.conn.clone();
        let tx = self.self_tx.clone();
        tokio::spawn(async move {
            let result = conn.register(job.channel.clone(), key).await;
            let _ = tx.send(Input::Registered { job, result }).await;
        });
    }

    async fn input(&mut self, input: Input) {
        match input {
            Input::Request(r) => self.request(r),
            Input::Presence {
                app,
                unique,
                present,
            } => self.presence_changed(app, unique, present),
            Input::Delivered {
                subscription,
                message_id,
                ok,
            } => {
                self.inflight.remove(&message_id);
                if ok {
                    self.mutable_waiting.remove(&message_id);
                    self.retries.remove(&subscription);
                    match self.store.ack(subscription, &message_id) {
                        Ok(_) => self.refresh(subscription),
                        Err(e) => error!(error = %e, "cannot forget a delivered message"),
                    }
                } else {
                    let failures = self.retries.get(&subscription).map_or(0, |r| r.1) + 1;
                    let wait = doubling(RETRY_BASE, RETRY_MAX, failures);
                    info!(subscription, message = %message_id, retry_in_s = wait.as_secs(), "background delivery failed: the message stays pending");
                    self.retries
                        .insert(subscription, (Instant::now() + wait, failures));
                }
            }
            Input::Registered { job, result } => self.registered(job, result),
            Input::NotificationServer(available) => {
                if available != self.notification_server {
                    info!(available, "desktop notification server");
                }
                self.notification_server = available;
            }
        }
    }

    fn refresh(&self, id: i64) {
        if let Some(r) = self.subs.get(&id) {
            self.emit(DomainEvent::Updated(self.info(r)));
        }
    }

    fn request(&mut self, r: Request) {
        match r {
            Request::Subscribe {
                caller,
                scope,
                options,
                reply,
            } => self.subscribe(caller, scope, options, reply),
            Request::Get { app, scope, reply } => {
                let res = match self.by_scope.get(&(app, scope.clone())) {
                    Some(id) => Ok(self.info(&self.subs[id])),
                    None => Err(PushError::NotFound(format!(
                        "no subscription for scope \"{scope}\""
                    ))),
                };
                let _ = reply.send(res);
            }
            Request::GetById { app, id, reply } => {
                let _ = reply.send(self.owned(app.as_ref(), id).map(|r| self.info(r)));
            }
            Request::Unsubscribe { app, scope, reply } => {
                let res = match self.by_scope.get(&(app, scope)).copied() {
                    Some(id) => self.remove(id, Unregister::ByApp),
                    None => Ok(false),
                };
                let _ = reply.send(res);
            }
            Request::Remove { app, id, reply } => {
                let code = if app.is_some() {
                    Unregister::ByApp
                } else {
                    Unregister::Revoked
                };
                let res = self
                    .owned(app.as_ref(), id)
                    .map(|_| ())
                    .and_then(|_| self.remove(id, code));
                let _ = reply.send(res);
            }
            Request::List { app, reply } => {
                let mut v: Vec<_> = self
                    .subs
                    .values()
                    .filter(|s| app.as_ref().is_none_or(|a| *a == s.app_id))
                    .map(|s| self.info(s))
                    .collect();
                v.sort_by_key(|s| s.id);
                let _ = reply.send(Ok(v));
            }
            Request::Fetch { app, scope, reply } => {
                let res = match self.by_scope.get(&(app, scope.clone())) {
                    Some(id) => self
                        .store
                        .pending(*id)
                        .map_err(|e| PushError::Failed(format!("cannot read messages: {e}"))),
                    None => Err(PushError::NotFound(format!(
                        "no subscription for scope \"{scope}\""
                    ))),
                };
                let _ = reply.send(res);
            }
            ack @ Request::Ack { .. } => self.acks(ack),
            Request::ResetQuota { id, reply } => {
                let res = self.owned(None, id).map(|_| ());
                if res.is_ok() {
                    self.restore_quota(id);
                }
                let _ = reply.send(res);
            }
            Request::SetNotificationsAllowed {
                app,
                allowed,
                reply,
            } => {
                let res = self
                    .store
                    .set_notifications_allowed(&app, allowed)
                    .map_err(|e| PushError::Failed(format!("cannot store the permission: {e}")));
                info!(%app, allowed, "notification permission changed");
                let _ = reply.send(res);
            }
            Request::Counts { reply } => {
                let pending = self
                    .subs
                    .keys()
                    .map(|id| self.store.pending_count(*id).unwrap_or(0))
                    .sum();
                let _ = reply.send(Ok(Counts {
                    subscriptions: self.subs.len() as u64,
                    expired: self.subs.values().filter(|s| s.expired).count() as u64,
                    pending_messages: pending,
                    messages_received: self.received,
                    apps_connected: self
                        .presence
                        .keys()
                        .filter(|app| self.subs.values().any(|s| s.app_id == **app))
                        .count() as u64,
                    notification_server: self.notification_server,
                }));
            }
        }
    }

    /// `AckMessage`: this one and every other already queued, in one transaction (one
    /// fsync), so acknowledgements keep up with a stream of notifications.
    fn acks(&mut self, first: Request) {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && self.held_input.is_none() {
            match self.inputs.try_recv() {
                Ok(Input::Request(r @ Request::Ack { .. })) => batch.push(r),
                Ok(other) => self.held_input = Some(other),
                Err(_) => break,
            }
        }
        struct One {
            id: Option<i64>,
            scope: Scope,
            message_id: String,
            reply: Reply<()>,
        }
        let items: Vec<One> = batch
            .into_iter()
            .filter_map(|r| match r {
                Request::Ack {
                    app,
                    scope,
                    message_id,
                    reply,
                } => Some(One {
                    id: self.by_scope.get(&(app, scope.clone())).copied(),
                    scope,
                    message_id,
                    reply,
                }),
                _ => None,
            })
            .collect();
        let keys: Vec<(i64, &str)> = items
            .iter()
            .filter_map(|i| i.id.map(|id| (id, i.message_id.as_str())))
            .collect();
        let done = self.store.ack_many(&keys);
        let mut results = match &done {
            Ok(v) => v.clone().into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        // Nothing an app can see of a subscription changes with an ack (its pending
        // messages are read from the store when asked): no Updated event.
        for i in items {
            self.mutable_waiting.remove(&i.message_id);
            // One result per item that has a subscription, in order.
            let deleted = match (i.id, &done) {
                (Some(_), Ok(_)) => results.next(),
                _ => None,
            };
            // A message signalled before a commit that failed: the app has it, and its
            // next copy from the server needs no storing.
            if deleted != Some(true) {
                if let Some((sub, ch, version)) = self
                    .unstored
                    .remove(&i.message_id)
                    .filter(|(sub, _, _)| Some(*sub) == i.id)
                {
                    debug!(subscription = sub, message = %i.message_id, "acknowledged before it could be stored");
                    if self.acked_unstored.len() >= MAX_UNSTORED {
                        self.acked_unstored.clear();
                    }
                    self.acked_unstored.insert((ch, version));
                    let _ = i.reply.send(Ok(()));
                    continue;
                }
            }
            let res = match (i.id, &done) {
                (None, _) => Err(PushError::NotFound(format!(
                    "no subscription for scope \"{}\"",
                    i.scope
                ))),
                (Some(_), Err(e)) => Err(PushError::Failed(format!("cannot acknowledge: {e}"))),
                (Some(_), Ok(_)) => match deleted {
                    Some(true) => Ok(()),
                    _ => Err(PushError::NotFound(format!(
                        "no pending message \"{}\" for scope \"{}\"",
                        i.message_id, i.scope
                    ))),
                },
            };
            let _ = i.reply.send(res);
        }
    }

    /// The subscription `id`, if `app` (or an admin, `None`) may see it.
    fn owned(&self, app: Option<&AppId>, id: i64) -> Result<&SubscriptionRecord, PushError> {
        match self.subs.get(&id) {
            Some(r) if app.is_none_or(|a| *a == r.app_id) => Ok(r),
            _ => Err(PushError::NotFound(format!("no subscription {id}"))),
        }
    }

    fn remove(&mut self, id: i64, code: Unregister) -> Result<bool, PushError> {
        self.store
            .delete_subscription(id)
            .map_err(|e| PushError::Failed(format!("cannot delete the subscription: {e}")))?;
        let Some(rec) = self.unindex(id) else {
            return Ok(false);
        };
        if !rec.expired {
            self.conn.unregister(rec.channel_id.clone(), code);
        }
        self.retries.remove(&id);
        info!(subscription = id, app = %rec.app_id, "unsubscribed");
        self.emit(DomainEvent::Removed(SubscriptionInfo::from_record(&rec)));
        self.update_hello();
        Ok(true)
    }

    fn subscribe(
        &mut self,
        caller: Caller,
        scope: Scope,
        options: SubscribeOptions,
        reply: Reply<SubscriptionInfo>,
    ) {
        if options.system && caller.sandboxed() {
            let _ = reply.send(Err(PushError::AccessDenied(
                "sandboxed apps cannot ask for system subscriptions".into(),
            )));
            return;
        }
        let key = (caller.app_id.clone(), scope.clone());
        if let Some(id) = self.by_scope.get(&key).copied() {
            let rec = &self.subs[&id];
            if rec.kind != options.kind {
                let _ = reply.send(Err(PushError::InvalidArgument(format!(
                    "{:?} is already used by a {} registration of this app",
                    scope.as_str(),
                    if rec.kind == Kind::WebPush {
                        "Web Push"
                    } else {
                        "UnifiedPush"
                    }
                ))));
                return;
            }
            if rec.app_server_key != options.application_server_key {
                let _ = reply.send(Err(PushError::KeyMismatch));
                return;
            }
            if !rec.expired && !rec.endpoint.is_empty() {
                if options.bus_name.is_some() && options.bus_name != rec.bus_name {
                    let rec = self.subs.get_mut(&id).expect("present");
                    rec.bus_name = options.bus_name.clone();
                    let rec = rec.clone();
                    if let Err(e) = self.store.update_subscription(&rec) {
                        warn!(error = %e, "cannot store the bus name");
                    }
                    self.emit(DomainEvent::Updated(self.info(&rec)));
                }
                let _ = reply.send(Ok(self.info(&self.subs[&id])));
                return;
            }
            // Expired (or lost by a server reset): replace it with a fresh one.
            self.waiting.entry(key).or_default().push(reply);
            let reason = if self.subs[&id].expired {
                "expired-renewed"
            } else {
                "server-reset"
            };
            self.start_renew(id, reason, true);
            return;
        }
        if let Some(w) = self.waiting.get_mut(&key) {
            w.push(reply);
            return;
        }
        let keys = match SubscriptionKeys::generate() {
            Ok(k) => k,
            Err(e) => {
                let _ = reply.send(Err(PushError::Failed(format!("cannot generate keys: {e}"))));
                return;
            }
        };
        let system = options.system
            || self
                .policy
                .exempt_apps
                .iter()
                .any(|a| a == caller.app_id.as_str());
        let vapid = options
            .application_server_key
            .as_deref()
            .map(crypto::b64_encode);
        self.waiting.insert(key, vec![reply]);
        self.spawn_register(
            RegisterJob {
                channel: ChannelId::generate(),
                keys,
                kind: JobKind::New {
                    app: caller.app_id,
                    sandbox: caller.sandbox,
                    scope,
                    options,
                    system,
                },
            },
            vapid,
        );
    }

    fn registered(&mut self, job: RegisterJob, result: Result<String, RequestError>) {
        match job.kind {
            JobKind::New {
                app,
                sandbox,
                scope,
                options,
                system,
            } => {
                let key = (app.clone(), scope.clone());
                let replies = self.waiting.remove(&key).unwrap_or_default();
                let res = match result {
                    Ok(endpoint) => {
                        let mut rec = SubscriptionRecord {
                            id: 0,
                            channel_id: job.channel,
                            app_id: app,
                            scope,
                            endpoint,
                            keys: job.keys,
                            app_server_key: options.application_server_key,
                            push_count: 0,
                            last_push: 0,
                            quota: if system { -1 } else { self.policy.max_quota },
                            expired: false,
                            system,
                            bus_name: options.bus_name,
                            created: now_ms(),
                            kind: options.kind,
                            description: options.description,
                            sandbox,
                        };
                        match self.store.insert_subscription(&rec) {
                            Ok(id) => {
                                rec.id = id;
                                info!(subscription = id, app = %rec.app_id, channel = %rec.channel_id, "subscribed");
                                let info = self.info(&rec);
                                self.index(rec);
                                self.update_hello();
                                self.emit(DomainEvent::Added(info.clone()));
                                Ok(info)
                            }
                            Err(e) => {
                                self.conn
                                    .unregister(rec.channel_id.clone(), Unregister::ByApp);
                                Err(PushError::Failed(format!(
                                    "cannot store the subscription: {e}"
                                )))
                            }
                        }
                    }
                    Err(e) => Err(request_error(e)),
                };
                for r in replies {
                    let _ = r.send(res.clone());
                }
            }
            JobKind::Renew { id, reason } => {
                self.renewing.remove(&id);
                let Some(rec) = self.subs.get(&id).map(|r| SubscriptionRecord::clone(r)) else {
                    // Removed meanwhile: give the new channel back.
                    if result.is_ok() {
                        self.conn.unregister(job.channel, Unregister::ByApp);
                    }
                    return;
                };
                let key = (rec.app_id.clone(), rec.scope.clone());
                let replies = self.waiting.remove(&key).unwrap_or_default();
                let res = match result {
                    Ok(endpoint) => {
                        let mut new = rec.clone();
                        new.channel_id = job.channel;
                        new.endpoint = endpoint;
                        new.keys = job.keys;
                        new.expired = false;
                        if new.quota >= 0 {
                            new.quota = self.policy.max_quota;
                        }
                        match self.store.update_subscription(&new) {
                            Ok(()) => {
                                self.unindex(id);
                                self.index(new.clone());
                                self.update_hello();
                                let info = self.info(&new);
                                info!(subscription = id, reason, "subscription renewed");
                                self.emit(DomainEvent::Updated(info.clone()));
                                self.emit(DomainEvent::SubscriptionChanged {
                                    subscription: info.clone(),
                                    reason,
                                });
                                // An expired subscription comes back with its whole budget.
                                if new.quota != rec.quota {
                                    self.emit(DomainEvent::QuotaChanged {
                                        subscription: info.clone(),
                                    });
                                }
                                Ok(info)
                            }
                            Err(e) => {
                                self.conn.unregister(new.channel_id, Unregister::ByApp);
                                Err(PushError::Failed(format!(
                                    "cannot store the subscription: {e}"
                                )))
                            }
                        }
                    }
                    Err(e) => {
                        warn!(subscription = id, error = %e, "re-registration failed");
                        if reason == "server-reset" {
                            if let RequestError::Rejected(_) = e {
                                // The server refuses this channel: it is gone for good.
                                self.expire(id, "server", Unregister::Revoked);
                            }
                        }
                        Err(request_error(e))
                    }
                };
                for r in replies {
                    let _ = r.send(res.clone());
                }
            }
        }
    }

    fn presence_changed(&mut self, app: AppId, unique: String, present: bool) {
        let was = self.app_present(&app);
        if present {
            self.presence.entry(app.clone()).or_default().insert(unique);
        } else if let Some(set) = self.presence.get_mut(&app) {
            set.remove(&unique);
            if set.is_empty() {
                self.presence.remove(&app);
            }
        }
        if !present || was {
            return;
        }
        let ids: Vec<i64> = self
            .subs
            .values()
            .filter(|s| s.app_id == app)
            .map(|s| s.id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let caused_by_us = self
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
            let d = match self.subs.get(&id).map(|s| s.kind) {
                Some(Kind::UnifiedPush(_)) => Delivery::UnifiedPush,
                _ => Delivery::Signal,
            };
            self.deliver_pending(id, d);
        }
    }

    /// The app was used: full quota again, and an expired subscription comes back.
    fn restore_quota(&mut self, id: i64) {
        let Some(rec) = self.subs.get(&id).map(|r| SubscriptionRecord::clone(r)) else {
            return;
        };
        if rec.expired {
            self.start_renew(id, "expired-renewed", true);
            return;
        }
        if rec.quota < 0 || rec.quota == self.policy.max_quota {
            return;
        }
        let mut new = rec;
        new.quota = self.policy.max_quota;
        if let Err(e) = self.store.update_subscription(&new) {
            error!(error = %e, "cannot store the quota");
            return;
        }
        self.subs.insert(id, Box::new(new.clone()));
        let info = self.info(&new);
        self.emit(DomainEvent::Updated(info.clone()));
        self.emit(DomainEvent::QuotaChanged { subscription: info });
    }

    fn deliver_pending(&mut self, id: i64, delivery: Delivery) {
        let Some(rec) = self.subs.get(&id) else {
            return;
        };
        let msgs = match self.store.pending(id) {
            Ok(m) => m,
            Err(e) => {
                error!(error = %e, "cannot read pending messages");
                return;
            }
        };
        if msgs.is_empty() {
            return;
        }
        let info = self.info(rec);
        let by_call = delivery != Delivery::Signal;
        for m in msgs {
            if by_call && !self.inflight.insert(m.id.clone()) {
                continue;
            }
            self.emit(DomainEvent::Message {
                subscription: info.clone(),
                message: m,
                delivery: delivery.clone(),
                flags: MessageFlags::default(),
            });
        }
    }

    /// A burst of notifications: decrypt, store in one transaction, then ack, then deliver.
    async fn notifications(&mut self, batch: Vec<Notification>) {
        let now = now_ms();
        if self.trim_at.is_none() {
            self.trim_at = Some(Instant::now() + TRIM_AFTER);
        }
        let ttl = self.policy.max_age.as_secs().min(u32::MAX as u64) as u32;
        let mut acks_now: Vec<Acknowledgement> = Vec::new();
        let mut items: Vec<BatchItem> = Vec::new();
        // Per item: (ack code, subscription id, expired-by-this-message)
        let mut plan: Vec<(Ack, i64, bool, Presentation)> = Vec::new();
        let mut counters: HashMap<i64, Counters> = HashMap::new();
        let mut in_batch: HashSet<(ChannelId, String)> = HashSet::new();
        // Messages already signalled to their running app, before the commit.
        let mut signalled: HashSet<String> = HashSet::new();

        // Decrypt the whole burst first, on every core: decryption (P-256 ECDH and key
        // import) is most of a message's CPU, and messages are independent.
        let jobs: Vec<Option<(SubscriptionKeys, Kind)>> = batch
            .iter()
            .map(|n| {
                self.by_channel
                    .get(&n.channel_id)
                    .and_then(|id| self.subs.get(id))
                    .filter(|r| !r.expired)
                    .map(|r| (r.keys.clone(), r.kind))
            })
            .collect();
        let mut decrypted_all = decrypt_burst(&batch, &jobs).into_iter();

        for n in batch {
            let pre = decrypted_all.next().flatten();
            let ack = |ack| Acknowledgement {
                channel_id: n.channel_id.clone(),
                version: n.version.clone(),
                ack,
            };
            let Some(id) = self.by_channel.get(&n.channel_id).copied() else {
                info!(channel = %n.channel_id, "notification for an unknown channel: acknowledged 102 and unregistered");
                acks_now.push(ack(Ack::NotDelivered));
                self.conn
                    .unregister(n.channel_id.clone(), Unregister::Revoked);
                continue;
            };
            let rec = &self.subs[&id];
            if rec.expired {
                // The server still holds the channel: its unregister was lost (the daemon
                // stopped before sending it, or the connection dropped). Say it again, or
                // the endpoint keeps accepting pushes that nobody will see.
                debug!(
                    subscription = id,
                    "notification for an expired subscription: 102 and unregistered"
                );
                acks_now.push(ack(Ack::NotDelivered));
                self.conn
                    .unregister(n.channel_id.clone(), Unregister::Quota);
                continue;
            }
            // A copy of something already received (the server resends what it did not
            // see acknowledged): recognised before it can count against the quota or
            // reach the app a second time. (record_batch would also refuse to store it.)
            if matches!(self.store.seen(&n.channel_id, &n.version), Ok(true)) {
                debug!(subscription = id, version = %n.version, "a copy of a message already received: 102");
                acks_now.push(ack(Ack::NotDelivered));
                continue;
            }
            if !in_batch.insert((n.channel_id.clone(), n.version.clone())) {
                // A second copy in one batch: the first one's ack (after the commit)
                // answers for both; acking this one now could forget an unstored message.
                continue;
            }
            if !self.acked_unstored.is_empty()
                && self
                    .acked_unstored
                    .remove(&(n.channel_id.clone(), n.version.clone()))
            {
                debug!(subscription = id, version = %n.version, "a copy of a message the app acknowledged before it could be stored: 100");
                acks_now.push(ack(Ack::Delivered));
                continue;
            }
            let Some(decrypted) = pre else {
                continue;
            };
            let background = !self.app_present(&rec.app_id);
            // A declarative message is shown by the daemon (or, if mutable, offered to the
            // running app first). Shown notifications are user-visible: no quota.
            let presentation = match (&decrypted, rec.kind) {
                (Ok(payload), Kind::WebPush) => {
                    match declarative::parse(payload) {
                        Some(d) if self.may_show(&rec.app_id) => {
                            let app_takes = !background || rec.bus_name.is_some();
                            if d.mutable && app_takes {
                                Presentation::Mutable(d)
                            } else if self.rate_ok(&rec.app_id.clone()) {
                                Presentation::Show(d)
                            } else {
                                info!(subscription = id, "notification rate limit reached: the message waits for the app");
                                Presentation::Ordinary
                            }
                        }
                        _ => Presentation::Ordinary,
                    }
                }
                _ => Presentation::Ordinary,
            };
            let rec = &self.subs[&id];
            let c = counters.entry(id).or_insert(Counters {
                subscription_id: id,
                push_count: rec.push_count,
                last_push: rec.last_push,
                quota: rec.quota,
                expired: rec.expired,
            });
            c.push_count += 1;
            c.last_push = now;
            let mut expires_now = false;
            if background && c.quota > 0 && !matches!(presentation, Presentation::Show(_)) {
                c.quota -= 1;
                if c.quota == 0 {
                    c.expired = true;
                    expires_now = true;
                }
            }
            let (code, message) = match decrypted {
                Ok(payload) => (
                    Ack::Delivered,
                    Some(StoredMessage {
                        id: message_id(&n.channel_id, &n.version),
                        subscription_id: id,
                        channel_id: n.channel_id.clone(),
                        version: n.version.clone(),
                        payload,
                        received: now,
                        ttl,
                        topic: n.headers.get("topic").cloned().unwrap_or_default(),
                        urgency: n
                            .headers
                            .get("urgency")
                            .cloned()
                            .unwrap_or_else(|| "normal".into()),
                    }),
                ),
                Err(e) => {
                    warn!(subscription = id, channel = %n.channel_id, reason = %e, "cannot decrypt a notification: acknowledged 101");
                    let code = match rec.kind {
                        Kind::WebPush => Ack::Undecryptable,
                        Kind::UnifiedPush(_) => Ack::NotDelivered,
                    };
                    (code, None)
                }
            };
            // A running app hears of an ordinary message now, before the commit and its
            // fsync (most of the daemon's latency at low rates). Safe for "never lose": the
            // server is acknowledged only after the commit, so if it fails (or the daemon
            // dies first) the server sends the message again and the app gets it twice, as
            // at-least-once delivery allows. The app's AckMessage reaches this loop after
            // the commit. A server redelivery of something already processed is not
            // signalled again.
            if let (Some(m), Presentation::Ordinary, Kind::WebPush, false) =
                (&message, &presentation, rec.kind, background)
            {
                signalled.insert(m.id.clone());
                self.emit(DomainEvent::Message {
                    subscription: SubscriptionInfo::from_record(rec),
                    message: m.clone(),
                    delivery: Delivery::Signal,
                    flags: MessageFlags::default(),
                });
            }
            items.push(BatchItem {
                channel_id: n.channel_id.clone(),
                version: n.version.clone(),
                counters: Some(*c),
                message,
            });
            plan.push((code, id, expires_now, presentation));
        }

        if !signalled.is_empty() {
            // The D-Bus side was woken on this thread (tokio runs it next here, and other
            // threads cannot take it): let it write those signals before the commit's
            // fsync, or they wait for it after all.
            tokio::task::yield_now().await;
        }
        let mut stored = Vec::new();
        if !items.is_empty() {
            let running: HashSet<i64> = items
                .iter()
                .filter_map(|i| i.message.as_ref().map(|m| m.subscription_id))
                .filter(|id| {
                    self.subs
                        .get(id)
                        .is_some_and(|r| self.app_present(&r.app_id))
                })
                .collect();
            match self
                .store
                .record_batch(&items, now, self.policy.max_pending, &running)
            {
                Ok((outcomes, evicted)) => {
                    self.redeliver = None;
                    self.store_failures = 0;
                    if !self.unstored.is_empty() {
                        for m in items.iter().filter_map(|i| i.message.as_ref()) {
                            self.unstored.remove(&m.id);
                        }
                    }
                    // Every drop is logged, once per subscription and burst (a flood must not
                    // become a flood of log lines).
                    let mut per_sub: HashMap<i64, (usize, String)> = HashMap::new();
                    for (sub, msg) in evicted {
                        let e = per_sub.entry(sub).or_insert((0, msg.clone()));
                        e.0 += 1;
                    }
                    for (sub, (count, first)) in per_sub {
                        warn!(subscription = sub, count, first_message = %first, "pending messages dropped, oldest first: delivery.max_pending_per_subscription reached");
                    }
                    for ((item, outcome), (code, id, expires_now, presentation)) in
                        items.into_iter().zip(outcomes).zip(plan)
                    {
                        let code = if outcome == Recorded::Duplicate {
                            Ack::NotDelivered
                        } else {
                            code
                        };
                        acks_now.push(Acknowledgement {
                            channel_id: item.channel_id.clone(),
                            version: item.version.clone(),
                            ack: code,
                        });
                        if outcome == Recorded::Stored {
                            stored.push((item, id, expires_now, presentation));
                        }
                    }
                }
                Err(e) => {
                    // The running apps already have some of them: remember which, so their
                    // acks are taken (and their copies not shown again). Bounded: past the
                    // limit those acks get NotFound and the copies come again, as before.
                    if self.unstored.len() + signalled.len() > MAX_UNSTORED {
                        self.unstored.clear();
                    }
                    for i in &items {
                        if let Some(m) = i.message.as_ref().filter(|m| signalled.contains(&m.id)) {
                            self.unstored.insert(
                                m.id.clone(),
                                (m.subscription_id, i.channel_id.clone(), i.version.clone()),
                            );
                        }
                    }
                    // Not acknowledged: the server keeps these, but sends them again only
                    // on a new connection. Reconnect after a pause, longer each time the
                    // storage still fails.
                    // One reconnect per cycle: further failures before it (the rest of the
                    // burst) must not push it later.
                    if self.redeliver.is_none() {
                        self.store_failures += 1;
                        let wait = doubling(RETRY_BASE, RETRY_MAX, self.store_failures);
                        self.redeliver = Some(Instant::now() + wait);
                    }
                    error!(error = %e, count = items.len(), "cannot store notifications: not acknowledged; the server will send them again");
                }
            }
        }
        // Only now, after the commit, may the server forget them.
        self.conn.ack(acks_now).await;

        // Apply what was committed to memory, then tell the apps.
        let mut touched: Vec<i64> = Vec::new();
        for (item, id, expires_now, presentation) in stored {
            self.received += 1;
            if let (Some(c), Some(rec)) = (item.counters, self.subs.get_mut(&id)) {
                let quota_changed = rec.quota != c.quota;
                rec.push_count = c.push_count;
                rec.last_push = c.last_push;
                rec.quota = c.quota;
                rec.expired = c.expired;
                if !touched.contains(&id) {
                    touched.push(id);
                }
                let rec = rec.clone();
                let info = SubscriptionInfo::from_record(&rec);
                if let Some(m) = item.message {
                    let present = self.app_present(&rec.app_id);
                    let mut flags = MessageFlags::default();
                    let delivery = match (&presentation, rec.kind, present) {
                        // Shown by us: a running app hears of it; a stopped one is not
                        // started for it (the message waits).
                        (Presentation::Show(d), _, _) => {
                            self.show(info.clone(), &m, d.clone());
                            flags.notification_shown = true;
                            present.then_some(Delivery::Signal)
                        }
                        (Presentation::Mutable(d), _, _) => {
                            flags.declarative = true;
                            let deadline = Instant::now() + self.policy.mutable_grace;
                            self.mutable_waiting
                                .insert(m.id.clone(), (deadline, id, d.clone(), m.urgency.clone()));
                            if present {
                                Some(Delivery::Signal)
                            } else {
                                self.background_delivery(id)
                            }
                        }
                        (Presentation::Ordinary, Kind::WebPush, true) => Some(Delivery::Signal),
                        (Presentation::Ordinary, _, _) => self.background_delivery(id),
                    };
                    if delivery == Some(Delivery::Signal) && signalled.contains(&m.id) {
                        // Sent before the commit.
                    } else if let Some(delivery) = delivery {
                        if !present {
                            self.last_background
                                .insert(rec.app_id.clone(), Instant::now());
                        }
                        if delivery != Delivery::Signal {
                            self.inflight.insert(m.id.clone());
                        }
                        self.emit(DomainEvent::Message {
                            subscription: info.clone(),
                            message: m,
                            delivery,
                            flags,
                        });
                    }
                }
                if quota_changed {
                    self.emit(DomainEvent::QuotaChanged {
                        subscription: info.clone(),
                    });
                }
                if expires_now {
                    info!(subscription = id, app = %rec.app_id, "quota used up: subscription expired");
                    self.conn
                        .unregister(rec.channel_id.clone(), Unregister::Quota);
                    self.emit(DomainEvent::Expired {
                        subscription: info,
                        reason: "quota",
                    });
                }
            }
        }
        for id in touched {
            self.refresh(id);
        }
        self.update_hello();
    }
}

fn request_error(e: RequestError) -> PushError {
    match e {
        RequestError::Timeout | RequestError::Unavailable => {
            PushError::Unavailable(format!("{e}; webpushd will keep trying, ask again later"))
        }
        RequestError::Rejected(_) => PushError::Failed(e.to_string()),
        RequestError::Shutdown => PushError::Unavailable(e.to_string()),
    }
}

/// Decrypt (or, for UnifiedPush, just decode) each notification that has a job, spreading
/// the work over the available cores for bursts. `None` where there is no job.
#[allow(clippy::type_complexity)]
fn decrypt_burst(
    batch: &[Notification],
    jobs: &[Option<(SubscriptionKeys, Kind)>],
) -> Vec<Option<Result<Vec<u8>, crypto::CryptoError>>> {
    // A panic while decrypting (a bug, met by one hostile payload) fails that message
    // alone, like any undecryptable one (acknowledged 101, logged): left unacknowledged
    // it would come back at every connection, and it must not take the owner loop down.
    let one = |(n, job): (&Notification, &Option<(SubscriptionKeys, Kind)>)| {
        job.as_ref().map(|(keys, kind)| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match kind {
                Kind::WebPush => decrypt_notification(keys, n),
                Kind::UnifiedPush(_) => raw_body(n),
            }))
            .unwrap_or_else(|_| {
                Err(crypto::CryptoError::Decrypt(
                    "the decryption failed with a panic (a bug: please report it)".into(),
                ))
            })
        })
    };
    // Asked once: the answer reads cgroup files.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8)
    });
    // A thread costs tens of microseconds; one decryption about two hundred.
    if threads < 2 || batch.len() < 4 {
        return batch.iter().zip(jobs).map(one).collect();
    }
    let chunk = batch.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = batch
            .chunks(chunk)
            .zip(jobs.chunks(chunk))
            .map(|(b, j)| {
                (
                    b.len(),
                    s.spawn(move || b.iter().zip(j).map(one).collect::<Vec<_>>()),
                )
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(len, h)| {
                // Each message catches its own panic; a chunk that still failed is
                // skipped, not acknowledged: the server keeps those and sends them again.
                h.join()
                    .unwrap_or_else(|_| (0..len).map(|_| None).collect())
            })
            .collect()
    })
}

/// The raw RFC 8291 body for a UnifiedPush app, which decrypts it itself. The UnifiedPush
/// specification allows 1-4096 bytes.
fn raw_body(n: &Notification) -> Result<Vec<u8>, crypto::CryptoError> {
    let body = match &n.data {
        Some(d) => crypto::b64(d)?,
        None => Vec::new(),
    };
    if body.is_empty() || body.len() > 4096 {
        return Err(crypto::CryptoError::Decrypt(format!(
            "a UnifiedPush message must be 1-4096 bytes, not {}",
            body.len()
        )));
    }
    Ok(body)
}

/// Decode and decrypt one notification's body. An empty push gives an empty payload.
fn decrypt_notification(
    keys: &SubscriptionKeys,
    n: &Notification,
) -> Result<Vec<u8>, crypto::CryptoError> {
    let Some(data) = &n.data else {
        return Ok(Vec::new());
    };
    let body = crypto::b64(data)?;
    let headers = EncodingHeaders {
        encoding: n.headers.get("encoding").map(String::as_str),
        encryption: n.headers.get("encryption").map(String::as_str),
        crypto_key: n
            .headers
            .get("crypto_key")
            .or_else(|| n.headers.get("crypto-key"))
            .map(String::as_str),
    };
    let encoding = Encoding::from_headers(&headers)?;
    crypto::decrypt(keys, &encoding, &body)
}

async fn sleep_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
