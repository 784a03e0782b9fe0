//! `org.webpushd.Push1.Subscription`: one object per subscription, a read-only view kept
//! current by the event pump, plus `GetKey` and `Unsubscribe`.
//!
//! Who may read what (the interface XML says the same): the subscription's details are
//! readable by the owning app and by unsandboxed callers (the same user, who can read the
//! database anyway); its capabilities, `Endpoint`, `P256dh` and `Auth` (as properties or
//! through `GetKey`), only by the owner and the user's own tools (`Source::is_user_tool`:
//! `pushctl list --all` needs them), never by another app, sandboxed or not. Endpoint and
//! keys are announced as invalidations, not broadcast.

use std::sync::Arc;

use serde_bytes::ByteBuf;
use zbus::message::Header;
use zbus::{fdo, interface};

use super::error::Error;
use super::identity::Resolver;
use super::manager::caller;
use crate::ids::AppId;
use crate::push::{self, Request, SubscriptionInfo};

/// One per subscription, so kept small: its id and app (for the access rules), what it
/// last announced, and handles. Every read asks the owner loop.
pub struct SubscriptionObject {
    pub(super) id: i64,
    pub(super) app_id: AppId,
    pub(super) shown: Shown,
    pub(super) push: push::Handle,
    pub(super) resolver: Arc<Resolver>,
}

/// What a subscription's object last announced: enough to tell which properties a new
/// state changes, without a copy of its strings and keys (the capabilities, which are
/// only ever invalidated, by fingerprint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Shown {
    pub push_count: u64,
    pub last_push: i64,
    pub quota: i32,
    pub expired: bool,
    pub expired_reason: String,
    pub endpoint: u64,
    pub p256dh: u64,
    pub auth: u64,
}

impl Shown {
    pub fn of(info: &SubscriptionInfo) -> Shown {
        let fingerprint = |b: &[u8]| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hasher::write(&mut h, b);
            std::hash::Hasher::finish(&h)
        };
        Shown {
            push_count: info.push_count,
            last_push: info.last_push,
            quota: info.quota,
            expired: info.expired,
            expired_reason: info.expired_reason.clone(),
            endpoint: fingerprint(info.endpoint.as_bytes()),
            p256dh: fingerprint(&info.p256dh),
            auth: fingerprint(&info.auth),
        }
    }
}

impl SubscriptionObject {
    /// The subscription as the owner loop has it now. Reads go there rather than to the
    /// copy the event pump keeps (which trails it slightly), so a property read after an
    /// observed event is never stale.
    async fn now(&self, hdr: Option<Header<'_>>, what: Read) -> fdo::Result<SubscriptionInfo> {
        if let Some(hdr) = hdr {
            self.may_read(&hdr, what)
                .await
                .map_err(|e| fdo::Error::AccessDenied(e.to_string()))?;
        }
        self.current().await
    }

    async fn current(&self) -> fdo::Result<SubscriptionInfo> {
        let id = self.id;
        self.push
            .request(|reply| Request::GetById {
                app: None,
                id,
                reply,
            })
            .await
            .map_err(|_| fdo::Error::UnknownObject(format!("subscription {id} is gone")))
    }

    /// The one rule for reads, on every path (properties, `GetAll`, `GetKey`).
    async fn may_read(&self, hdr: &Header<'_>, what: Read) -> Result<(), Error> {
        let who = caller(&self.resolver, hdr).await?;
        let allowed = who.app_id == self.app_id
            || who.is_user_tool()
            || (what == Read::Details && !who.sandboxed());
        if allowed {
            Ok(())
        } else {
            Err(Error::AccessDenied(format!(
                "this subscription belongs to another app (you are {}); {} only to its owner and the user's tools",
                who.app_id,
                match what {
                    Read::Details => "it is shown",
                    Read::Capability => "its endpoint and keys are given",
                }
            )))
        }
    }

    async fn owner(&self, hdr: &Header<'_>) -> Result<(), Error> {
        let who = caller(&self.resolver, hdr).await?;
        if who.app_id == self.app_id {
            Ok(())
        } else {
            Err(Error::AccessDenied(format!(
                "this subscription belongs to another app (you are {})",
                who.app_id
            )))
        }
    }
}

/// What a read reveals: details (scope, counters, …) or a capability (the endpoint, which
/// lets anyone push to the app, and the keys, which decrypt its messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Details,
    Capability,
}

#[interface(name = "org.webpushd.Push1.Subscription")]
impl SubscriptionObject {
    /// `p256dh` (65-byte public key) or `auth` (16-byte secret), as nsIPushSubscription.getKey.
    async fn get_key(&self, #[zbus(header)] hdr: Header<'_>, name: &str) -> Result<ByteBuf, Error> {
        self.may_read(&hdr, Read::Capability).await?;
        let info = self.current().await?;
        match name {
            "p256dh" => Ok(ByteBuf::from(info.p256dh)),
            "auth" => Ok(ByteBuf::from(info.auth)),
            other => Err(Error::InvalidArgument(format!(
                "unknown key {other:?}; use \"p256dh\" or \"auth\""
            ))),
        }
    }

    async fn unsubscribe(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), Error> {
        self.owner(&hdr).await?;
        let app = Some(self.app_id.clone());
        let id = self.id;
        self.push
            .request(|reply| Request::Remove { app, id, reply })
            .await?;
        Ok(())
    }

    #[zbus(property)]
    async fn scope(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        let info = self.now(hdr, Read::Details).await?;
        Ok(info.scope.to_string())
    }

    #[zbus(property)]
    async fn app_id(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        let info = self.now(hdr, Read::Details).await?;
        Ok(info.app_id.to_string())
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn endpoint(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        let info = self.now(hdr, Read::Capability).await?;
        Ok(info.endpoint.clone())
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn p256dh(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<Vec<u8>> {
        let info = self.now(hdr, Read::Capability).await?;
        Ok(info.p256dh.clone())
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn auth(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<Vec<u8>> {
        let info = self.now(hdr, Read::Capability).await?;
        Ok(info.auth.clone())
    }

    #[zbus(property)]
    async fn application_server_key(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
    ) -> fdo::Result<Vec<u8>> {
        let info = self.now(hdr, Read::Details).await?;
        Ok(info.app_server_key.clone())
    }

    #[zbus(property)]
    async fn push_count(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<u64> {
        let info = self.now(hdr, Read::Details).await?;
        Ok(info.push_count)
    }

    #[zbus(property)]
    async fn last_push(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<i64> {
        let info = self.now(hdr, Read::Details).await?;
        Ok(info.last_push)
    }

    #[zbus(property)]
    async fn quota(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<i32> {
        let info = self.now(hdr, Read::Details).await?;
        Ok(info.quota)
    }

    #[zbus(property)]
    async fn quota_applies(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<bool> {
        let info = self.now(hdr, Read::Details).await?;
        Ok(info.quota_applies())
    }

    #[zbus(property)]
    async fn expired(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<bool> {
        let info = self.now(hdr, Read::Details).await?;
        Ok(info.expired)
    }

    /// Why it last expired: quota, server, app-removed; kept after a renewal.
    #[zbus(property)]
    async fn expired_reason(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        let info = self.now(hdr, Read::Details).await?;
        Ok(info.expired_reason.clone())
    }

    #[zbus(property)]
    async fn created(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<i64> {
        let info = self.now(hdr, Read::Details).await?;
        Ok(info.created)
    }

    /// `webpush` (this API) or `unifiedpush` (a UnifiedPush registration).
    #[zbus(property)]
    async fn kind(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        let info = self.now(hdr, Read::Details).await?;
        Ok(match info.kind {
            crate::push::Kind::WebPush => "webpush",
            crate::push::Kind::UnifiedPush(_) => "unifiedpush",
        }
        .into())
    }

    /// The activatable name for background delivery (UnifiedPush: the connector's service).
    #[zbus(property)]
    async fn bus_name(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        let info = self.now(hdr, Read::Details).await?;
        Ok(info.bus_name.clone())
    }

    /// Messages stored for the app and not yet acknowledged (or handed over).
    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn pending_messages(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<u32> {
        let info = self.now(hdr, Read::Details).await?;
        let id = info.id;
        let n = self
            .push
            .request(|reply| Request::Pending { id, reply })
            .await
            .map_err(|e| fdo::Error::Failed(e.to_string()))?;
        Ok(n.min(u32::MAX as u64) as u32)
    }

    /// UnifiedPush's registration description; empty otherwise.
    #[zbus(property)]
    async fn description(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        let info = self.now(hdr, Read::Details).await?;
        Ok(info.description.clone())
    }
}
