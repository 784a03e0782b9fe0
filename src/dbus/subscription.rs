//! `org.webpushd.Push1.Subscription`: one object per subscription, a read-only view kept
//! current by the event pump, plus `GetKey` and `Unsubscribe`.
//!
//! Reads are allowed to the owning app and to unsandboxed callers (the same user, who can
//! read the database anyway; `pushctl list --all` needs it). Endpoint and keys are
//! capabilities, so their changes are announced as invalidations, not broadcast.

use std::sync::Arc;

use serde_bytes::ByteBuf;
use zbus::message::Header;
use zbus::{fdo, interface};

use super::error::Error;
use super::identity::Resolver;
use super::manager::caller;
use crate::push::{self, Request, SubscriptionInfo};

pub struct SubscriptionObject {
    pub(super) info: SubscriptionInfo,
    pub(super) push: push::Handle,
    pub(super) resolver: Arc<Resolver>,
}

impl SubscriptionObject {
    /// The subscription as the owner loop has it now. Reads go there rather than to the
    /// copy the event pump keeps (which trails it slightly), so a property read after an
    /// observed event is never stale.
    async fn now(&self, hdr: Option<Header<'_>>) -> fdo::Result<SubscriptionInfo> {
        self.may_read(hdr).await?;
        let id = self.info.id;
        match self
            .push
            .request(|reply| Request::GetById {
                app: None,
                id,
                reply,
            })
            .await
        {
            Ok(info) => Ok(info),
            Err(_) => Ok(self.info.clone()),
        }
    }

    async fn may_read(&self, hdr: Option<Header<'_>>) -> fdo::Result<()> {
        let Some(hdr) = hdr else {
            return Ok(());
        };
        let who = caller(&self.resolver, &hdr)
            .await
            .map_err(|e| fdo::Error::AccessDenied(e.to_string()))?;
        if who.app_id == self.info.app_id || !who.sandboxed() {
            Ok(())
        } else {
            Err(fdo::Error::AccessDenied(
                "this subscription belongs to another app".into(),
            ))
        }
    }

    async fn owner(&self, hdr: &Header<'_>) -> Result<(), Error> {
        let who = caller(&self.resolver, hdr).await?;
        if who.app_id == self.info.app_id {
            Ok(())
        } else {
            Err(Error::AccessDenied(format!(
                "this subscription belongs to another app (you are {})",
                who.app_id
            )))
        }
    }
}

#[interface(name = "org.webpushd.Push1.Subscription")]
impl SubscriptionObject {
    /// `p256dh` (65-byte public key) or `auth` (16-byte secret), as nsIPushSubscription.getKey.
    async fn get_key(&self, #[zbus(header)] hdr: Header<'_>, name: &str) -> Result<ByteBuf, Error> {
        self.owner(&hdr).await?;
        let info = self.now(None).await?;
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
        let app = Some(self.info.app_id.clone());
        let id = self.info.id;
        self.push
            .request(|reply| Request::Remove { app, id, reply })
            .await?;
        Ok(())
    }

    #[zbus(property)]
    async fn scope(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        let info = self.now(hdr).await?;
        Ok(info.scope.to_string())
    }

    #[zbus(property)]
    async fn app_id(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        let info = self.now(hdr).await?;
        Ok(info.app_id.to_string())
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn endpoint(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        let info = self.now(hdr).await?;
        Ok(info.endpoint.clone())
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn p256dh(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<Vec<u8>> {
        let info = self.now(hdr).await?;
        Ok(info.p256dh.clone())
    }

    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn auth(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<Vec<u8>> {
        let info = self.now(hdr).await?;
        Ok(info.auth.clone())
    }

    #[zbus(property)]
    async fn application_server_key(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
    ) -> fdo::Result<Vec<u8>> {
        let info = self.now(hdr).await?;
        Ok(info.app_server_key.clone())
    }

    #[zbus(property)]
    async fn push_count(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<u64> {
        let info = self.now(hdr).await?;
        Ok(info.push_count)
    }

    #[zbus(property)]
    async fn last_push(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<i64> {
        let info = self.now(hdr).await?;
        Ok(info.last_push)
    }

    #[zbus(property)]
    async fn quota(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<i32> {
        let info = self.now(hdr).await?;
        Ok(info.quota)
    }

    #[zbus(property)]
    async fn quota_applies(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<bool> {
        let info = self.now(hdr).await?;
        Ok(info.quota_applies())
    }

    #[zbus(property)]
    async fn expired(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<bool> {
        let info = self.now(hdr).await?;
        Ok(info.expired)
    }

    #[zbus(property)]
    async fn created(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<i64> {
        let info = self.now(hdr).await?;
        Ok(info.created)
    }

    /// `webpush` (this API) or `unifiedpush` (a UnifiedPush registration).
    #[zbus(property)]
    async fn kind(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        let info = self.now(hdr).await?;
        Ok(match info.kind {
            crate::push::Kind::WebPush => "webpush",
            crate::push::Kind::UnifiedPush(_) => "unifiedpush",
        }
        .into())
    }

    /// The activatable name for background delivery (UnifiedPush: the connector's service).
    #[zbus(property)]
    async fn bus_name(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        let info = self.now(hdr).await?;
        Ok(info.bus_name.clone())
    }

    /// UnifiedPush's registration description; empty otherwise.
    #[zbus(property)]
    async fn description(&self, #[zbus(header)] hdr: Option<Header<'_>>) -> fdo::Result<String> {
        let info = self.now(hdr).await?;
        Ok(info.description.clone())
    }
}
