//! The project's push server: Mozilla's autopush protocol (WebSocket side and RFC 8030
//! HTTP endpoint) in one process, backed by its own SQLite file.
//!
//! It is the daemon's "local push service" (`server_url = "local"`) and the server every
//! integration test and benchmark talks to, so it behaves like autopush-rs wherever a push
//! client or an application server can tell (see `docs/push-server.md`), quirks included, and can misbehave on request through [`Faults`]. It never trusts its input:
//! every frame and request is parsed at the edge, sizes are bounded, nothing unwraps.
//!
//! Layout: `ws.rs` owns each WebSocket in its own task; `http.rs` answers application
//! servers; both go through [`Shared`] for storage (`store.rs`) and reach connections only
//! by message (`registry.rs`). Every accepted notification is written to SQLite first and
//! deleted when acknowledged, so an unacknowledged message always comes back after a
//! reconnect or a server restart.

mod faults;
mod headers;
mod http;
mod registry;
mod store;
mod ws;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::{now_ms, now_unix};

use aws_lc_rs::{digest, hmac};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use faults::{Faults, Step};
pub use store::StoreError;

use registry::{Command, Registry};
use store::{ChannelLookup, NewMessage, Notification, Store};

/// autopush caps TTL at 30 days (`MAX_NOTIFICATION_TTL_SECS`) rather than refusing
/// longer ones; the capped value is what the `TTL` response header echoes.
pub const MAX_TTL: u32 = 30 * 24 * 60 * 60;
/// Stored messages are sent in batches of this many; the next batch waits for acks.
const BATCH_SIZE: usize = 10;
/// How many ack records `stats()` keeps (the oldest are forgotten first).
const MAX_ACK_RECORDS: usize = 100_000;

/// How to run a [`PushServer`]. Build with [`ServerOptions::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The server's own SQLite file; messages for offline clients survive a restart.
    pub db_path: PathBuf,
    pub ws_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Off by default: then [`PushServer::faults`] is `None` and nothing can be injected.
    pub fault_injection: bool,
    /// A connection must say hello within this long (else 1011 "HandshakeTimeout").
    pub hello_timeout: Duration,
    /// A second client ping within this interval closes the connection with 1011.
    pub client_ping_min_interval: Duration,
    /// WebSocket Ping frames go out this often once the client said hello.
    pub server_ping_interval: Duration,
    /// No Pong within this long closes with 1011 "PongTimeout".
    pub pong_timeout: Duration,
    /// Largest accepted push body (autopush's `max_data_bytes`); bigger ones get 413.
    pub max_body: usize,
    /// autopush's `msg_limit`: a client that reads more than this many messages from
    /// storage in one go loses its user record (close 1000 "SM", new uaid at next hello).
    /// The endpoint never counts stored messages.
    pub max_stored_messages: usize,
}

impl ServerOptions {
    pub fn new(db_path: PathBuf) -> Self {
        let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        ServerOptions {
            db_path,
            ws_addr: loopback,
            http_addr: loopback,
            fault_injection: false,
            hello_timeout: Duration::from_secs(5),
            client_ping_min_interval: Duration::from_secs(45),
            server_ping_interval: Duration::from_secs(300),
            pong_timeout: Duration::from_secs(4),
            max_body: 5630,
            max_stored_messages: 150,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("push rejected: {0}")]
    Rejected(Rejection),
}

/// Why a push was refused, as autoendpoint answers it (status, errno, message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub errno: Option<u16>,
    pub message: String,
}

impl Rejection {
    pub(crate) fn new(status: u16, errno: Option<u16>, message: impl Into<String>) -> Self {
        Rejection {
            status,
            errno,
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            Some(errno) => write!(f, "{} (errno {errno}): {}", self.status, self.message),
            None => write!(f, "{}: {}", self.status, self.message),
        }
    }
}

impl From<Rejection> for ServerError {
    fn from(r: Rejection) -> Self {
        ServerError::Rejected(r)
    }
}

/// What happened to an accepted push (HTTP 201 in every case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliverOutcome {
    /// Handed to the connected client (and stored until acked, unless TTL was 0).
    Sent { message_id: String },
    /// Stored for the client's next connection.
    Stored { message_id: String },
    /// TTL 0 and the client offline: dropped, as RFC 8030 §5.2 allows.
    Dropped { message_id: String },
}

impl DeliverOutcome {
    /// The id in the `Location` header; also the `version` the client sees.
    pub fn message_id(&self) -> &str {
        match self {
            DeliverOutcome::Sent { message_id }
            | DeliverOutcome::Stored { message_id }
            | DeliverOutcome::Dropped { message_id } => message_id,
        }
    }

    /// `sent`, `stored` or `dropped`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DeliverOutcome::Sent { .. } => "sent",
            DeliverOutcome::Stored { .. } => "stored",
            DeliverOutcome::Dropped { .. } => "dropped",
        }
    }
}

/// A push as an application server sends it, for [`PushServer::deliver_message`].
#[derive(Clone, Debug, Default)]
pub struct PushMessage {
    pub body: Vec<u8>,
    /// `aes128gcm` or `aesgcm`; required when `body` is not empty.
    pub content_encoding: Option<String>,
    /// aesgcm only: the `Encryption` header (`salt=…`).
    pub encryption: Option<String>,
    /// aesgcm only: the `Crypto-Key` header (`dh=…`).
    pub crypto_key: Option<String>,
    /// Seconds; capped at [`MAX_TTL`].
    pub ttl: u32,
    pub topic: Option<String>,
    pub urgency: Option<String>,
}

/// Counters for tests and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct ServerStats {
    /// Connections that have said hello and are still open.
    pub connected_clients: usize,
    /// Completed WebSocket handshakes.
    pub connections: u64,
    pub hellos: u64,
    pub registers: u64,
    /// `(channelID, code)`; a missing code is recorded as 200, as autopush assumes.
    pub unregisters: Vec<(String, u16)>,
    /// `(channelID, version, code)` in arrival order; a missing code is recorded as 0.
    /// Only the last 100 000 are kept.
    pub acks: Vec<(String, String, u16)>,
    /// `(version, code)`; a missing code is recorded as 0.
    pub nacks: Vec<(String, u16)>,
    /// Client pings (`{}`) received.
    pub pings: u64,
    /// WebSocket ping frames received from clients (answered with a pong).
    pub ws_pings: u64,
    /// Notification frames sent (live and from storage, redeliveries included).
    pub notifications_sent: u64,
    /// Messages currently stored (not yet acknowledged, expired ones may linger).
    pub stored_messages: u64,
    /// User records dropped because a client read too many messages from storage (or by
    /// [`PushServer::drop_user`]).
    pub uaid_resets: u64,
}

/// Shared by the listener tasks, the connection tasks and [`PushServer`].
pub(crate) struct Shared {
    opts: ServerOptions,
    http_base: String,
    /// HMAC-SHA-256 with the server secret: endpoint tokens.
    mac_key: hmac::Key,
    store: Mutex<Store>,
    clients: Arc<Registry>,
    stats: Mutex<ServerStats>,
    faults: Option<Faults>,
    broadcasts: Mutex<HashMap<String, String>>,
}

/// A running push server. Dropping it stops the listeners and connections too, but
/// [`PushServer::shutdown`] also waits for them.
pub struct PushServer {
    shared: Arc<Shared>,
    ws_addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl fmt::Debug for PushServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushServer")
            .field("ws_url", &self.ws_url())
            .field("http_base", &self.http_base())
            .finish_non_exhaustive()
    }
}

impl PushServer {
    /// Opens the database and binds both listeners (no fallback port: the caller decides).
    pub async fn start(opts: ServerOptions) -> Result<PushServer, ServerError> {
        let store = Store::open(&opts.db_path)?;
        let secret = store.secret()?;
        let bind = |what, addr| move |source| ServerError::Bind { what, addr, source };
        let ws_listener = TcpListener::bind(opts.ws_addr)
            .await
            .map_err(bind("WebSocket", opts.ws_addr))?;
        let http_listener = TcpListener::bind(opts.http_addr)
            .await
            .map_err(bind("HTTP", opts.http_addr))?;
        let ws_addr = url_addr(
            ws_listener
                .local_addr()
                .map_err(bind("WebSocket", opts.ws_addr))?,
        );
        let http_addr = url_addr(
            http_listener
                .local_addr()
                .map_err(bind("HTTP", opts.http_addr))?,
        );

        let clients = Arc::new(Registry::default());
        let faults = opts
            .fault_injection
            .then(|| Faults::new(Arc::clone(&clients)));
        let shared = Arc::new(Shared {
            http_base: format!("http://{http_addr}"),
            opts,
            mac_key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            store: Mutex::new(store),
            clients,
            stats: Mutex::new(ServerStats::default()),
            faults,
            broadcasts: Mutex::new(HashMap::new()),
        });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(ws::serve(
            Arc::clone(&shared),
            ws_listener,
            cancel.clone(),
            tracker.clone(),
        ));
        tracker.spawn(http::serve(
            Arc::clone(&shared),
            http_listener,
            cancel.clone(),
            tracker.clone(),
        ));
        tracing::info!(ws = %ws_addr, http = %http_addr, "push server listening");
        Ok(PushServer {
            shared,
            ws_addr,
            cancel,
            tracker,
        })
    }

    /// `ws://127.0.0.1:PORT/`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.ws_addr)
    }

    /// `http://127.0.0.1:PORT`, the origin of every endpoint and the VAPID audience.
    pub fn http_base(&self) -> String {
        self.shared.http_base.clone()
    }

    pub fn faults(&self) -> Option<Faults> {
        self.shared.faults.clone()
    }

    pub fn stats(&self) -> ServerStats {
        let mut stats = self.shared.stats().clone();
        stats.connected_clients = self.shared.clients.connected();
        stats.stored_messages = self.shared.store().total_messages().unwrap_or(0);
        stats
    }

    /// Whether a client with this uaid has said hello and is still connected.
    pub fn is_connected(&self, uaid: &str) -> bool {
        self.shared.clients.is_connected(uaid)
    }

    /// Sets a server-side broadcast (Megaphone) version. Clients subscribed to `id` get an
    /// unsolicited `broadcast` message; later hellos see it in their delta.
    pub fn set_broadcast(&self, id: &str, version: &str) {
        lock(&self.shared.broadcasts).insert(id.to_owned(), version.to_owned());
        self.shared.clients.send_all(&Command::Broadcast {
            id: id.to_owned(),
            version: version.to_owned(),
        });
    }

    /// Drops a user record (channels and messages) as autopush does after too many stored
    /// messages: a connected client is closed with 1000 "SM", its next hello gets a new uaid.
    pub fn drop_user(&self, uaid: &str) -> Result<(), ServerError> {
        self.shared.drop_user(uaid)
    }

    /// Injects a notification as if POSTed to `endpoint_or_channel` (an endpoint URL, its
    /// token, or a channel ID), through the same validation, storage and delivery path
    /// minus HTTP and VAPID. For benchmarks.
    pub fn deliver(
        &self,
        endpoint_or_channel: &str,
        body: Vec<u8>,
        content_encoding: Option<&str>,
        ttl: u32,
    ) -> Result<DeliverOutcome, ServerError> {
        self.deliver_message(
            endpoint_or_channel,
            PushMessage {
                body,
                content_encoding: content_encoding.map(str::to_owned),
                ttl,
                ..PushMessage::default()
            },
        )
    }

    /// [`PushServer::deliver`] with every header an application server can set.
    pub fn deliver_message(
        &self,
        endpoint_or_channel: &str,
        msg: PushMessage,
    ) -> Result<DeliverOutcome, ServerError> {
        let (uaid, channel_id) = self.shared.resolve_target(endpoint_or_channel)?;
        self.shared.accept(&uaid, &channel_id, msg)
    }

    /// Stops the listeners and drops every connection without a close frame (as autopush
    /// does on shutdown), then waits for all tasks.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        tracing::info!("push server stopped");
    }
}

impl Drop for PushServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A wildcard bind address is reached through loopback in URLs.
fn url_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// Locks a std mutex, ignoring poisoning: every guarded value stays valid field by field.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first characters of a uaid, enough to tell connections apart in logs.
pub(crate) fn short(uaid: &str) -> &str {
    uaid.get(..8).unwrap_or(uaid)
}

fn random_id() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<16>())
}

/// Bytes from the system's secure random source (through aws-lc).
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // Fails only if the kernel's getrandom does, which nothing here can recover from.
    aws_lc_rs::rand::fill(&mut bytes).expect("system random source");
    bytes
}

/// SHA-256 of `data`: a v2 endpoint names its VAPID key by this hash.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// What an endpoint token names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TokenInfo {
    /// 32 lower-case hex digits.
    pub uaid: String,
    /// Lower-case dashed UUID.
    pub channel_id: String,
    /// SHA-256 of the VAPID key the channel was registered with (v2 endpoints).
    pub key_hash: Option<[u8; 32]>,
}

const TOKEN_MAC_LEN: usize = 16;

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn stats(&self) -> MutexGuard<'_, ServerStats> {
        lock(&self.stats)
    }

    /// The endpoint for a channel: `uaid ‖ channel ‖ [sha256(key)] ‖ HMAC`, base64url.
    /// Opaque to everyone else and unforgeable without the server secret.
    pub(crate) fn endpoint(
        &self,
        uaid: &str,
        channel_id: &str,
        key: Option<&[u8]>,
    ) -> Result<String, ServerError> {
        let uaid = uuid::Uuid::try_parse(uaid)
            .map(|u| u.into_bytes())
            .unwrap_or_default();
        let chid = uuid::Uuid::try_parse(channel_id)
            .map(|u| u.into_bytes())
            .unwrap_or_default();
        let mut token = Vec::with_capacity(80);
        token.extend_from_slice(&uaid);
        token.extend_from_slice(&chid);
        if let Some(key) = key {
            token.extend_from_slice(&sha256(key));
        }
        let mac = self.mac(&token);
        token.extend_from_slice(&mac.as_ref()[..TOKEN_MAC_LEN]);
        let version = if key.is_some() { 2 } else { 1 };
        Ok(format!(
            "{}/wpush/v{version}/{}",
            self.http_base,
            URL_SAFE_NO_PAD.encode(token)
        ))
    }

    fn mac(&self, data: &[u8]) -> hmac::Tag {
        hmac::sign(&self.mac_key, data)
    }

    /// Checks a token from a `/wpush/v<version>/` path; `None` for anything not ours.
    pub(crate) fn parse_token(&self, version: u8, token: &str) -> Option<TokenInfo> {
        if token.len() > 200 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).ok()?;
        let body_len = match version {
            1 => 32,
            2 => 64,
            _ => return None,
        };
        if raw.len() != body_len + TOKEN_MAC_LEN {
            return None;
        }
        let (body, mac) = raw.split_at(body_len);
        let expected = self.mac(body);
        aws_lc_rs::constant_time::verify_slices_are_equal(&expected.as_ref()[..TOKEN_MAC_LEN], mac)
            .ok()?;
        let uaid = uuid::Uuid::from_slice(&body[..16]).ok()?;
        let channel = uuid::Uuid::from_slice(&body[16..32]).ok()?;
        let key_hash = body.get(32..64).and_then(|h| <[u8; 32]>::try_from(h).ok());
        Some(TokenInfo {
            uaid: uaid.simple().to_string(),
            channel_id: channel.hyphenated().to_string(),
            key_hash,
        })
    }

    /// Checks a token whatever its version (autoendpoint decrypts it before it looks at
    /// the path's version); `key_hash` tells which one it is.
    pub(crate) fn parse_token_any(&self, token: &str) -> Option<TokenInfo> {
        self.parse_token(1, token)
            .or_else(|| self.parse_token(2, token))
    }

    /// `deliver`'s target: an endpoint URL, a bare token, or a channel ID.
    fn resolve_target(&self, target: &str) -> Result<(String, String), ServerError> {
        let target = target.trim();
        if let Ok(chid) = uuid::Uuid::try_parse(target) {
            let chid = chid.hyphenated().to_string();
            return match self.store().uaid_for_channel(&chid)? {
                Some(uaid) => Ok((uaid, chid)),
                None => Err(Rejection::new(410, Some(106), "No such subscription").into()),
            };
        }
        let (version, token) = if let Some((_, t)) = target.split_once("/wpush/v1/") {
            (Some(1), t)
        } else if let Some((_, t)) = target.split_once("/wpush/v2/") {
            (Some(2), t)
        } else {
            (None, target)
        };
        let info = match version {
            Some(v) => self.parse_token(v, token),
            None => self
                .parse_token(1, token)
                .or_else(|| self.parse_token(2, token)),
        };
        let info = info.ok_or_else(|| Rejection::new(404, Some(102), "Invalid token"))?;
        Ok((info.uaid, info.channel_id))
    }

    /// 410 errno 106 unless the user exists and has the channel registered (autopush
    /// answers "No such subscription" for both; it never sends 103 on this path).
    pub(crate) fn check_channel(&self, uaid: &str, channel_id: &str) -> Result<(), ServerError> {
        match self.store().lookup_channel(uaid, channel_id)? {
            ChannelLookup::Found => Ok(()),
            ChannelLookup::NoUser | ChannelLookup::NoChannel => {
                Err(Rejection::new(410, Some(106), "No such subscription").into())
            }
        }
    }

    /// The one path every push takes: validate, store, then hand to the connection.
    pub(crate) fn accept(
        &self,
        uaid: &str,
        channel_id: &str,
        msg: PushMessage,
    ) -> Result<DeliverOutcome, ServerError> {
        self.accept_with(uaid, channel_id, msg, false)
    }

    /// [`Shared::accept`] for the HTTP side, which knows whether the `TTL` header was
    /// negative: autoendpoint reports that (400 errno 114) only after the encryption
    /// headers pass.
    pub(crate) fn accept_with(
        &self,
        uaid: &str,
        channel_id: &str,
        msg: PushMessage,
        negative_ttl: bool,
    ) -> Result<DeliverOutcome, ServerError> {
        self.check_channel(uaid, channel_id)?;
        if msg.body.len() > self.opts.max_body {
            return Err(too_large().into());
        }
        let headers = headers::validate_push(&msg, negative_ttl)?;

        let message_id = random_id();
        let notification = Notification {
            channel_id: channel_id.to_owned(),
            version: message_id.clone(),
            data: (!msg.body.is_empty()).then(|| URL_SAFE_NO_PAD.encode(&msg.body)),
            headers,
        };
        let ttl = msg.ttl.min(MAX_TTL);
        if ttl == 0 {
            // Nothing to keep: deliver now or never.
            return Ok(
                if self
                    .clients
                    .send_to(uaid, Command::NotifyUntracked(notification))
                {
                    DeliverOutcome::Sent { message_id }
                } else {
                    DeliverOutcome::Dropped { message_id }
                },
            );
        }

        let now = now_ms();
        let mut store = self.store();
        store.insert_message(&NewMessage {
            uaid: uaid.to_owned(),
            notification: notification.clone(),
            topic: msg.topic,
            urgency: msg.urgency,
            ttl,
            expiry_ms: now.saturating_add(i64::from(ttl) * 1000),
            stored_at_ms: now,
        })?;
        drop(store);
        // As autopush, the endpoint never counts stored messages: the message limit is
        // checked only while a connected client reads from storage (ws.rs).
        if self.clients.send_to(uaid, Command::Notify(notification)) {
            return Ok(DeliverOutcome::Sent { message_id });
        }
        Ok(DeliverOutcome::Stored { message_id })
    }

    pub(crate) fn drop_user(&self, uaid: &str) -> Result<(), ServerError> {
        let dropped = self.store().delete_user(uaid)?;
        self.stats().uaid_resets += 1;
        tracing::debug!(uaid = short(uaid), dropped, "user record dropped");
        self.clients.send_to(
            uaid,
            Command::Close {
                code: 1000,
                reason: "SM".to_owned(),
            },
        );
        Ok(())
    }
}

/// autoendpoint's answer to a body over `max_data_bytes` (actix's payload overflow).
pub(crate) fn too_large() -> Rejection {
    Rejection::new(413, Some(104), "payload reached size limit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_round_trip_and_resist_forgery() {
        let dir = tempfile::tempdir().unwrap();
        let server = PushServer::start(ServerOptions::new(dir.path().join("s.db")))
            .await
            .unwrap();
        let shared = &server.shared;
        let uaid = "0123456789abcdef0123456789abcdef";
        let chid = "01234567-89ab-cdef-0123-456789abcdef";
        let v1 = shared.endpoint(uaid, chid, None).unwrap();
        let token = v1.rsplit('/').next().unwrap();
        assert!(v1.starts_with(&format!("{}/wpush/v1/", server.http_base())));
        let info = shared.parse_token(1, token).unwrap();
        assert_eq!((info.uaid.as_str(), info.channel_id.as_str()), (uaid, chid));
        assert_eq!(info.key_hash, None);
        assert_eq!(shared.parse_token(2, token), None);

        let key = [4u8; 65];
        let v2 = shared.endpoint(uaid, chid, Some(&key)).unwrap();
        let token2 = v2.rsplit('/').next().unwrap();
        assert!(v2.contains("/wpush/v2/"));
        assert_eq!(
            shared.parse_token(2, token2).unwrap().key_hash,
            Some(sha256(&key))
        );

        // Flip one bit anywhere: rejected.
        let mut raw = URL_SAFE_NO_PAD.decode(token).unwrap();
        raw[3] ^= 1;
        assert_eq!(shared.parse_token(1, &URL_SAFE_NO_PAD.encode(&raw)), None);
        for garbage in ["", "x", "!!!!", &"A".repeat(500)] {
            assert_eq!(shared.parse_token(1, garbage), None);
        }
        server.shutdown().await;
    }
}
