//! `org.webpushd.Push1.Manager` and `org.webpushd.Push1.Admin` at `/org/webpushd/Push1`.
//!
//! Each method: find the caller, parse arguments into domain types, call `push::Handle`,
//! map the failure. No state of its own beyond handles.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_bytes::ByteBuf;
use tokio::sync::watch;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value};
use zbus::{fdo, interface};

use super::error::Error;
use super::identity::{Identity, Resolver};
use super::{message_meta, subscription_id_from_path, subscription_path};
use crate::config::ServerUrl;
use crate::connection::{self, ConnStatus};
use crate::crypto;
use crate::ids::Scope;
use crate::push::{self, MessageId, Request, SubscribeOptions};

pub const PATH: &str = "/org/webpushd/Push1";

pub(super) async fn caller(resolver: &Resolver, hdr: &Header<'_>) -> Result<Identity, Error> {
    let sender = hdr
        .sender()
        .ok_or_else(|| Error::AccessDenied("the call has no sender".into()))?;
    resolver.resolve(sender.as_str()).await
}

pub struct Manager {
    pub(super) push: push::Handle,
    pub(super) resolver: Arc<Resolver>,
}

/// Message ids one `AckMessages` call may carry.
const MAX_ACKED_AT_ONCE: usize = 1024;

impl Manager {
    /// Acknowledge `message_ids` of the caller's subscription `scope`; answered once the
    /// deletes are committed, with the ids that were not pending. Each id once.
    async fn ack(
        &self,
        hdr: &Header<'_>,
        scope: &str,
        mut message_ids: Vec<String>,
    ) -> Result<Vec<String>, Error> {
        let who = caller(&self.resolver, hdr).await?;
        let scope = Scope::parse(scope)?;
        if let Some(bad) = message_ids.iter().find(|m| m.is_empty() || m.len() > 128) {
            return Err(Error::InvalidArgument(format!(
                "message ids are 1-128 bytes, not {}",
                bad.len()
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(message_ids.len());
        message_ids.retain(|m| seen.insert(m.clone()));
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        let message_ids = message_ids.into_iter().map(MessageId::from).collect();
        let unknown = self
            .push
            .request(|reply| Request::Ack {
                app: who.app_id,
                scope,
                message_ids,
                reply,
            })
            .await?;
        Ok(unknown.into_iter().map(MessageId::into_string).collect())
    }
}

fn parse_options(options: &HashMap<String, OwnedValue>) -> Result<SubscribeOptions, Error> {
    let mut out = SubscribeOptions::default();
    for (k, v) in options {
        match k.as_str() {
            "application_server_key" => {
                let raw = match &**v {
                    Value::Array(a) => {
                        let bytes: Result<Vec<u8>, _> =
                            a.iter().map(|x| u8::try_from(x.clone())).collect();
                        bytes.map_err(|_| {
                            Error::InvalidArgument(
                                "application_server_key must be a byte array (ay) or a base64url string (s)".into(),
                            )
                        })?
                    }
                    Value::Str(s) => crypto::b64(s.as_str()).map_err(|_| {
                        Error::InvalidArgument("application_server_key is not valid base64url".into())
                    })?,
                    _ => {
                        return Err(Error::InvalidArgument(
                            "application_server_key must be a byte array (ay) or a base64url string (s)".into(),
                        ))
                    }
                };
                crypto::validate_public_key(&raw)
                    .map_err(|e| Error::InvalidArgument(format!("application_server_key: {e}")))?;
                out.application_server_key = Some(raw);
            }
            "system" => match &**v {
                Value::Bool(b) => out.system = *b,
                _ => {
                    return Err(Error::InvalidArgument(
                        "system must be a boolean (b)".into(),
                    ))
                }
            },
            "bus_name" => match &**v {
                Value::Str(s) => {
                    let name = s.as_str();
                    zbus::names::WellKnownName::try_from(name).map_err(|_| {
                        Error::InvalidArgument(format!(
                            "bus_name {name:?} is not a well-known bus name"
                        ))
                    })?;
                    out.bus_name = Some(name.to_string());
                }
                _ => {
                    return Err(Error::InvalidArgument(
                        "bus_name must be a string (s)".into(),
                    ))
                }
            },
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown option {other:?}; known: application_server_key, system, bus_name"
                )))
            }
        }
    }
    Ok(out)
}

#[interface(name = "org.webpushd.Push1.Manager")]
impl Manager {
    /// Create, or return the existing, subscription for (caller's app, scope).
    async fn subscribe(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        scope: &str,
        options: HashMap<String, OwnedValue>,
    ) -> Result<OwnedObjectPath, Error> {
        let who = caller(&self.resolver, &hdr).await?;
        let scope = Scope::parse(scope)?;
        let options = parse_options(&options)?;
        if let Some(bus) = &options.bus_name {
            // The name must be the app's own, or one the caller owns right now.
            if bus != who.app_id.as_str() {
                let dbus = fdo::DBusProxy::new(conn).await?;
                let name = zbus::names::BusName::try_from(bus.as_str())
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
                let owner = dbus.get_name_owner(name).await.ok();
                let sender = hdr.sender().map(|s| s.as_str().to_string());
                if owner.map(|o| o.to_string()) != sender {
                    return Err(Error::AccessDenied(format!(
                        "bus_name {bus:?} is neither this app's id nor owned by the caller"
                    )));
                }
            }
        }
        let caller = who.caller();
        let info = self
            .push
            .request(|reply| Request::Subscribe {
                caller,
                scope,
                options,
                reply,
            })
            .await?;
        let id = info.id;
        super::ensure_object(conn, &self.push, &self.resolver, info).await?;
        Ok(subscription_path(id))
    }

    async fn get_subscription(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        scope: &str,
    ) -> Result<OwnedObjectPath, Error> {
        let who = caller(&self.resolver, &hdr).await?;
        let scope = Scope::parse(scope)?;
        let info = self
            .push
            .request(|reply| Request::Get {
                app: who.app_id,
                scope,
                reply,
            })
            .await?;
        Ok(subscription_path(info.id))
    }

    async fn unsubscribe(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        scope: &str,
    ) -> Result<bool, Error> {
        let who = caller(&self.resolver, &hdr).await?;
        let scope = Scope::parse(scope)?;
        Ok(self
            .push
            .request(|reply| Request::Unsubscribe {
                app: who.app_id,
                scope,
                reply,
            })
            .await?)
    }

    async fn list_subscriptions(
        &self,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<Vec<OwnedObjectPath>, Error> {
        let who = caller(&self.resolver, &hdr).await?;
        let list = self
            .push
            .request(|reply| Request::List {
                app: Some(who.app_id),
                reply,
            })
            .await?;
        Ok(list.iter().map(|i| subscription_path(i.id)).collect())
    }

    async fn fetch_messages(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        scope: &str,
    ) -> Result<Vec<(String, ByteBuf, HashMap<String, OwnedValue>)>, Error> {
        let who = caller(&self.resolver, &hdr).await?;
        let scope = Scope::parse(scope)?;
        let msgs = self
            .push
            .request(|reply| Request::Fetch {
                app: who.app_id,
                scope,
                reply,
            })
            .await?;
        Ok(msgs
            .into_iter()
            .map(|m| {
                let meta = message_meta(&m);
                (m.id.into_string(), ByteBuf::from(m.payload), meta)
            })
            .collect())
    }

    async fn ack_message(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        scope: &str,
        message_id: &str,
    ) -> Result<(), Error> {
        let unknown = self.ack(&hdr, scope, vec![message_id.to_string()]).await?;
        match unknown.first() {
            None => Ok(()),
            Some(id) => Err(Error::NotFound(format!(
                "no pending message \"{id}\" for scope \"{scope}\""
            ))),
        }
    }

    async fn ack_messages(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        scope: &str,
        message_ids: Vec<String>,
    ) -> Result<Vec<String>, Error> {
        if message_ids.len() > MAX_ACKED_AT_ONCE {
            return Err(Error::InvalidArgument(format!(
                "at most {MAX_ACKED_AT_ONCE} message ids at once"
            )));
        }
        self.ack(&hdr, scope, message_ids).await
    }

    #[zbus(signal)]
    pub async fn message(
        emitter: &SignalEmitter<'_>,
        subscription: ObjectPath<'_>,
        scope: &str,
        message_id: &str,
        payload: &serde_bytes::Bytes,
        meta: HashMap<String, OwnedValue>,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn subscription_changed(
        emitter: &SignalEmitter<'_>,
        subscription: ObjectPath<'_>,
        scope: &str,
        reason: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn quota_changed(
        emitter: &SignalEmitter<'_>,
        subscription: ObjectPath<'_>,
        scope: &str,
        remaining: i32,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn expired(
        emitter: &SignalEmitter<'_>,
        subscription: ObjectPath<'_>,
        scope: &str,
        reason: &str,
    ) -> zbus::Result<()>;
}

/// What `SetServerUrl` needs to know of the configuration.
#[derive(Debug, Clone, Default)]
pub struct ServerSwitch {
    /// `server_url` as the config file (or flag, or environment) says.
    pub config_url: String,
    pub allow_insecure: bool,
    /// The local push service's WebSocket URL, when it runs.
    pub local_ws: Option<String>,
}

pub struct Admin {
    pub(super) push: push::Handle,
    pub(super) conn: connection::Handle,
    pub(super) resolver: Arc<Resolver>,
    pub(super) status: watch::Receiver<ConnStatus>,
    pub(super) server_url: Mutex<String>,
    pub(super) switch: ServerSwitch,
    pub(super) uaid: Arc<Mutex<String>>,
}

impl Admin {
    async fn admin(&self, hdr: &Header<'_>) -> Result<Identity, Error> {
        let who = caller(&self.resolver, hdr).await?;
        if who.sandboxed() {
            return Err(Error::AccessDenied(format!(
                "{} is sandboxed; the Admin interface is for pushctl and the user",
                who.app_id
            )));
        }
        Ok(who)
    }
}

fn epoch_ms(t: Option<std::time::SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[interface(name = "org.webpushd.Push1.Admin")]
impl Admin {
    #[zbus(property)]
    fn state(&self) -> String {
        self.status.borrow().state.as_str().to_string()
    }

    #[zbus(property)]
    fn server_url(&self) -> String {
        self.server_url.lock().expect("server lock").clone()
    }

    /// The full UAID: only for unsandboxed callers (a hello with it knocks us off).
    #[zbus(property)]
    async fn uaid(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        if let Some(hdr) = hdr {
            self.admin(&hdr)
                .await
                .map_err(|e| fdo::Error::AccessDenied(e.to_string()))?;
        }
        Ok(self.uaid.lock().expect("uaid lock").clone())
    }

    #[zbus(property)]
    fn version(&self) -> String {
        crate::VERSION.to_string()
    }

    /// The apps forbidden to show push messages as desktop notifications.
    #[zbus(property)]
    async fn notifications_denied(&self) -> fdo::Result<Vec<String>> {
        self.push
            .request(|reply| Request::NotificationsDenied { reply })
            .await
            .map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    /// A subscription was made, by any app (the path and the app only).
    #[zbus(signal)]
    pub async fn subscription_added(
        emitter: &SignalEmitter<'_>,
        subscription: ObjectPath<'_>,
        app_id: &str,
    ) -> zbus::Result<()>;

    /// A subscription was removed, by its app, the user or the daemon.
    #[zbus(signal)]
    pub async fn subscription_removed(
        emitter: &SignalEmitter<'_>,
        subscription: ObjectPath<'_>,
        app_id: &str,
    ) -> zbus::Result<()>;

    async fn status(
        &self,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<HashMap<String, OwnedValue>, Error> {
        self.admin(&hdr).await?;
        let counts = self.push.request(|reply| Request::Counts { reply }).await?;
        let s = self.status.borrow().clone();
        let mut m: HashMap<String, OwnedValue> = HashMap::new();
        let mut put = |k: &str, v: Value<'_>| {
            m.insert(
                k.to_string(),
                v.try_to_owned().expect("plain values have no fds"),
            );
        };
        put("state", Value::from(s.state.as_str()));
        put("server", Value::from(self.server_url()));
        put(
            "uaid",
            Value::from(self.uaid.lock().expect("uaid lock").clone()),
        );
        put("version", Value::from(crate::VERSION));
        put("subscriptions", Value::from(counts.subscriptions));
        put("expired", Value::from(counts.expired));
        put("pending_messages", Value::from(counts.pending_messages));
        put("messages_received", Value::from(counts.messages_received));
        put("apps_connected", Value::from(counts.apps_connected));
        put(
            "notification_server",
            Value::from(counts.notification_server),
        );
        put("connected_since", Value::from(epoch_ms(s.connected_since)));
        put("last_error", Value::from(s.last_error.unwrap_or_default()));
        put("next_retry", Value::from(epoch_ms(s.next_retry)));
        put("failures", Value::from(s.failures));
        Ok(m)
    }

    async fn list_all(
        &self,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<Vec<OwnedObjectPath>, Error> {
        self.admin(&hdr).await?;
        let list = self
            .push
            .request(|reply| Request::List { app: None, reply })
            .await?;
        Ok(list.iter().map(|i| subscription_path(i.id)).collect())
    }

    async fn reset_quota(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        subscription: ObjectPath<'_>,
    ) -> Result<(), Error> {
        self.admin(&hdr).await?;
        let id = subscription_id_from_path(&subscription)?;
        Ok(self
            .push
            .request(|reply| Request::ResetQuota { id, reply })
            .await?)
    }

    async fn remove(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        subscription: ObjectPath<'_>,
    ) -> Result<(), Error> {
        self.admin(&hdr).await?;
        let id = subscription_id_from_path(&subscription)?;
        self.push
            .request(|reply| Request::Remove {
                app: None,
                id,
                reply,
            })
            .await?;
        Ok(())
    }

    /// Allow or forbid `app_id` to show declarative push messages as notifications.
    async fn set_notifications_allowed(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        app_id: &str,
        allowed: bool,
    ) -> Result<(), Error> {
        self.admin(&hdr).await?;
        let app = crate::ids::AppId::parse(app_id)?;
        self.push
            .request(|reply| Request::SetNotificationsAllowed {
                app,
                allowed,
                reply,
            })
            .await?;
        self.notifications_denied_changed(&emitter).await?;
        Ok(())
    }

    /// Move every subscription to another push server, and keep the choice.
    async fn set_server_url(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        url: &str,
    ) -> Result<(), Error> {
        self.admin(&hdr).await?;
        let parsed =
            ServerUrl::parse(url, self.switch.allow_insecure).map_err(Error::InvalidArgument)?;
        let ws_url = match &parsed {
            ServerUrl::Remote(u) => u.clone(),
            ServerUrl::Local => self.switch.local_ws.clone().ok_or_else(|| {
                Error::Unavailable(
                    "the local push service starts with the daemon: set server_url = \"local\" in webpushd.toml and restart webpushd".into(),
                )
            })?,
        };
        let server = parsed.as_str().to_string();
        let config_server = self.switch.config_url.clone();
        let changed = self
            .push
            .request(|reply| Request::SetServer {
                server: server.clone(),
                ws_url,
                config_server,
                reply,
            })
            .await?;
        if changed {
            *self.server_url.lock().expect("server lock") = server;
            self.server_url_changed(&emitter).await?;
        }
        Ok(())
    }

    async fn reconnect(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), Error> {
        self.admin(&hdr).await?;
        self.conn.reconnect().await;
        Ok(())
    }
}
