//! Typed D-Bus proxies for webpushd's public interfaces, for `pushctl`, the tests and any
//! Rust app. They are written from `dist/org.webpushd.Push1.xml`; a test checks that the
//! daemon introspects the same.

use std::collections::HashMap;

use serde_bytes::ByteBuf;
use zbus::proxy;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue};

/// One pending message as `FetchMessages` returns it: id, payload, metadata.
pub type FetchedMessage = (String, ByteBuf, HashMap<String, OwnedValue>);

#[proxy(
    interface = "org.webpushd.Push1.Manager",
    default_service = "org.webpushd.Push1",
    default_path = "/org/webpushd/Push1"
)]
pub trait Manager {
    fn subscribe(
        &self,
        scope: &str,
        options: HashMap<&str, zbus::zvariant::Value<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;
    fn get_subscription(&self, scope: &str) -> zbus::Result<OwnedObjectPath>;
    fn unsubscribe(&self, scope: &str) -> zbus::Result<bool>;
    fn list_subscriptions(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
    fn fetch_messages(&self, scope: &str) -> zbus::Result<Vec<FetchedMessage>>;
    fn ack_message(&self, scope: &str, message_id: &str) -> zbus::Result<()>;
    fn ack_messages(&self, scope: &str, message_ids: &[&str]) -> zbus::Result<Vec<String>>;

    #[zbus(signal)]
    fn message(
        &self,
        subscription: ObjectPath<'_>,
        scope: &str,
        message_id: &str,
        payload: ByteBuf,
        meta: HashMap<String, OwnedValue>,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn subscription_changed(
        &self,
        subscription: ObjectPath<'_>,
        scope: &str,
        reason: &str,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn quota_changed(
        &self,
        subscription: ObjectPath<'_>,
        scope: &str,
        remaining: i32,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn expired(&self, subscription: ObjectPath<'_>, scope: &str, reason: &str) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.webpushd.Push1.Admin",
    default_service = "org.webpushd.Push1",
    default_path = "/org/webpushd/Push1"
)]
pub trait Admin {
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn server_url(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn uaid(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    fn status(&self) -> zbus::Result<HashMap<String, OwnedValue>>;
    fn list_all(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
    fn reset_quota(&self, subscription: &ObjectPath<'_>) -> zbus::Result<()>;
    fn remove(&self, subscription: &ObjectPath<'_>) -> zbus::Result<()>;
    fn reconnect(&self) -> zbus::Result<()>;
    fn set_server_url(&self, url: &str) -> zbus::Result<()>;
    fn set_notifications_allowed(&self, app_id: &str, allowed: bool) -> zbus::Result<()>;
    #[zbus(property)]
    fn notifications_denied(&self) -> zbus::Result<Vec<String>>;
    #[zbus(signal)]
    fn subscription_added(&self, subscription: ObjectPath<'_>, app_id: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    fn subscription_removed(&self, subscription: ObjectPath<'_>, app_id: &str) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.webpushd.Push1.Subscription",
    default_service = "org.webpushd.Push1"
)]
pub trait Subscription {
    fn get_key(&self, name: &str) -> zbus::Result<ByteBuf>;
    fn unsubscribe(&self) -> zbus::Result<()>;
    #[zbus(property)]
    fn scope(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn app_id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn endpoint(&self) -> zbus::Result<String>;
    #[zbus(property, name = "P256dh")]
    fn p256dh(&self) -> zbus::Result<Vec<u8>>;
    #[zbus(property)]
    fn auth(&self) -> zbus::Result<Vec<u8>>;
    #[zbus(property)]
    fn application_server_key(&self) -> zbus::Result<Vec<u8>>;
    #[zbus(property)]
    fn push_count(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn pending_messages(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn last_push(&self) -> zbus::Result<i64>;
    #[zbus(property)]
    fn quota(&self) -> zbus::Result<i32>;
    #[zbus(property)]
    fn quota_applies(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn expired(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn expired_reason(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn created(&self) -> zbus::Result<i64>;
    #[zbus(property)]
    fn kind(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn bus_name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn description(&self) -> zbus::Result<String>;
}
