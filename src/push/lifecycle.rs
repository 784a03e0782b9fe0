//! A subscription's life: subscribe (register a channel), renew it under a new channel
//! (server reset, expired and used again), expire it, remove it, restore its quota; and
//! the server's hello and broadcasts that start some of it.

use std::collections::{BTreeMap, HashMap, HashSet};

use tracing::{error, info, warn};

use super::{
    Caller, DomainEvent, Kind, Push, PushError, Reply, Sandbox, SubscribeOptions, SubscriptionInfo,
    SubscriptionRecord,
};
use crate::clock::now_ms;
use crate::connection::{RequestError, Unregister};
use crate::crypto::{self, SubscriptionKeys};
use crate::ids::{AppId, ChannelId, Scope, Uaid};
use crate::store::Store;

/// Why a subscription got a new channel (the `reason` of `SubscriptionChanged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalReason {
    /// The server forgot us (a new UAID) or an earlier re-registration failed.
    ServerReset,
    /// An expired subscription came back: its app was used, or subscribed again.
    ExpiredRenewed,
    /// The push server changed (`server_url`): the subscription is on the new one now.
    ServerChanged,
}

impl RenewalReason {
    /// As said on D-Bus.
    pub fn as_str(self) -> &'static str {
        match self {
            RenewalReason::ServerReset => "server-reset",
            RenewalReason::ExpiredRenewed => "expired-renewed",
            RenewalReason::ServerChanged => "server-changed",
        }
    }
}

/// Why a subscription expired (the `reason` of `Expired`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryReason {
    /// Its quota is used up.
    Quota,
    /// Its Flatpak app is no longer installed.
    AppRemoved,
    /// The server refuses its channel.
    Server,
}

impl ExpiryReason {
    /// As said on D-Bus.
    pub fn as_str(self) -> &'static str {
        match self {
            ExpiryReason::Quota => "quota",
            ExpiryReason::AppRemoved => "app-removed",
            ExpiryReason::Server => "server",
        }
    }
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
    New(NewSubscription),
    /// Re-register an existing subscription with a new channel.
    Renew {
        id: i64,
        reason: RenewalReason,
    },
}

#[derive(Debug)]
struct NewSubscription {
    app: AppId,
    sandbox: Option<Sandbox>,
    scope: Scope,
    options: SubscribeOptions,
    system: bool,
}

/// Registrations under way.
#[derive(Debug, Default)]
pub(super) struct Registrations {
    /// Subscribe calls waiting for a registration of the same (app, scope).
    waiting: HashMap<(AppId, Scope), Vec<Reply<SubscriptionInfo>>>,
    /// Subscriptions whose re-registration is under way.
    renewing: HashSet<i64>,
}

impl Registrations {
    fn answer(&mut self, key: &(AppId, Scope), res: Result<SubscriptionInfo, PushError>) {
        for r in self.waiting.remove(key).unwrap_or_default() {
            let _ = r.send(res.clone());
        }
    }

    /// The loop stops: nobody waits for an answer that will not come.
    pub fn shut_down(&mut self) {
        for (_, replies) in self.waiting.drain() {
            for r in replies {
                let _ = r.send(Err(PushError::Unavailable(
                    "webpushd is shutting down".into(),
                )));
            }
        }
    }
}

pub(super) fn request_error(e: RequestError) -> PushError {
    match e {
        RequestError::Timeout | RequestError::Unavailable => {
            PushError::Unavailable(format!("{e}; webpushd will keep trying, ask again later"))
        }
        RequestError::Rejected(_) => PushError::Failed(e.to_string()),
        RequestError::Shutdown => PushError::Unavailable(e.to_string()),
    }
}

fn store_failed(e: impl std::fmt::Display) -> PushError {
    PushError::Failed(format!("cannot store the subscription: {e}"))
}

impl Push {
    pub(super) fn subscribe(
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
        if let Some(id) = self.index.by_scope(&caller.app_id, &scope) {
            return self.subscribe_again(id, options, reply);
        }
        let key = (caller.app_id.clone(), scope.clone());
        if let Some(w) = self.registrations.waiting.get_mut(&key) {
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
        let exempt = |a: &String| a == caller.app_id.as_str();
        let system = options.system || self.policy.exempt_apps.iter().any(exempt);
        let vapid = options
            .application_server_key
            .as_deref()
            .map(crypto::b64_encode);
        self.registrations.waiting.insert(key, vec![reply]);
        let new = NewSubscription {
            app: caller.app_id,
            sandbox: caller.sandbox,
            scope,
            options,
            system,
        };
        let channel = ChannelId::generate();
        let kind = JobKind::New(new);
        self.spawn_register(
            RegisterJob {
                channel,
                keys,
                kind,
            },
            vapid,
        );
    }

    /// `Subscribe` for a scope the app has a subscription for.
    fn subscribe_again(
        &mut self,
        id: i64,
        options: SubscribeOptions,
        reply: Reply<SubscriptionInfo>,
    ) {
        let rec = self.index.get(id).expect("indexed");
        if rec.kind != options.kind {
            let kind = if rec.kind == Kind::WebPush {
                "Web Push"
            } else {
                "UnifiedPush"
            };
            let _ = reply.send(Err(PushError::InvalidArgument(format!(
                "{:?} is already used by a {kind} registration of this app",
                rec.scope.as_str(),
            ))));
            return;
        }
        if rec.app_server_key != options.application_server_key {
            let _ = reply.send(Err(PushError::KeyMismatch));
            return;
        }
        if !rec.expired && !rec.endpoint.is_empty() {
            if options.bus_name.is_some() && options.bus_name != rec.bus_name {
                let rec = self.index.get_mut(id).expect("indexed");
                rec.bus_name = options.bus_name;
                if let Err(e) = self.store.update_subscription(rec) {
                    warn!(error = %e, "cannot store the bus name");
                }
                self.refresh(id);
            }
            let info = SubscriptionInfo::from_record(self.index.get(id).expect("indexed"));
            let _ = reply.send(Ok(info));
            return;
        }
        // Expired (or lost by a server reset): replace it with a fresh one.
        let reason = if rec.expired {
            RenewalReason::ExpiredRenewed
        } else {
            RenewalReason::ServerReset
        };
        let key = (rec.app_id.clone(), rec.scope.clone());
        self.registrations
            .waiting
            .entry(key)
            .or_default()
            .push(reply);
        self.start_renew(id, reason, true);
    }

    /// Register a subscription again under a new channel id.
    pub(super) fn start_renew(&mut self, id: i64, reason: RenewalReason, new_keys: bool) {
        if !self.registrations.renewing.insert(id) {
            return;
        }
        let Some(rec) = self.index.get(id) else {
            return;
        };
        let keys = if new_keys {
            match SubscriptionKeys::generate() {
                Ok(k) => k,
                Err(e) => {
                    error!(error = %e, "cannot generate keys");
                    self.registrations.renewing.remove(&id);
                    return;
                }
            }
        } else {
            rec.keys.clone()
        };
        let key = rec.app_server_key.as_deref().map(crypto::b64_encode);
        let channel = ChannelId::generate();
        let kind = JobKind::Renew { id, reason };
        self.spawn_register(
            RegisterJob {
                channel,
                keys,
                kind,
            },
            key,
        );
    }

    fn spawn_register(&self, job: RegisterJob, key: Option<String>) {
        let conn = self.io.conn.clone();
        let tx = self.io.self_tx.clone();
        tokio::spawn(async move {
            let result = conn.register(job.channel.clone(), key).await;
            let _ = tx.send(super::Input::Registered { job, result }).await;
        });
    }

    pub(super) fn registered(&mut self, job: RegisterJob, result: Result<String, RequestError>) {
        let RegisterJob {
            channel,
            keys,
            kind,
        } = job;
        match kind {
            JobKind::New(new) => {
                let key = (new.app.clone(), new.scope.clone());
                let res = match result {
                    Ok(endpoint) => self.add(new, channel, keys, endpoint),
                    Err(e) => Err(request_error(e)),
                };
                self.registrations.answer(&key, res);
            }
            JobKind::Renew { id, reason } => {
                self.registrations.renewing.remove(&id);
                let Some(rec) = self.index.get(id) else {
                    // Removed meanwhile: give the new channel back.
                    if result.is_ok() {
                        self.io.conn.unregister(channel, Unregister::ByApp);
                    }
                    return;
                };
                let key = (rec.app_id.clone(), rec.scope.clone());
                let res = match result {
                    Ok(endpoint) => self.renewed(id, reason, channel, keys, endpoint),
                    Err(e) => self.renewal_failed(id, reason, e),
                };
                self.registrations.answer(&key, res);
            }
        }
    }

    /// A new subscription's channel is registered: store it.
    fn add(
        &mut self,
        new: NewSubscription,
        channel: ChannelId,
        keys: SubscriptionKeys,
        endpoint: String,
    ) -> Result<SubscriptionInfo, PushError> {
        let mut rec = SubscriptionRecord {
            id: 0,
            channel_id: channel,
            app_id: new.app,
            scope: new.scope,
            endpoint,
            keys,
            app_server_key: new.options.application_server_key,
            push_count: 0,
            last_push: 0,
            quota: if new.system {
                -1
            } else {
                self.policy.max_quota
            },
            expired: false,
            expired_reason: String::new(),
            system: new.system,
            bus_name: new.options.bus_name,
            created: now_ms(),
            kind: new.options.kind,
            description: new.options.description,
            sandbox: new.sandbox,
        };
        match self.store.insert_subscription(&rec) {
            Ok(id) => {
                rec.id = id;
                info!(subscription = id, app = %rec.app_id, channel = %rec.channel_id, "subscribed");
                let info = SubscriptionInfo::from_record(&rec);
                self.index.insert(rec);
                self.update_hello();
                self.emit(DomainEvent::Added(info.clone()));
                Ok(info)
            }
            Err(e) => {
                self.io.conn.unregister(rec.channel_id, Unregister::ByApp);
                Err(store_failed(e))
            }
        }
    }

    /// A subscription's new channel is registered: store it in place of the old one.
    fn renewed(
        &mut self,
        id: i64,
        reason: RenewalReason,
        channel: ChannelId,
        keys: SubscriptionKeys,
        endpoint: String,
    ) -> Result<SubscriptionInfo, PushError> {
        let rec = self.index.get(id).expect("indexed");
        let old_quota = rec.quota;
        let mut new = rec.clone();
        new.channel_id = channel;
        new.endpoint = endpoint;
        new.keys = keys;
        new.expired = false;
        if new.quota >= 0 {
            new.quota = self.policy.max_quota;
        }
        if let Err(e) = self.store.update_subscription(&new) {
            self.io.conn.unregister(new.channel_id, Unregister::ByApp);
            return Err(store_failed(e));
        }
        let info = SubscriptionInfo::from_record(&new);
        let quota_changed = new.quota != old_quota;
        self.index.replace(new);
        self.update_hello();
        info!(
            subscription = id,
            reason = reason.as_str(),
            "subscription renewed"
        );
        self.emit(DomainEvent::Updated(info.clone()));
        self.emit(DomainEvent::SubscriptionChanged {
            subscription: info.clone(),
            reason: reason.as_str(),
        });
        // An expired subscription comes back with its whole budget.
        if quota_changed {
            self.emit(DomainEvent::QuotaChanged {
                subscription: info.clone(),
            });
        }
        Ok(info)
    }

    fn renewal_failed(
        &mut self,
        id: i64,
        reason: RenewalReason,
        e: RequestError,
    ) -> Result<SubscriptionInfo, PushError> {
        warn!(subscription = id, error = %e, "re-registration failed");
        if matches!(
            reason,
            RenewalReason::ServerReset | RenewalReason::ServerChanged
        ) {
            if let RequestError::Rejected(status) = e {
                // The server refuses this channel (4xx): it is gone for good. A 5xx is the
                // server's own trouble (autopush-rs answers 500 when its storage fails):
                // the subscription stays, and the next hello tries again.
                if status < 500 {
                    self.expire(id, ExpiryReason::Server, Unregister::Revoked);
                }
            }
        }
        Err(request_error(e))
    }

    /// Expire a subscription now: unregister it, keep it with `Expired = true`, tell the app.
    pub(super) fn expire(&mut self, id: i64, reason: ExpiryReason, why: Unregister) {
        let Some(rec) = self.index.get_mut(id) else {
            return;
        };
        rec.expired = true;
        rec.expired_reason = reason.as_str().to_string();
        if let Err(e) = self.store.update_subscription(rec) {
            error!(error = %e, "cannot store the expiry");
        }
        self.io.conn.unregister(rec.channel_id.clone(), why);
        let info = SubscriptionInfo::from_record(rec);
        self.emit(DomainEvent::Updated(info.clone()));
        self.emit(DomainEvent::Expired {
            subscription: info,
            reason: reason.as_str(),
        });
        self.update_hello();
    }

    pub(super) fn remove(&mut self, id: i64, why: Unregister) -> Result<bool, PushError> {
        self.store
            .delete_subscription(id)
            .map_err(|e| PushError::Failed(format!("cannot delete the subscription: {e}")))?;
        let Some(rec) = self.index.remove(id) else {
            return Ok(false);
        };
        if !rec.expired {
            self.io.conn.unregister(rec.channel_id.clone(), why);
        }
        self.delivery.forget_retries(id);
        info!(subscription = id, app = %rec.app_id, "unsubscribed");
        self.emit(DomainEvent::Removed(SubscriptionInfo::from_record(&rec)));
        self.update_hello();
        Ok(true)
    }

    /// The app was used: full quota again, and an expired subscription comes back.
    pub(super) fn restore_quota(&mut self, id: i64) {
        let Some(rec) = self.index.get(id) else {
            return;
        };
        if rec.expired {
            self.start_renew(id, RenewalReason::ExpiredRenewed, true);
            return;
        }
        if rec.quota < 0 || rec.quota == self.policy.max_quota {
            return;
        }
        let mut new = rec.clone();
        new.quota = self.policy.max_quota;
        if let Err(e) = self.store.update_subscription(&new) {
            error!(error = %e, "cannot store the quota");
            return;
        }
        let info = SubscriptionInfo::from_record(&new);
        *self.index.get_mut(id).expect("indexed") = new;
        self.emit(DomainEvent::Updated(info.clone()));
        self.emit(DomainEvent::QuotaChanged { subscription: info });
    }

    pub(super) fn save_broadcasts(&mut self, b: BTreeMap<String, String>) {
        if b.is_empty() {
            return;
        }
        let items: Vec<_> = b.clone().into_iter().collect();
        if let Err(e) = self.store.set_broadcasts(&items) {
            error!(error = %e, "cannot store broadcast versions");
            return;
        }
        self.io.hello.send_modify(|h| h.broadcasts.extend(b));
    }

    pub(super) fn hello_event(
        &mut self,
        uaid: Uaid,
        sent: Option<Uaid>,
        broadcasts: BTreeMap<String, String>,
    ) {
        if self.server_changed && sent.is_some() {
            // After a switch no UAID is offered: this hello is the old server's, read
            // before the connection moved.
            return;
        }
        self.save_broadcasts(broadcasts);
        self.upkeep.connected();
        let changed = std::mem::take(&mut self.server_changed);
        let reset = changed || sent.as_ref().is_some_and(|s| *s != uaid);
        if self.uaid.as_ref() != Some(&uaid) || changed {
            if let Err(e) = self.store.set_uaid_of(&uaid, &self.policy.server_url) {
                error!(error = %e, "cannot store the UAID");
            }
            self.uaid = Some(uaid.clone());
            self.emit(DomainEvent::Uaid(uaid.as_str().to_string()));
        }
        let reason = if changed {
            warn!(
                uaid = uaid.short(),
                "a new push server: registering every channel on it"
            );
            RenewalReason::ServerChanged
        } else {
            if reset {
                warn!(
                    uaid = uaid.short(),
                    "the server assigned a new UAID: registering every channel again"
                );
            }
            RenewalReason::ServerReset
        };
        // Re-register after a reset, and retry any earlier re-registration that failed.
        let ids = self
            .index
            .ids_where(|s| !s.expired && (reset || s.endpoint.is_empty()));
        for id in ids {
            if let Some(s) = self.index.get_mut(id) {
                s.endpoint.clear();
            }
            self.start_renew(id, reason, false);
        }
        self.update_hello();
    }
}

impl Push {
    /// Move to another push server, live: remember the choice, give the old server its
    /// channels back (best effort: it gets them if the connection is up), offer it no UAID,
    /// and register every subscription on the new one once it answers (`hello_event`).
    pub(super) fn set_server(
        &mut self,
        server: String,
        ws_url: String,
        config_server: &str,
    ) -> Result<bool, PushError> {
        let saved = if server == config_server {
            self.store.clear_server_override()
        } else {
            self.store.set_server_override(&server, config_server)
        };
        saved.map_err(|e| PushError::Failed(format!("cannot store the server: {e}")))?;
        if server == self.policy.server_url {
            return Ok(false);
        }
        info!("moving every subscription to another push server");
        for id in self
            .index
            .ids_where(|s| !s.expired && !s.endpoint.is_empty())
        {
            if let Some(s) = self.index.get(id) {
                self.io
                    .conn
                    .unregister(s.channel_id.clone(), Unregister::ByApp);
            }
        }
        self.policy.server_url = server;
        self.uaid = None;
        self.server_changed = true;
        self.update_hello();
        let conn = self.io.conn.clone();
        tokio::spawn(async move { conn.set_url(ws_url).await });
        Ok(true)
    }
}

/// The stored UAID, unless it came from another push server than `server` (then `None`
/// and `true`: it must never be offered to this one). A UAID stored before its server was
/// recorded is taken to be the configured server's.
pub(super) fn uaid_for_server(
    store: &Store,
    server: &str,
) -> Result<(Option<Uaid>, bool), crate::store::StoreError> {
    let uaid = store.uaid()?;
    match (&uaid, store.uaid_server()?) {
        (Some(u), Some(from)) if from != server => {
            info!(
                uaid = u.short(),
                "the push server changed: every subscription moves to the new one"
            );
            Ok((None, true))
        }
        _ => Ok((uaid, false)),
    }
}
