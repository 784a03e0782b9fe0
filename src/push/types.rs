//! What `push` exchanges with `dbus/`: requests in, outcomes and events out. The records
//! themselves (a subscription, a stored message) are in `crate::model`, re-exported here.

use tokio::sync::oneshot;

pub use crate::identity::Sandbox;
pub use crate::ids::MessageId;
use crate::ids::{AppId, Scope};
pub use crate::model::{Kind, StoredMessage, SubscriptionRecord};

/// A subscription as apps and `pushctl` see it: no private key.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionInfo {
    pub id: i64,
    pub app_id: AppId,
    pub scope: Scope,
    pub endpoint: String,
    pub p256dh: Vec<u8>,
    pub auth: Vec<u8>,
    pub app_server_key: Vec<u8>,
    pub push_count: u64,
    pub last_push: i64,
    pub quota: i32,
    pub system: bool,
    pub expired: bool,
    /// Why it last expired; kept after a renewal (see `SubscriptionRecord`).
    pub expired_reason: String,
    pub created: i64,
    pub bus_name: String,
    pub kind: Kind,
    pub description: String,
    /// Where the owner's app id came from, if a sandbox.
    pub sandbox: Option<Sandbox>,
}

impl SubscriptionInfo {
    pub fn from_record(r: &SubscriptionRecord) -> SubscriptionInfo {
        SubscriptionInfo {
            id: r.id,
            app_id: r.app_id.clone(),
            scope: r.scope.clone(),
            endpoint: r.endpoint.clone(),
            p256dh: r.keys.public_key().to_vec(),
            auth: r.keys.auth().to_vec(),
            app_server_key: r.app_server_key.clone().unwrap_or_default(),
            push_count: r.push_count,
            last_push: r.last_push,
            quota: r.quota,
            system: r.system,
            expired: r.expired,
            expired_reason: r.expired_reason.clone(),
            created: r.created,
            bus_name: r.bus_name.clone().unwrap_or_default(),
            kind: r.kind,
            description: r.description.clone(),
            sandbox: r.sandbox,
        }
    }

    pub fn quota_applies(&self) -> bool {
        self.quota >= 0
    }
}

/// Errors a request can end with; `dbus/error.rs` maps each to a named D-Bus error.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the subscription exists with a different application server key")]
    KeyMismatch,
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

pub type Reply<T> = oneshot::Sender<Result<T, PushError>>;

/// Who is asking: the app id from the caller's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub app_id: AppId,
    /// Sandboxed callers may not ask for system subscriptions or use Admin.
    pub sandbox: Option<Sandbox>,
}

impl Caller {
    pub fn sandboxed(&self) -> bool {
        self.sandbox.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub application_server_key: Option<Vec<u8>>,
    pub system: bool,
    pub bus_name: Option<String>,
    pub kind: Kind,
    pub description: String,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            application_server_key: None,
            system: false,
            bus_name: None,
            kind: Kind::WebPush,
            description: String::new(),
        }
    }
}

#[derive(Debug)]
pub enum Request {
    Subscribe {
        caller: Caller,
        scope: Scope,
        options: SubscribeOptions,
        reply: Reply<SubscriptionInfo>,
    },
    Get {
        app: AppId,
        scope: Scope,
        reply: Reply<SubscriptionInfo>,
    },
    /// By id, for the subscription objects and Admin. `app: None` = any app (admin).
    GetById {
        app: Option<AppId>,
        id: i64,
        reply: Reply<SubscriptionInfo>,
    },
    Unsubscribe {
        app: AppId,
        scope: Scope,
        reply: Reply<bool>,
    },
    Remove {
        app: Option<AppId>,
        id: i64,
        reply: Reply<bool>,
    },
    List {
        app: Option<AppId>,
        reply: Reply<Vec<SubscriptionInfo>>,
    },
    Fetch {
        app: AppId,
        scope: Scope,
        reply: Reply<Vec<StoredMessage>>,
    },
    /// `AckMessage` (one id) or `AckMessages`. Answered once the deletes are committed,
    /// with the ids that were not pending.
    Ack {
        app: AppId,
        scope: Scope,
        message_ids: Vec<MessageId>,
        reply: Reply<Vec<MessageId>>,
    },
    ResetQuota {
        id: i64,
        reply: Reply<()>,
    },
    Counts {
        reply: Reply<Counts>,
    },
    /// How many messages subscription `id` holds for its app.
    Pending {
        id: i64,
        reply: Reply<u64>,
    },
    /// The apps forbidden to show desktop notifications.
    NotificationsDenied {
        reply: Reply<Vec<String>>,
    },
    SetNotificationsAllowed {
        app: AppId,
        allowed: bool,
        reply: Reply<()>,
    },
    /// Move to another push server: `server` as configured (a URL or `local`), `ws_url`
    /// where to connect, `config_server` the config file's value it overrides. Answers
    /// whether anything changed.
    SetServer {
        server: String,
        ws_url: String,
        config_server: String,
        reply: Reply<bool>,
    },
}

/// Extra metadata of a `Message` for declarative messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageFlags {
    /// A mutable declarative message: the app may handle it (and acknowledge) before the
    /// daemon shows it.
    pub declarative: bool,
    /// The daemon has shown it as a notification already.
    pub notification_shown: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub subscriptions: u64,
    pub expired: u64,
    pub pending_messages: u64,
    pub messages_received: u64,
    /// Apps with subscriptions that have a connection on the bus right now.
    pub apps_connected: u64,
    /// A desktop notification server can show declarative messages.
    pub notification_server: bool,
}

/// How a stored message should reach its app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Unicast `Message` signal to each of the app's connections.
    Signal,
    /// Call `org.webpushd.Push1.Client.Message` on this (activatable) name.
    Activate(String),
    /// Call the UnifiedPush connector (`Connector2`/`Connector1.Message`) on the app's
    /// service name, with the raw body.
    UnifiedPush,
}

/// What `push` tells the D-Bus side; it turns each into signals and object changes.
#[derive(Debug, Clone)]
pub enum DomainEvent {
    Added(SubscriptionInfo),
    Updated(SubscriptionInfo),
    Removed(SubscriptionInfo),
    Message {
        subscription: SubscriptionInfo,
        message: StoredMessage,
        delivery: Delivery,
        flags: MessageFlags,
    },
    /// Show a declarative message through org.freedesktop.Notifications.
    ShowNotification {
        subscription: SubscriptionInfo,
        declarative: super::declarative::Declarative,
        urgency: String,
    },
    SubscriptionChanged {
        subscription: SubscriptionInfo,
        reason: &'static str,
    },
    QuotaChanged {
        subscription: SubscriptionInfo,
    },
    Expired {
        subscription: SubscriptionInfo,
        reason: &'static str,
    },
    Uaid(String),
    /// Acknowledgements removed messages of these subscriptions.
    PendingChanged(Vec<i64>),
}
