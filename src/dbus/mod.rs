//! The D-Bus face of the daemon: objects, signals, and who is on the bus.
//!
//! Thin by design: it resolves callers (`identity`), parses arguments, calls `push::Handle`
//! and maps errors (`error`). It turns `push`'s `DomainEvent`s into signals and object
//! changes (`pump`), and tells `push` which apps have connections (`track_presence`).
//!
//! **API boundary:** the interfaces here must match `dist/org.webpushd.Push1.xml`; a test
//! compares them with what the daemon introspects.

pub mod bus;
pub mod checked;
pub mod error;
pub mod identity;
pub mod manager;
pub mod notify;
pub mod subscription;
pub mod system;
pub mod unifiedpush;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use zbus::fdo::DBusProxy;
use zbus::names::BusName;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value};

pub use self::bus::{Bus, Objects};
use self::checked::Checked;
use self::error::Error;
use self::identity::Resolver;
pub use self::manager::ServerSwitch;
use self::manager::{Admin, Manager, PATH};
use self::subscription::{Shown, SubscriptionObject};
use crate::connection::ConnStatus;
use crate::ids::AppId;
use crate::push::{
    self, Delivery, DomainEvent, Kind, MessageFlags, StoredMessage, SubscriptionInfo,
};

pub const BUS_NAME: &str = "org.webpushd.Push1";
pub const CLIENT_PATH: &str = "/org/webpushd/Push1/Client";
pub const CLIENT_INTERFACE: &str = "org.webpushd.Push1.Client";
const NOTIFICATIONS: &str = "org.freedesktop.Notifications";
/// How long an activatable app has to take a message.
const CLIENT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub fn subscription_path(id: i64) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!("{PATH}/subscription/{id}"))
        .expect("a decimal id makes a valid path")
}

pub fn subscription_id_from_path(path: &ObjectPath<'_>) -> Result<i64, Error> {
    path.as_str()
        .strip_prefix(PATH)
        .and_then(|p| p.strip_prefix("/subscription/"))
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| Error::NotFound(format!("{path} is not a subscription")))
}

/// `received_at` (ms), `topic`, `urgency`, `ttl` (seconds the daemon keeps it), and
/// `notification_shown` (true) once the daemon has shown it as a desktop notification.
pub fn message_meta(m: &StoredMessage) -> HashMap<String, OwnedValue> {
    let mut meta = HashMap::new();
    let mut put = |k: &str, v: Value<'_>| {
        meta.insert(k.to_string(), v.try_to_owned().expect("plain values"));
    };
    put("received_at", Value::from(m.received));
    put("topic", Value::from(m.topic.as_str()));
    put("urgency", Value::from(m.urgency.as_str()));
    put("ttl", Value::from(m.ttl));
    if m.shown {
        put("notification_shown", Value::from(true));
    }
    meta
}

/// Which unique connections belong to which app.
#[derive(Debug, Default)]
pub struct Presence {
    inner: Mutex<PresenceInner>,
}

#[derive(Debug, Default)]
struct PresenceInner {
    by_unique: HashMap<String, AppId>,
    by_app: HashMap<AppId, HashSet<String>>,
}

impl Presence {
    /// Record `unique` as `app`; returns the app it belonged to before, if different.
    fn set(&self, unique: &str, app: AppId) -> Option<Option<AppId>> {
        let mut p = self.inner.lock().expect("presence lock");
        let old = p.by_unique.insert(unique.to_string(), app.clone());
        if old.as_ref() == Some(&app) {
            return None;
        }
        if let Some(old) = &old {
            if let Some(set) = p.by_app.get_mut(old) {
                set.remove(unique);
                if set.is_empty() {
                    p.by_app.remove(old);
                }
            }
        }
        p.by_app.entry(app).or_default().insert(unique.to_string());
        Some(old)
    }

    fn remove(&self, unique: &str) -> Option<AppId> {
        let mut p = self.inner.lock().expect("presence lock");
        let app = p.by_unique.remove(unique)?;
        if let Some(set) = p.by_app.get_mut(&app) {
            set.remove(unique);
            if set.is_empty() {
                p.by_app.remove(&app);
            }
        }
        Some(app)
    }

    pub fn connections(&self, app: &AppId) -> Vec<String> {
        self.inner
            .lock()
            .expect("presence lock")
            .by_app
            .get(app)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

async fn add_subscription(
    conn: &zbus::Connection,
    push: &push::Handle,
    resolver: &Arc<Resolver>,
    info: SubscriptionInfo,
) -> zbus::Result<()> {
    let path = subscription_path(info.id);
    conn.object_server()
        .at(
            path,
            Checked::new(SubscriptionObject {
                id: info.id,
                shown: Shown::of(&info),
                app_id: info.app_id,
                push: push.clone(),
                resolver: resolver.clone(),
            }),
        )
        .await?;
    Ok(())
}

/// Turn domain events into D-Bus traffic, until `push` goes away.
pub async fn pump(
    conn: zbus::Connection,
    mut events: mpsc::UnboundedReceiver<DomainEvent>,
    push: push::Handle,
    resolver: Arc<Resolver>,
    presence: Arc<Presence>,
    uaid: Arc<Mutex<String>>,
    notifier: notify::Notifier,
) {
    let pump = Pump {
        conn,
        push,
        resolver,
        presence,
        uaid,
        notifier,
    };
    while let Some(ev) = events.recv().await {
        if let Err(e) = pump.one(ev).await {
            warn!(error = %e, "D-Bus update failed");
        }
    }
}

/// What the event pump works with: one method per kind of `DomainEvent`.
///
/// Two rules of order:
/// - A UnifiedPush registration's app hears of a new endpoint and of its end through the
///   connector (`NewEndpoint`, `Unregistered`) *instead of* the Manager signals: the
///   handlers for those two events check the kind before anything else.
/// - Events are handled one at a time, and signals are sent before the next event is
///   taken, so an app sees them in the order `push` emitted them. What waits for an app
///   (an activating call, the connector) runs in a task of its own, so that one slow app
///   does not hold up the others.
struct Pump {
    conn: zbus::Connection,
    push: push::Handle,
    resolver: Arc<Resolver>,
    presence: Arc<Presence>,
    uaid: Arc<Mutex<String>>,
    notifier: notify::Notifier,
}

impl Pump {
    async fn one(&self, ev: DomainEvent) -> zbus::Result<()> {
        match ev {
            DomainEvent::Added(info) => {
                let (path, app) = (subscription_path(info.id), info.app_id.clone());
                ensure_object(&self.conn, &self.push, &self.resolver, info).await?;
                // Broadcast: the path and the app id only, no capabilities.
                let e = SignalEmitter::new(&self.conn, PATH)?;
                Admin::subscription_added(&e, path.as_ref(), app.as_str()).await
            }
            DomainEvent::Updated(info) => {
                ensure_object(&self.conn, &self.push, &self.resolver, info).await
            }
            DomainEvent::PendingChanged(ids) => self.pending_changed(ids).await,
            DomainEvent::Removed(info) => self.removed(info).await,
            DomainEvent::ShowNotification {
                subscription,
                declarative,
                urgency,
            } => {
                self.notifier.show(subscription, declarative, urgency);
                Ok(())
            }
            DomainEvent::Message {
                subscription,
                message,
                delivery,
                flags,
            } => self.message(subscription, message, delivery, flags).await,
            DomainEvent::SubscriptionChanged {
                subscription,
                reason,
            } => self.subscription_changed(subscription, reason).await,
            DomainEvent::QuotaChanged { subscription } => self.quota_changed(subscription).await,
            DomainEvent::Expired {
                subscription,
                reason,
            } => self.expired(subscription, reason).await,
            DomainEvent::Uaid(new) => self.uaid_changed(new).await,
        }
    }

    async fn removed(&self, info: SubscriptionInfo) -> zbus::Result<()> {
        let path = subscription_path(info.id);
        self.conn
            .object_server()
            .remove::<Checked<SubscriptionObject>, _>(&path)
            .await?;
        let app = info.app_id.clone();
        let e = SignalEmitter::new(&self.conn, PATH)?;
        Admin::subscription_removed(&e, path.as_ref(), app.as_str()).await?;
        if matches!(info.kind, Kind::UnifiedPush(_)) {
            // Confirms an unregistration, or tells the app it ended.
            self.spawn_unregistered(info);
        }
        Ok(())
    }

    /// The count of pending messages changed: an invalidation, read when wanted.
    async fn pending_changed(&self, ids: Vec<i64>) -> zbus::Result<()> {
        for id in ids {
            let emitter = SignalEmitter::new(&self.conn, subscription_path(id))?;
            zbus::fdo::Properties::properties_changed(
                &emitter,
                <SubscriptionObject as zbus::object_server::Interface>::name(),
                Default::default(),
                ["PendingMessages"].as_slice().into(),
            )
            .await?;
        }
        Ok(())
    }

    /// Deliver a message the way `push` chose: a signal to the app's connections, a call
    /// that may start the app, or the UnifiedPush connector. The latter two report back to
    /// `push` whether the app took it.
    async fn message(
        &self,
        subscription: SubscriptionInfo,
        message: StoredMessage,
        delivery: Delivery,
        flags: MessageFlags,
    ) -> zbus::Result<()> {
        match delivery {
            Delivery::Signal => self.signal_message(&subscription, &message, flags).await?,
            Delivery::Activate(bus_name) => {
                let conn = self.conn.clone();
                let push = self.push.clone();
                tokio::spawn(async move {
                    let ok = call_client(&conn, &bus_name, &subscription, &message).await;
                    push.delivered(subscription.id, message.id, ok).await;
                });
            }
            Delivery::UnifiedPush => {
                let conn = self.conn.clone();
                let push = self.push.clone();
                tokio::spawn(async move {
                    let ok = unifiedpush::message(&conn, &subscription, &message).await;
                    push.delivered(subscription.id, message.id, ok).await;
                });
            }
        }
        Ok(())
    }

    /// Manager.Message, with the declarative flags in its metadata.
    async fn signal_message(
        &self,
        subscription: &SubscriptionInfo,
        message: &StoredMessage,
        flags: MessageFlags,
    ) -> zbus::Result<()> {
        let path = subscription_path(subscription.id);
        let mut meta = message_meta(message);
        let mut flag = |k: &str, on: bool| {
            if on {
                meta.insert(k.into(), Value::from(true).try_to_owned().expect("no fds"));
            }
        };
        flag("declarative", flags.declarative);
        flag("notification_shown", flags.notification_shown);
        let (scope, payload) = (
            subscription.scope.as_str(),
            serde_bytes::Bytes::new(&message.payload),
        );
        for emitter in self.listeners(&subscription.app_id) {
            Manager::message(
                &emitter?,
                path.as_ref(),
                scope,
                &message.id,
                payload,
                meta.clone(),
            )
            .await?;
        }
        Ok(())
    }

    /// Manager.SubscriptionChanged; for a UnifiedPush registration, NewEndpoint instead.
    async fn subscription_changed(
        &self,
        subscription: SubscriptionInfo,
        reason: &'static str,
    ) -> zbus::Result<()> {
        if matches!(subscription.kind, Kind::UnifiedPush(_)) {
            debug!(
                subscription = subscription.id,
                reason, "UnifiedPush endpoint changed"
            );
            let conn = self.conn.clone();
            tokio::spawn(async move {
                let _ = unifiedpush::new_endpoint(&conn, &subscription).await;
            });
            return Ok(());
        }
        let path = subscription_path(subscription.id);
        for emitter in self.listeners(&subscription.app_id) {
            let scope = subscription.scope.as_str();
            Manager::subscription_changed(&emitter?, path.as_ref(), scope, reason).await?;
        }
        Ok(())
    }

    /// Manager.QuotaChanged, UnifiedPush registrations included (the connector has no
    /// such message).
    async fn quota_changed(&self, subscription: SubscriptionInfo) -> zbus::Result<()> {
        let path = subscription_path(subscription.id);
        for emitter in self.listeners(&subscription.app_id) {
            let (scope, quota) = (subscription.scope.as_str(), subscription.quota);
            Manager::quota_changed(&emitter?, path.as_ref(), scope, quota).await?;
        }
        Ok(())
    }

    /// Manager.Expired; for a UnifiedPush registration, Unregistered instead.
    async fn expired(
        &self,
        subscription: SubscriptionInfo,
        reason: &'static str,
    ) -> zbus::Result<()> {
        if matches!(subscription.kind, Kind::UnifiedPush(_)) {
            debug!(
                subscription = subscription.id,
                reason, "UnifiedPush registration ended"
            );
            self.spawn_unregistered(subscription);
            return Ok(());
        }
        let path = subscription_path(subscription.id);
        for emitter in self.listeners(&subscription.app_id) {
            let scope = subscription.scope.as_str();
            Manager::expired(&emitter?, path.as_ref(), scope, reason).await?;
        }
        Ok(())
    }

    /// Admin's `Uaid` property: the new value, then PropertiesChanged.
    async fn uaid_changed(&self, new: String) -> zbus::Result<()> {
        *self.uaid.lock().expect("uaid lock") = new;
        let iface = self
            .conn
            .object_server()
            .interface::<_, Checked<Admin>>(PATH)
            .await?;
        iface
            .get()
            .await
            .uaid_changed(iface.signal_emitter())
            .await?;
        Ok(())
    }

    /// A unicast emitter for each connection of `app`, made as the caller gets to it.
    fn listeners(&self, app: &AppId) -> impl Iterator<Item = zbus::Result<SignalEmitter<'static>>> {
        let conn = self.conn.clone();
        self.presence
            .connections(app)
            .into_iter()
            .map(move |unique| unicast(&conn, unique))
    }

    /// The connector's Unregistered, in a task of its own.
    fn spawn_unregistered(&self, info: SubscriptionInfo) {
        let conn = self.conn.clone();
        tokio::spawn(async move {
            let _ = unifiedpush::unregistered(&conn, &info).await;
        });
    }
}

fn unicast(conn: &zbus::Connection, unique: String) -> zbus::Result<SignalEmitter<'static>> {
    Ok(SignalEmitter::new(conn, PATH)?.set_destination(BusName::try_from(unique)?))
}

/// Serve the subscription's object, or bring its properties up to date (emitting
/// PropertiesChanged). Idempotent, so `Subscribe` can call it before replying — the app
/// must find the object the moment it has the path — and the event pump again later.
pub(crate) async fn ensure_object(
    conn: &zbus::Connection,
    push: &push::Handle,
    resolver: &Arc<Resolver>,
    info: SubscriptionInfo,
) -> zbus::Result<()> {
    let path = subscription_path(info.id);
    let iface = match conn
        .object_server()
        .interface::<_, Checked<SubscriptionObject>>(path)
        .await
    {
        Ok(iface) => iface,
        Err(_) => return add_subscription(conn, push, resolver, info).await,
    };
    let new = Shown::of(&info);
    let old = {
        let mut obj = iface.get_mut().await;
        std::mem::replace(&mut obj.shown, new.clone())
    };
    // One PropertiesChanged with the new values at hand. (The generated `*_changed`
    // helpers send a signal each and ask the owner loop for each value through the getter:
    // two round trips and two signals per subscription and burst.)
    let mut changed: std::collections::HashMap<&str, Value<'_>> = Default::default();
    let mut invalidated: Vec<&str> = Vec::new();
    if old.endpoint != new.endpoint {
        invalidated.push("Endpoint");
    }
    if old.p256dh != new.p256dh {
        invalidated.push("P256dh");
    }
    if old.auth != new.auth {
        invalidated.push("Auth");
    }
    if old.push_count != info.push_count {
        changed.insert("PushCount", Value::from(info.push_count));
        invalidated.push("PendingMessages");
    }
    if old.last_push != info.last_push {
        changed.insert("LastPush", Value::from(info.last_push));
    }
    if old.quota != info.quota {
        changed.insert("Quota", Value::from(info.quota));
        changed.insert("QuotaApplies", Value::from(info.quota_applies()));
    }
    if old.expired != info.expired {
        changed.insert("Expired", Value::from(info.expired));
    }
    if old.expired_reason != info.expired_reason {
        changed.insert("ExpiredReason", Value::from(info.expired_reason.clone()));
    }
    if !changed.is_empty() || !invalidated.is_empty() {
        zbus::fdo::Properties::properties_changed(
            iface.signal_emitter(),
            <SubscriptionObject as zbus::object_server::Interface>::name(),
            changed,
            invalidated.into(),
        )
        .await?;
    }
    Ok(())
}

/// Deliver through the app's `org.webpushd.Push1.Client.Message` (D-Bus activation starts
/// it). `true` only on a successful reply.
async fn call_client(
    conn: &zbus::Connection,
    bus_name: &str,
    sub: &SubscriptionInfo,
    m: &StoredMessage,
) -> bool {
    let body = (
        sub.scope.as_str(),
        m.id.as_str(),
        serde_bytes::Bytes::new(&m.payload),
        message_meta(m),
    );
    let call = conn.call_method(
        Some(bus_name),
        CLIENT_PATH,
        Some(CLIENT_INTERFACE),
        "Message",
        &body,
    );
    match tokio::time::timeout(CLIENT_CALL_TIMEOUT, call).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            debug!(subscription = sub.id, error = %e, "Client.Message failed");
            false
        }
        Err(_) => {
            debug!(subscription = sub.id, "Client.Message timed out");
            false
        }
    }
}

/// Follow the bus: which connections exist and which app each belongs to. Tells `push`
/// when an app's first connection appears (quota restore, missed messages) or its last
/// one leaves. `known` is cancelled once the connections already there are told.
pub async fn track_presence(
    conn: zbus::Connection,
    resolver: Arc<Resolver>,
    presence: Arc<Presence>,
    push: push::Handle,
    known: CancellationToken,
    cancel: CancellationToken,
) -> zbus::Result<()> {
    let dbus = DBusProxy::new(&conn).await?;
    // zbus stops reading the socket while a signal stream's queue is full; this loop makes
    // D-Bus calls (caller identities) whose replies must be read meanwhile. So a task of
    // its own drains the stream into an unbounded channel: a burst of apps starting can
    // never wedge the connection.
    let mut stream = dbus.receive_name_owner_changed().await?;
    let (tx, mut changes) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(sig) = stream.next().await {
            if tx.send(sig).is_err() {
                break;
            }
        }
    });
    resolver.load_names().await?;
    let me = conn
        .unique_name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    // A notification server counts when it runs or can be started by activation.
    let activatable = dbus
        .list_activatable_names()
        .await
        .map(|names| names.iter().any(|n| n.as_str() == NOTIFICATIONS))
        .unwrap_or(false);
    let running = dbus
        .name_has_owner(BusName::try_from(NOTIFICATIONS)?)
        .await
        .unwrap_or(false);
    push.notification_server(running || activatable).await;
    for name in dbus.list_names().await? {
        if name.starts_with(':') && name.as_str() != me {
            appeared(&resolver, &presence, &push, name.as_str()).await;
        }
    }
    known.cancel();
    loop {
        let change = tokio::select! {
            _ = cancel.cancelled() => break,
            c = changes.recv() => match c { Some(c) => c, None => break },
        };
        let Ok(args) = change.args() else { continue };
        let name = args.name().to_string();
        let old = args.old_owner().as_ref().map(|o| o.to_string());
        let new = args.new_owner().as_ref().map(|o| o.to_string());
        if name.starts_with(':') {
            if name == me {
                continue;
            }
            match new {
                Some(_) => appeared(&resolver, &presence, &push, &name).await,
                None => {
                    resolver.connection_gone(&name);
                    if let Some(app) = presence.remove(&name) {
                        push.presence(app, name, false).await;
                    }
                }
            }
            continue;
        }
        if name == NOTIFICATIONS {
            push.notification_server(new.is_some() || activatable).await;
        }
        if !identity::is_reverse_dns(&name) {
            continue;
        }
        if let Some(old) = old {
            resolver.name_released(&name, &old);
        }
        if let Some(new) = new {
            resolver.name_owned(&name, &new);
            if new != me {
                appeared(&resolver, &presence, &push, &new).await;
            }
        }
    }
    Ok(())
}

async fn appeared(resolver: &Resolver, presence: &Presence, push: &push::Handle, unique: &str) {
    let Ok(id) = resolver.resolve(unique).await else {
        return;
    };
    if let Some(old) = presence.set(unique, id.app_id.clone()) {
        if let Some(old) = old {
            push.presence(old, unique.to_string(), false).await;
        }
        push.presence(id.app_id, unique.to_string(), true).await;
    }
}

/// Announce `State` changes of the connection as PropertiesChanged.
pub async fn follow_state(conn: zbus::Connection, mut status: watch::Receiver<ConnStatus>) {
    // The connection starts offline behind the gate; starting from what the watch holds
    // when this task first runs could miss that first change.
    let mut last = crate::connection::ConnState::Offline;
    while status.changed().await.is_ok() {
        let state = status.borrow().state;
        if state == last {
            continue;
        }
        last = state;
        if let Ok(iface) = conn
            .object_server()
            .interface::<_, Checked<Admin>>(PATH)
            .await
        {
            let _ = iface
                .get()
                .await
                .state_changed(iface.signal_emitter())
                .await;
        }
    }
}
