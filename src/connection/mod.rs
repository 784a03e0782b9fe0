//! The one connection to the push server.
//!
//! An actor: one task owns the WebSocket, its timers (request timeout, ping, back-off) and
//! the protocol state; the rest of the daemon sends it `Command`s and reads its `ConnStatus`
//! from a `watch` channel. It passes what the server says up as `Event`s.
//!
//! **Architecture invariant:** this module knows channel ids and versions, never apps, keys
//! or SQLite. It never acknowledges a notification by itself: acks come from `push`, after
//! the message is committed.

pub mod backoff;
mod handshake;
pub mod protocol;
mod task;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::ids::{ChannelId, Uaid};
pub use protocol::{Ack, AckUpdate, Notification, Unregister};

/// What the actor needs to know; built from `Config` by the daemon.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub request_timeout: Duration,
    pub ping_interval: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Offline,
    Connecting,
    Connected,
    Backoff,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Offline => "offline",
            ConnState::Connecting => "connecting",
            ConnState::Connected => "connected",
            ConnState::Backoff => "backoff",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConnStatus {
    pub state: ConnState,
    pub connected_since: Option<SystemTime>,
    pub last_error: Option<String>,
    pub next_retry: Option<SystemTime>,
    /// Connection attempts that failed in a row.
    pub failures: u32,
}

impl Default for ConnStatus {
    fn default() -> Self {
        ConnStatus {
            state: ConnState::Offline,
            connected_since: None,
            last_error: None,
            next_retry: None,
            failures: 0,
        }
    }
}

/// What goes into the next `hello`, kept current by `push`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HelloParams {
    /// The stored UAID, only when at least one unexpired subscription exists (Firefox does
    /// the same: a hello with a UAID that has no channels only makes the server keep a user
    /// record for nothing).
    pub uaid: Option<Uaid>,
    pub broadcasts: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The server accepted our hello. `sent` is the UAID we offered; if it differs from
    /// `uaid`, the server has forgotten us and every channel must be registered again.
    Hello {
        uaid: Uaid,
        sent: Option<Uaid>,
        broadcasts: BTreeMap<String, String>,
    },
    Notification(Notification),
    Broadcast(BTreeMap<String, String>),
}

/// One notification's acknowledgement, as `push` decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    pub channel_id: ChannelId,
    pub version: String,
    pub ack: Ack,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the push server did not answer in time")]
    Timeout,
    #[error("the push server is not reachable")]
    Unavailable,
    #[error("the push server refused the request (status {0})")]
    Rejected(u16),
    #[error("the daemon is shutting down")]
    Shutdown,
}

#[derive(Debug)]
enum Command {
    Register {
        channel: ChannelId,
        key: Option<String>,
        reply: oneshot::Sender<Result<String, RequestError>>,
    },
    Unregister {
        channel: ChannelId,
        code: u16,
    },
    Ack(Vec<AckUpdate>),
    Reconnect,
    BroadcastSubscribe(BTreeMap<String, String>),
    /// From NetworkManager / logind: `false` stops reconnect attempts until `true`.
    Network(bool),
    /// Another push server: drop the connection (and what was queued for the old server)
    /// and connect to this URL.
    SetUrl(String),
}

/// A cheap, cloneable handle to the connection actor.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    status: watch::Receiver<ConnStatus>,
}

impl Handle {
    /// Register a channel; resolves with the push endpoint or fails within the request
    /// timeout.
    pub async fn register(
        &self,
        channel: ChannelId,
        key: Option<String>,
    ) -> Result<String, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Register {
                channel,
                key,
                reply,
            })
            .await
            .map_err(|_| RequestError::Shutdown)?;
        rx.await.map_err(|_| RequestError::Shutdown)?
    }

    /// Unregister a channel. Fire and forget: a channel the server still knows is cleaned up
    /// the next time it sends something for it (ack 102 + unregister).
    pub fn unregister(&self, channel: ChannelId, reason: Unregister) {
        let code = reason.code();
        let _ = self.tx.try_send(Command::Unregister { channel, code });
    }

    /// Acknowledge notifications, in one `ack` message.
    pub async fn ack(&self, acks: Vec<Acknowledgement>) {
        if !acks.is_empty() {
            let updates = acks
                .into_iter()
                .map(|a| AckUpdate {
                    channel_id: a.channel_id.to_string(),
                    version: a.version,
                    code: a.ack.code(),
                })
                .collect();
            let _ = self.tx.send(Command::Ack(updates)).await;
        }
    }

    pub async fn reconnect(&self) {
        let _ = self.tx.send(Command::Reconnect).await;
    }

    pub async fn broadcast_subscribe(&self, broadcasts: BTreeMap<String, String>) {
        let _ = self.tx.send(Command::BroadcastSubscribe(broadcasts)).await;
    }

    /// Move to another push server now. What was queued for the old one (unregisters) is
    /// dropped: it must never reach the new one.
    pub async fn set_url(&self, url: String) {
        let _ = self.tx.send(Command::SetUrl(url)).await;
    }

    pub async fn network(&self, online: bool) {
        let _ = self.tx.send(Command::Network(online)).await;
    }

    pub fn status(&self) -> watch::Receiver<ConnStatus> {
        self.status.clone()
    }
}

/// Start the actor; it first connects once `gate` fires (the daemon opens the gate when
/// its bus name is held). It runs until `cancel` fires (then closes the socket with 1000)
/// or every `Handle` is dropped.
pub fn spawn_gated(
    settings: Settings,
    tls: Option<Arc<rustls::ClientConfig>>,
    hello: watch::Receiver<HelloParams>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
    gate: CancellationToken,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    let (status_tx, status_rx) = watch::channel(ConnStatus::default());
    let actor = task::Actor::new(settings, tls, rx, hello, events, status_tx, cancel.clone());
    let join = tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = gate.cancelled() => actor.run().await,
        }
    });
    (
        Handle {
            tx,
            status: status_rx,
        },
        join,
    )
}

/// TLS with the system's trust store (rustls on aws-lc-rs, the daemon's one crypto
/// library; roots from `rustls-native-certs`).
pub fn system_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "no trusted CA certificates found in the system trust store ({} errors)",
            found.errors.len()
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
