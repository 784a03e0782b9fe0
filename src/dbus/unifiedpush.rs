//! The UnifiedPush distributor (the UnifiedPush D-Bus specification, DBUS_0.3.0, and the
//! older 0.2.0):
//! `org.unifiedpush.Distributor2` and `Distributor1` at `/org/unifiedpush/Distributor`,
//! and calls to the apps' `org.unifiedpush.Connector2`/`Connector1`.
//!
//! A registration is a subscription of kind `UnifiedPush` owned by the caller's app id,
//! with the connection token as its scope and the connector's service name as its bus
//! name. The app holds its own keys: messages carry the raw RFC 8291 body.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use zbus::message::Header;
use zbus::zvariant::{OwnedValue, Value};
use zbus::{fdo, interface};

use super::error::Error;
use super::identity::{Identity, Resolver};
use super::manager::caller;
use crate::crypto;
use crate::ids::Scope;
use crate::push::{
    self, Kind, PushError, Request, StoredMessage, SubscribeOptions, SubscriptionInfo,
};

pub const BUS_NAME: &str = "org.unifiedpush.Distributor.webpushd";
pub const PATH: &str = "/org/unifiedpush/Distributor";
pub const CONNECTOR_PATH: &str = "/org/unifiedpush/Connector";
const CONNECTOR1: &str = "org.unifiedpush.Connector1";
const CONNECTOR2: &str = "org.unifiedpush.Connector2";

/// Field limits of the specification.
const MAX_TOKEN: usize = 100;
const MAX_DESCRIPTION: usize = 100;
/// How long a connector has to answer a v2 call.
const CONNECTOR_TIMEOUT: Duration = Duration::from_secs(30);

type Dict = HashMap<String, OwnedValue>;

fn dict(pairs: &[(&str, &str)]) -> Dict {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::from(*v).try_to_owned().expect("strings have no fds"),
            )
        })
        .collect()
}

/// Why a registration failed, as the specification names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Internal,
    Network,
    Unauthorized,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Internal => "INTERNAL_ERROR",
            Refusal::Network => "NETWORK",
            Refusal::Unauthorized => "UNAUTHORIZED",
        }
    }
}

/// What both versions share.
struct Shared {
    push: push::Handle,
    resolver: Arc<Resolver>,
}

struct Registration<'a> {
    service: &'a str,
    token: &'a str,
    description: &'a str,
    vapid: Option<&'a str>,
    version: u8,
}

impl Shared {
    async fn register(
        &self,
        hdr: &Header<'_>,
        conn: &zbus::Connection,
        r: Registration<'_>,
    ) -> Result<SubscriptionInfo, Refusal> {
        let who = caller(&self.resolver, hdr)
            .await
            .map_err(|_| Refusal::Unauthorized)?;
        if r.token.is_empty() || r.token.len() > MAX_TOKEN {
            tracing::info!(app = %who.app_id, "UnifiedPush register refused: token must be 1-100 bytes");
            return Err(Refusal::Internal);
        }
        if r.description.len() > MAX_DESCRIPTION {
            tracing::info!(app = %who.app_id, "UnifiedPush register refused: description over 100 bytes");
            return Err(Refusal::Internal);
        }
        let key = match r.vapid {
            Some(v) => {
                let raw = crypto::b64(v).map_err(|_| Refusal::Internal)?;
                crypto::validate_public_key(&raw).map_err(|_| {
                    tracing::info!(app = %who.app_id, "UnifiedPush register refused: bad VAPID key");
                    Refusal::Internal
                })?;
                Some(raw)
            }
            None => None,
        };
        if !service_allowed(conn, hdr, &who, r.service).await {
            tracing::info!(app = %who.app_id, service = r.service, "UnifiedPush register refused: not the caller's service");
            return Err(Refusal::Unauthorized);
        }
        let scope = Scope::parse(r.token).map_err(|_| Refusal::Internal)?;
        let options = SubscribeOptions {
            application_server_key: key,
            system: false,
            bus_name: Some(r.service.to_string()),
            kind: Kind::UnifiedPush(r.version),
            description: r.description.to_string(),
        };
        let subscribe = |options: SubscribeOptions| {
            let caller = who.caller();
            let scope = scope.clone();
            async move {
                self.push
                    .request(|reply| Request::Subscribe {
                        caller,
                        scope,
                        options,
                        reply,
                    })
                    .await
            }
        };
        let result = match subscribe(options.clone()).await {
            // The app changed its VAPID key: a new registration replaces the old one.
            Err(PushError::KeyMismatch) => {
                let app = who.app_id.clone();
                let scope = scope.clone();
                let _ = self
                    .push
                    .request(|reply| Request::Unsubscribe { app, scope, reply })
                    .await;
                subscribe(options).await
            }
            other => other,
        };
        result.map_err(|e| match e {
            PushError::Unavailable(_) => Refusal::Network,
            PushError::AccessDenied(_) => Refusal::Unauthorized,
            _ => Refusal::Internal,
        })
    }

    async fn unregister(&self, hdr: &Header<'_>, token: &str) -> Result<(), Error> {
        let who = caller(&self.resolver, hdr).await?;
        let scope = Scope::parse(token)?;
        let app = who.app_id;
        // The Removed event confirms it to the connector with `Unregistered`.
        self.push
            .request(|reply| Request::Unsubscribe { app, scope, reply })
            .await?;
        Ok(())
    }
}

/// The service must be the caller's app id, a name the caller owns now, or an
/// activatable name under the caller's app id.
async fn service_allowed(
    conn: &zbus::Connection,
    hdr: &Header<'_>,
    who: &Identity,
    service: &str,
) -> bool {
    if zbus::names::WellKnownName::try_from(service).is_err() {
        return false;
    }
    if service == who.app_id.as_str() {
        return true;
    }
    let Ok(dbus) = fdo::DBusProxy::new(conn).await else {
        return false;
    };
    let Ok(name) = zbus::names::BusName::try_from(service) else {
        return false;
    };
    if let (Ok(owner), Some(sender)) = (dbus.get_name_owner(name).await, hdr.sender()) {
        if owner.as_str() == sender.as_str() {
            return true;
        }
    }
    let prefix = format!("{}.", who.app_id);
    service.starts_with(&prefix)
        && dbus
            .list_activatable_names()
            .await
            .map(|names| names.iter().any(|n| n.as_str() == service))
            .unwrap_or(false)
}

/// Tell the connector its endpoint, a moment after the Register reply went out (the
/// specification has the connector wait for the reply, then the call).
pub(super) fn new_endpoint_later(conn: &zbus::Connection, info: SubscriptionInfo) {
    let conn = conn.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = new_endpoint(&conn, &info).await;
    });
}

fn version(info: &SubscriptionInfo) -> u8 {
    match info.kind {
        Kind::UnifiedPush(v) => v,
        Kind::WebPush => 2,
    }
}

pub(super) async fn new_endpoint(
    conn: &zbus::Connection,
    info: &SubscriptionInfo,
) -> zbus::Result<()> {
    let token = info.scope.as_str();
    if version(info) == 1 {
        no_reply(
            conn,
            &info.bus_name,
            CONNECTOR1,
            "NewEndpoint",
            &(token, info.endpoint.as_str()),
        )
        .await
    } else {
        let args = dict(&[("token", token), ("endpoint", info.endpoint.as_str())]);
        call2(conn, &info.bus_name, "NewEndpoint", args).await
    }
}

pub(super) async fn unregistered(
    conn: &zbus::Connection,
    info: &SubscriptionInfo,
) -> zbus::Result<()> {
    let token = info.scope.as_str();
    if version(info) == 1 {
        no_reply(conn, &info.bus_name, CONNECTOR1, "Unregistered", &(token,)).await
    } else {
        call2(
            conn,
            &info.bus_name,
            "Unregistered",
            dict(&[("token", token)]),
        )
        .await
    }
}

/// Deliver a message; `true` when the connector took it. Version 1 methods are
/// no-reply by the specification, so a sent call counts as delivered.
pub(super) async fn message(
    conn: &zbus::Connection,
    info: &SubscriptionInfo,
    m: &StoredMessage,
) -> bool {
    let token = info.scope.as_str();
    let result = if version(info) == 1 {
        let body = (token, serde_bytes::Bytes::new(&m.payload), m.id.as_str());
        no_reply(conn, &info.bus_name, CONNECTOR1, "Message", &body).await
    } else {
        let mut args = dict(&[("token", token), ("id", m.id.as_str())]);
        args.insert(
            "message".into(),
            Value::from(m.payload.clone())
                .try_to_owned()
                .expect("bytes have no fds"),
        );
        call2(conn, &info.bus_name, "Message", args).await
    };
    if let Err(e) = &result {
        tracing::debug!(subscription = info.id, error = %e, "UnifiedPush Message failed");
    }
    result.is_ok()
}

async fn call2(
    conn: &zbus::Connection,
    service: &str,
    method: &str,
    args: Dict,
) -> zbus::Result<()> {
    let body = (args,);
    let call = conn.call_method(
        Some(service),
        CONNECTOR_PATH,
        Some(CONNECTOR2),
        method,
        &body,
    );
    match tokio::time::timeout(CONNECTOR_TIMEOUT, call).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(zbus::Error::Failure(format!(
            "{service} did not answer {method}"
        ))),
    }
}

async fn no_reply<B>(
    conn: &zbus::Connection,
    service: &str,
    iface: &str,
    method: &str,
    body: &B,
) -> zbus::Result<()>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    let msg = zbus::message::Message::method_call(CONNECTOR_PATH, method)?
        .destination(service)?
        .interface(iface)?
        .with_flags(zbus::message::Flags::NoReplyExpected)?
        .build(body)?;
    conn.send(&msg).await
}

pub struct Distributor2(Shared);
pub struct Distributor1(Shared);

impl Distributor2 {
    pub fn new(push: push::Handle, resolver: Arc<Resolver>) -> Self {
        Distributor2(Shared { push, resolver })
    }
}

impl Distributor1 {
    pub fn new(push: push::Handle, resolver: Arc<Resolver>) -> Self {
        Distributor1(Shared { push, resolver })
    }
}

fn string_arg<'a>(args: &'a Dict, key: &str) -> Result<Option<&'a str>, ()> {
    match args.get(key).map(|v| &**v) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(()),
    }
}

#[interface(name = "org.unifiedpush.Distributor2")]
impl Distributor2 {
    async fn register(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        args: Dict,
    ) -> Dict {
        let fail = |r: Refusal| dict(&[("success", "REGISTRATION_FAILED"), ("reason", r.reason())]);
        let (Ok(Some(service)), Ok(Some(token)), Ok(description), Ok(vapid)) = (
            string_arg(&args, "service"),
            string_arg(&args, "token"),
            string_arg(&args, "description"),
            string_arg(&args, "vapid"),
        ) else {
            return fail(Refusal::Internal);
        };
        let r = Registration {
            service,
            token,
            description: description.unwrap_or(""),
            vapid,
            version: 2,
        };
        match self.0.register(&hdr, conn, r).await {
            Ok(info) => {
                new_endpoint_later(conn, info);
                dict(&[("success", "REGISTRATION_SUCCEEDED")])
            }
            Err(r) => fail(r),
        }
    }

    async fn unregister(&self, #[zbus(header)] hdr: Header<'_>, args: Dict) -> Result<Dict, Error> {
        let Ok(Some(token)) = string_arg(&args, "token") else {
            return Err(Error::InvalidArgument("token (s) is required".into()));
        };
        self.0.unregister(&hdr, token).await?;
        Ok(Dict::new())
    }
}

#[interface(name = "org.unifiedpush.Distributor1")]
impl Distributor1 {
    async fn register(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        service_name: &str,
        token: &str,
        description: &str,
    ) -> (String, String) {
        let r = Registration {
            service: service_name,
            token,
            description,
            vapid: None,
            version: 1,
        };
        match self.0.register(&hdr, conn, r).await {
            Ok(info) => {
                new_endpoint_later(conn, info);
                ("NEW_ENDPOINT".into(), String::new())
            }
            Err(r) => ("REGISTRATION_FAILED".into(), r.reason().into()),
        }
    }

    async fn unregister(&self, #[zbus(header)] hdr: Header<'_>, token: &str) -> Result<(), Error> {
        self.0.unregister(&hdr, token).await
    }
}

/// At startup: registrations whose service is neither on the bus nor activatable belong to
/// apps that were removed; unregister them.
pub async fn prune_removed_apps(conn: &zbus::Connection, push: &push::Handle) -> zbus::Result<()> {
    let dbus = fdo::DBusProxy::new(conn).await?;
    let mut known: Vec<String> = dbus
        .list_activatable_names()
        .await?
        .into_iter()
        .map(|n| n.to_string())
        .collect();
    known.extend(dbus.list_names().await?.into_iter().map(|n| n.to_string()));
    let all = push
        .request(|reply| Request::List { app: None, reply })
        .await
        .map_err(|e| zbus::Error::Failure(e.to_string()))?;
    for s in all {
        if matches!(s.kind, Kind::UnifiedPush(_)) && !known.contains(&s.bus_name) {
            tracing::info!(subscription = s.id, service = %s.bus_name, "UnifiedPush app is gone: unregistering");
            let id = s.id;
            let _ = push
                .request(|reply| Request::Remove {
                    app: None,
                    id,
                    reply,
                })
                .await;
        }
    }
    Ok(())
}
