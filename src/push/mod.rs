//! The domain: subscriptions, notifications, quota and delivery.
//!
//! One task owns the `Store` and the in-memory index of subscriptions; everyone else sends
//! it `Input`s. Its loop selects over a closed set of inputs — connection events, D-Bus
//! requests, app presence, delivery results, its one timer — so every trigger is visible here.
//!
//! The rooms: `ingest` (a burst of notifications: `plan`, then commit, then apply),
//! `lifecycle` (subscribe, register, renew, expire, restore quota), `delivery` (presence,
//! retries, rate limit, mutable grace), `requests` (what apps and `pushctl` ask), `upkeep`
//! (housekeeping, memory, message expiry), `index` (the subscriptions in memory), `cap`
//! (the pending-cap policy), `decrypt` and `declarative` (payloads), `types` (the values).
//!
//! **Architecture invariant:** nothing acknowledges a notification with 100 before the
//! transaction that stores it has committed. A notification that cannot be stored is not
//! acknowledged at all, so the server keeps it.

mod cap;
pub mod declarative;
mod decrypt;
mod delivery;
mod index;
mod ingest;
mod lifecycle;
mod plan;
mod requests;
mod types;
mod upkeep;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub use cap::{PendingCap, EVICTION_GRACE_MS};
pub use lifecycle::RegisterJob;
pub use types::*;

use crate::config::Config;
use crate::connection::{self, Event, HelloParams, RequestError};
use crate::ids::{AppId, Uaid};
use crate::store::Store;
use delivery::DeliveryState;
use index::Index;
use ingest::BurstState;
use lifecycle::Registrations;
use requests::{Acked, Announce};
use upkeep::Upkeep;

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
        message_id: MessageId,
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

    pub async fn delivered(&self, subscription: i64, message_id: MessageId, ok: bool) {
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
    /// How long a message is safe from the pending cap.
    pub pending_grace: Duration,
    pub notifications_enabled: bool,
    pub rate_per_minute: u32,
    pub mutable_grace: Duration,
    /// The push server as configured (a URL, or `local`): the one a stored UAID must
    /// have come from to be offered in the hello.
    pub server_url: String,
}

impl Policy {
    pub fn from_config(c: &Config) -> Policy {
        Policy {
            max_quota: c.quota.max_per_subscription as i32,
            activation_grace: c.quota.activation_grace,
            exempt_apps: c.quota.exempt_apps.clone(),
            max_pending: c.delivery.max_pending_per_subscription,
            max_age: c.delivery.max_age,
            pending_grace: c.delivery.pending_grace,
            notifications_enabled: c.notifications.enabled,
            rate_per_minute: c.notifications.rate_per_minute,
            mutable_grace: c.notifications.mutable_grace,
            server_url: c.server_url.as_str().to_string(),
        }
    }
}

/// The owner loop's channels: what it reads, what it tells.
struct Io {
    conn: connection::Handle,
    conn_events: mpsc::Receiver<Event>,
    inputs: mpsc::Receiver<Input>,
    self_tx: mpsc::Sender<Input>,
    out: mpsc::UnboundedSender<DomainEvent>,
    hello: watch::Sender<HelloParams>,
    cancel: CancellationToken,
    /// A connection event read while draining a burst, to handle next.
    held: Option<Event>,
    /// An input read while gathering a batch of acknowledgements, to handle next.
    held_input: Option<Input>,
}

pub struct Push {
    store: Store,
    policy: Policy,
    io: Io,
    index: Index,
    uaid: Option<Uaid>,
    /// The stored UAID came from another push server: offer none in the hello, and
    /// register every subscription on the new server when it answers.
    server_changed: bool,
    registrations: Registrations,
    delivery: DeliveryState,
    burst: BurstState,
    acked: Acked,
    announce: Announce,
    upkeep: Upkeep,
}

impl Push {
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
        let (uaid, server_changed) = lifecycle::uaid_for_server(&store, &policy.server_url)?;
        let io = Io {
            conn,
            conn_events,
            inputs,
            self_tx: tx.clone(),
            out,
            hello,
            cancel,
            held: None,
            held_input: None,
        };
        let mut push = Push {
            store,
            policy,
            io,
            index: Index::default(),
            uaid,
            server_changed,
            registrations: Registrations::default(),
            delivery: DeliveryState::default(),
            burst: BurstState::default(),
            acked: Acked::default(),
            announce: Announce::default(),
            upkeep: Upkeep::new(),
        };
        for rec in push.store.subscriptions()? {
            push.index.insert(rec);
        }
        let broadcasts = push.store.broadcasts()?.into_iter().collect();
        push.io.hello.send_modify(|h| h.broadcasts = broadcasts);
        push.update_hello();
        push.housekeeping();
        // A restart must not leave a subscription over the pending cap until its next burst.
        push.apply_cap(&push.index.ids_where(|_| true));
        Ok((push, Handle { tx }))
    }

    /// Every subscription, for the D-Bus side to serve objects before taking the bus name.
    pub fn snapshot(&self) -> Vec<SubscriptionInfo> {
        let mut v: Vec<_> = self
            .index
            .values()
            .map(SubscriptionInfo::from_record)
            .collect();
        v.sort_by_key(|i| i.id);
        v
    }

    pub fn uaid(&self) -> Option<&Uaid> {
        self.uaid.as_ref()
    }

    fn emit(&self, e: DomainEvent) {
        let _ = self.io.out.send(e);
    }

    /// Tell the D-Bus side that subscription `id` changed.
    fn refresh(&self, id: i64) {
        if let Some(r) = self.index.get(id) {
            self.emit(DomainEvent::Updated(SubscriptionInfo::from_record(r)));
        }
    }

    /// The UAID goes into hello only while an unexpired subscription exists.
    fn update_hello(&self) {
        let any = self.index.values().any(|s| !s.expired);
        let uaid = if any { self.uaid.clone() } else { None };
        self.io.hello.send_if_modified(|h| {
            let changed = h.uaid != uaid;
            h.uaid = uaid;
            changed
        });
    }

    pub async fn run(mut self) {
        self.deliver_waiting();
        loop {
            if let Some(ev) = self.io.held.take() {
                self.connection_event(ev).await;
                self.answer_acks();
                continue;
            }
            if let Some(input) = self.io.held_input.take() {
                self.input(input).await;
                self.answer_acks();
                continue;
            }
            let expiry = self.next_timer();
            // Not biased: under a stream of notifications, the apps' acknowledgements must
            // get their turn, or the pending cap evicts what they are about to ack.
            tokio::select! {
                _ = self.io.cancel.cancelled() => break,
                ev = self.io.conn_events.recv() => match ev {
                    Some(ev) => self.connection_event(ev).await,
                    None => break,
                },
                input = self.io.inputs.recv() => match input {
                    Some(input) => self.input(input).await,
                    None => break,
                },
                _ = sleep_or_never(expiry) => self.timer(),
            }
            self.answer_acks();
        }
        if let Err(e) = self.store.settle() {
            tracing::warn!(error = %e, "cannot commit the last acknowledgements: those messages will be delivered again");
        }
        self.answer_acks();
        self.registrations.shut_down();
        debug!("push loop stopped");
    }

    /// The one timer of the owner loop: the earliest of message expiry, a delivery retry,
    /// a mutable message's grace, the reconnect after a failed store, committing and
    /// announcing acknowledgements, the end of a
    /// pending-cap grace, giving memory back and the daily housekeeping.
    fn next_timer(&self) -> Option<Instant> {
        [
            self.upkeep.next_expiry(&self.store),
            self.delivery.next_retry(),
            self.delivery.next_grace(),
            self.burst.redeliver,
            self.store.settle_at().map(Instant::from_std),
            self.announce.due(),
            self.upkeep.trim_at,
            self.upkeep.cap_check,
            Some(self.upkeep.maintenance),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn timer(&mut self) {
        let now = Instant::now();
        self.expire_messages();
        self.redeliver_due(now);
        self.retries_due(now);
        self.upkeep_due(now);
        self.cap_due(now);
        self.acks_due(now);
        self.mutable_due(now);
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
                let batch = self.drain_burst(n).await;
                self.notifications(batch).await;
            }
        }
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
            } => self.delivered(subscription, message_id, ok),
            Input::Registered { job, result } => self.registered(job, result),
            Input::NotificationServer(available) => self.notification_server(available),
        }
    }
}

async fn sleep_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
