//! The domain's records: what a subscription and a stored message are. Plain values, no
//! I/O: `store` maps its rows to them and `push` works with them (and re-exports them).

use crate::crypto::SubscriptionKeys;
use crate::identity::Sandbox;
use crate::ids::{AppId, ChannelId, MessageId, Scope};

/// What a subscription serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The native API: payloads decrypted with the subscription's keys.
    WebPush,
    /// A UnifiedPush registration (D-Bus API version 1 or 2): the app holds its own keys
    /// and gets the raw RFC 8291 body.
    UnifiedPush(u8),
}

/// A subscription as stored.
#[derive(Debug, Clone)]
pub struct SubscriptionRecord {
    pub id: i64,
    pub channel_id: ChannelId,
    pub app_id: AppId,
    pub scope: Scope,
    pub endpoint: String,
    pub keys: SubscriptionKeys,
    pub app_server_key: Option<Vec<u8>>,
    pub push_count: u64,
    pub last_push: i64,
    pub quota: i32,
    pub expired: bool,
    /// Why it last expired (`quota`, `server`, `app-removed`); kept after a renewal until
    /// the next expiry; empty if it never expired.
    pub expired_reason: String,
    pub system: bool,
    pub bus_name: Option<String>,
    pub created: i64,
    pub kind: Kind,
    /// UnifiedPush's registration description (at most 100 bytes); empty otherwise.
    pub description: String,
    /// The sandbox the owner's app id came from, if any.
    pub sandbox: Option<Sandbox>,
}

/// A decrypted message waiting for its app.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub id: MessageId,
    pub subscription_id: i64,
    pub channel_id: ChannelId,
    pub version: String,
    pub payload: Vec<u8>,
    pub received: i64,
    pub ttl: u32,
    pub topic: String,
    pub urgency: String,
    /// The daemon showed it as a desktop notification (declarative Web Push).
    pub shown: bool,
}

/// Records for tests of the code that keeps and handles them.
#[cfg(test)]
pub(crate) mod examples {
    use super::*;

    /// A channel id for the examples.
    pub(crate) const CH: &str = "9d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d";

    pub(crate) fn record(channel: &str, scope: &str) -> SubscriptionRecord {
        SubscriptionRecord {
            id: 0,
            channel_id: ChannelId::parse(channel).unwrap(),
            app_id: AppId::parse("org.example.App").unwrap(),
            scope: Scope::parse(scope).unwrap(),
            endpoint: "https://push.example/wpush/v1/x".into(),
            keys: SubscriptionKeys::generate().unwrap(),
            app_server_key: None,
            push_count: 0,
            last_push: 0,
            quota: 16,
            expired: false,
            expired_reason: String::new(),
            system: false,
            bus_name: None,
            created: 1,
            kind: Kind::WebPush,
            description: String::new(),
            sandbox: None,
        }
    }

    pub(crate) fn message(sub: i64, ch: &str, version: &str, received: i64) -> StoredMessage {
        StoredMessage {
            id: crate::ids::message_id(&ChannelId::parse(ch).unwrap(), version),
            subscription_id: sub,
            channel_id: ChannelId::parse(ch).unwrap(),
            version: version.into(),
            payload: b"hi".to_vec(),
            received,
            ttl: 60,
            topic: String::new(),
            urgency: "normal".into(),
            shown: false,
        }
    }
}
