//! The WebSocket side (autoconnect): one task per connection owns its socket, its timers
//! and its delivery state; others reach it only through its [`Command`] channel.
//!
//! It must not trust the client: every frame is parsed into typed messages at the edge,
//! anything unexpected closes the connection the way autopush-rs does (1011 "Json" for
//! what does not parse, 1011 "SM" for what the state machine refuses, 1002 "Protocol",
//! 1003 "UnsupportedMessage"), and frames are capped at 64 KiB. See `docs/push-server.md`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HsRequest, Response as HsResponse,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::faults::Step;
use super::registry::Command;
use super::store::Notification;
use super::{lock, now_ms, short, Shared, BATCH_SIZE, MAX_ACK_RECORDS};

mod messages;
mod requests;

use messages::{
    code, from_obj, parse_client_message, Ack, BroadcastSubscribe, Hello, Nack, Register,
    Unregister,
};

/// As autopush (actix-http's default): a frame over 64 KiB closes 1002 "Protocol".
const MAX_FRAME: usize = 64 << 10;
/// A client that stops reading must not pin a task forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection hangs, unread, when it ignores a WebSocket ping (fault injection).
const HANG_FOR: Duration = Duration::from_secs(30);
/// How long a closing handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How many acked versions a connection remembers (see `Conn::recently_acked`).
const RECENTLY_ACKED: usize = 64;

type Ws = WebSocketStream<TcpStream>;

/// Accepts WebSocket connections until cancelled.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, _peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "WebSocket accept failed");
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if shared.faults.as_ref().is_some_and(|f| f.on_accept()) {
            tracing::debug!("refusing connection (fault injection)");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (id, rx) = shared.clients.add();
        let span = tracing::debug_span!("push_conn", id, uaid = tracing::field::Empty);
        let conn = Conn::new(Arc::clone(&shared), id, rx, cancel.clone());
        tracker.spawn(conn.run(stream).instrument(span));
    }
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The peer closed or the socket failed: nothing more to send.
    Gone,
    /// The peer sent a close frame; tungstenite has queued the answer.
    PeerClosed,
    /// Send a close frame with this code and reason.
    Close(u16, String),
    /// Cut the TCP stream without a close frame (shutdown, fault injection).
    Drop,
    /// Fault injection: stop reading (no pong goes out), then drop after a while.
    Hang,
}

/// A text frame that does not deserialize as a client message: autopush's
/// `WSErrorKind::Json`.
fn json_error(what: &str) -> End {
    tracing::debug!(what, "unparsable message from client");
    End::Close(1011, "Json".to_owned())
}

/// A message the state machine refuses: autopush's `WSErrorKind::Sm`.
fn sm_error(what: &str) -> End {
    tracing::debug!(what, "invalid message from client");
    End::Close(1011, "SM".to_owned())
}

/// Storage failures are state-machine errors in autopush too.
fn internal(e: impl std::fmt::Display) -> End {
    tracing::warn!(error = %e, "push server storage failed");
    End::Close(1011, "SM".to_owned())
}

struct Conn {
    shared: Arc<Shared>,
    id: u64,
    rx: mpsc::UnboundedReceiver<Command>,
    cancel: CancellationToken,
    uaid: Option<String>,
    /// Sent on this connection and not yet acknowledged: version → channel (autopush's
    /// unacked direct and stored notifications together).
    in_flight: HashMap<String, String>,
    /// The current batch from storage still waiting for acks: version → has a topic.
    batch: HashMap<String, bool>,
    /// Messages of the current batch that were acked but, having no topic, stay stored
    /// until the whole batch is acked (autopush moves its read pointer only then, so a
    /// partly acked batch comes back whole after a reconnect).
    batch_acked: Vec<String>,
    /// Still reading from storage (autopush's `check_storage` flag): when nothing is
    /// left unacknowledged, the next batch is read.
    draining: bool,
    /// Versions acked lately on this connection. A live `Notify` for a message that a
    /// storage batch already delivered (and the client acked) can still be queued; this
    /// keeps it from going out twice.
    recently_acked: VecDeque<String>,
    /// Messages sent from storage since storage was last found empty (autopush's
    /// `sent_from_storage`, checked against the message limit).
    sent_from_storage: usize,
    last_client_ping: Option<Instant>,
    /// Broadcast id → the version this client has.
    broadcast_subs: HashMap<String, String>,
    next_server_ping: Instant,
    pong_deadline: Option<Instant>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.clients.remove(self.id);
    }
}

impl Conn {
    fn new(
        shared: Arc<Shared>,
        id: u64,
        rx: mpsc::UnboundedReceiver<Command>,
        cancel: CancellationToken,
    ) -> Self {
        Conn {
            shared,
            id,
            rx,
            cancel,
            uaid: None,
            in_flight: HashMap::new(),
            batch: HashMap::new(),
            batch_acked: Vec::new(),
            draining: false,
            recently_acked: VecDeque::new(),
            sent_from_storage: 0,
            last_client_ping: None,
            broadcast_subs: HashMap::new(),
            next_server_ping: Instant::now(),
            pong_deadline: None,
        }
    }

    async fn run(mut self, stream: TcpStream) {
        let started = Instant::now();
        let hello_deadline = started + self.shared.opts.hello_timeout;
        let config = WebSocketConfig::default()
            .max_frame_size(Some(MAX_FRAME))
            .max_message_size(Some(MAX_FRAME));
        // As autopush-rs: the upgrade is accepted whether or not the client asks for the
        // `push-notification` subprotocol, and no subprotocol is named in the answer.
        let handshake =
            tokio_tungstenite::accept_hdr_async_with_config(stream, only_root, Some(config));
        let mut ws = tokio::select! {
            _ = self.cancel.cancelled() => return,
            r = timeout(self.shared.opts.hello_timeout, handshake) => match r {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "WebSocket handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("WebSocket handshake timed out");
                    return;
                }
            },
        };
        lock(&self.shared.stats).connections += 1;

        let end = match self.hello_phase(&mut ws, hello_deadline).await {
            Ok(()) => self.main_loop(&mut ws).await.err().unwrap_or(End::Gone),
            Err(end) => end,
        };
        match end {
            End::Gone => tracing::debug!("client went away"),
            End::PeerClosed => {
                tracing::debug!("client closed the connection");
                // Reading on flushes tungstenite's close reply and sees the stream end.
                let drain = async { while let Some(Ok(_)) = ws.next().await {} };
                let _ = timeout(CLOSE_TIMEOUT, drain).await;
            }
            End::Drop => tracing::debug!("dropping connection"),
            End::Hang => {
                tracing::debug!("hanging (fault injection)");
                tokio::select! {
                    _ = self.cancel.cancelled() => {}
                    _ = sleep(HANG_FOR) => {}
                }
            }
            End::Close(code, reason) => {
                tracing::debug!(code, reason = %reason, "closing connection");
                self.close(&mut ws, code, &reason).await;
            }
        }
        // Dropping `ws` closes the TCP stream; `Drop for Conn` leaves the registry.
    }

    /// Sends a close frame and waits briefly for the client's answer, so the frame is not
    /// lost to a reset.
    async fn close(&self, ws: &mut Ws, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let drain = async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        };
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = timeout(CLOSE_TIMEOUT, drain) => {}
        }
    }

    async fn send(&self, ws: &mut Ws, text: String) -> Result<(), End> {
        match timeout(SEND_TIMEOUT, ws.send(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "send failed");
                Err(End::Gone)
            }
            Err(_) => {
                tracing::debug!("send timed out; client not reading");
                Err(End::Drop)
            }
        }
    }

    /// Waits for the client's first message, which must be a hello.
    async fn hello_phase(&mut self, ws: &mut Ws, deadline: Instant) -> Result<(), End> {
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(End::Drop),
                _ = sleep_until(deadline) => {
                    return Err(End::Close(1011, "HandshakeTimeout".to_owned()));
                }
                Some(cmd) = self.rx.recv() => self.on_command(ws, cmd).await?,
                frame = ws.next() => {
                    // As autopush: the first frame must be text; a Ping or Pong (or any
                    // other non-text frame) closes 1003.
                    if let Some(Ok(Message::Ping(_) | Message::Pong(_))) = frame {
                        return Err(unsupported());
                    }
                    let Some(text) = self.on_frame(frame)? else { continue };
                    let (kind, obj) = parse_client_message(&text)?;
                    if kind != "hello" {
                        return Err(sm_error("first message is not hello"));
                    }
                    return self.on_hello(ws, from_obj(obj)?).await;
                }
            }
        }
    }

    async fn main_loop(&mut self, ws: &mut Ws) -> Result<(), End> {
        self.next_server_ping = Instant::now() + self.shared.opts.server_ping_interval;
        loop {
            let far = Instant::now() + Duration::from_secs(86_400);
            let pong_deadline = self.pong_deadline;
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(End::Drop),
                Some(cmd) = self.rx.recv() => self.on_command(ws, cmd).await?,
                frame = ws.next() => {
                    if let Some(text) = self.on_frame(frame)? {
                        self.on_text(ws, &text).await?;
                    }
                }
                _ = sleep_until(self.next_server_ping), if pong_deadline.is_none() => {
                    if timeout(SEND_TIMEOUT, ws.send(Message::Ping(Default::default())))
                        .await
                        .map_or(true, |r| r.is_err())
                    {
                        return Err(End::Gone);
                    }
                    self.pong_deadline = Some(Instant::now() + self.shared.opts.pong_timeout);
                }
                _ = sleep_until(pong_deadline.unwrap_or(far)), if pong_deadline.is_some() => {
                    return Err(End::Close(1011, "PongTimeout".to_owned()));
                }
            }
        }
    }

    /// Classifies one read: `Some(text)` for a text frame to handle.
    fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Result<Option<String>, End> {
        match frame {
            None => Err(End::Gone),
            Some(Ok(Message::Text(text))) => Ok(Some(text.as_str().to_owned())),
            Some(Ok(Message::Binary(_))) => Err(unsupported()),
            Some(Ok(Message::Pong(_))) => {
                if self.pong_deadline.take().is_some() {
                    self.next_server_ping = Instant::now() + self.shared.opts.server_ping_interval;
                }
                Ok(None)
            }
            // tungstenite answers pings and close frames itself while we keep reading.
            Some(Ok(Message::Ping(_))) => {
                lock(&self.shared.stats).ws_pings += 1;
                if self
                    .shared
                    .faults
                    .as_ref()
                    .is_some_and(|f| f.ignore_pings())
                {
                    // The pong goes out with the next read: a server that ignores pings
                    // reads no more.
                    return Err(End::Hang);
                }
                Ok(None)
            }
            Some(Ok(Message::Frame(_))) => Err(unsupported()),
            Some(Ok(Message::Close(_))) => Err(End::PeerClosed),
            // autopush (actix) reports oversize frames, invalid UTF-8 in a text frame
            // and protocol violations alike: 1002 "Protocol".
            Some(Err(WsError::Capacity(e))) => {
                tracing::debug!(error = %e, "frame too large");
                Err(End::Close(1002, "Protocol".to_owned()))
            }
            Some(Err(WsError::Utf8(_))) => Err(End::Close(1002, "Protocol".to_owned())),
            Some(Err(WsError::Protocol(e))) => {
                tracing::debug!(error = %e, "WebSocket protocol error");
                Err(End::Close(1002, "Protocol".to_owned()))
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "read failed");
                Err(End::Gone)
            }
        }
    }

    async fn on_command(&mut self, ws: &mut Ws, cmd: Command) -> Result<(), End> {
        match cmd {
            Command::Close { code, reason } => Err(End::Close(code, reason)),
            Command::Raw(text) => self.send(ws, text).await,
            Command::Notify(n) => {
                if self.uaid.is_none()
                    || self.in_flight.contains_key(&n.version)
                    || self.recently_acked.contains(&n.version)
                    || self.batch_acked.contains(&n.version)
                {
                    return Ok(());
                }
                self.send_notification(ws, n).await
            }
            Command::NotifyUntracked(n) => {
                if self.uaid.is_none() {
                    return Ok(());
                }
                self.send(ws, n.to_json()).await?;
                lock(&self.shared.stats).notifications_sent += 1;
                if self.fault(Step::Notification) {
                    return Err(End::Drop);
                }
                Ok(())
            }
            Command::Broadcast { id, version } => {
                if self.uaid.is_none() {
                    return Ok(());
                }
                match self.broadcast_subs.get_mut(&id) {
                    Some(have) if *have != version => {
                        have.clone_from(&version);
                        let msg = json!({"messageType": "broadcast", "broadcasts": {id: version}});
                        self.send(ws, msg.to_string()).await
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    async fn send_notification(&mut self, ws: &mut Ws, n: Notification) -> Result<(), End> {
        self.in_flight
            .insert(n.version.clone(), n.channel_id.clone());
        self.send(ws, n.to_json()).await?;
        lock(&self.shared.stats).notifications_sent += 1;
        if self.fault(Step::Notification) {
            return Err(End::Drop);
        }
        Ok(())
    }

    fn fault(&self, step: Step) -> bool {
        self.shared
            .faults
            .as_ref()
            .is_some_and(|f| f.take_drop(step))
    }

    /// Waits out an injected reply delay (still dropping at shutdown).
    async fn reply_delay(&self) -> Result<(), End> {
        let delay = self.shared.faults.as_ref().and_then(|f| f.reply_delay());
        if let Some(delay) = delay {
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(End::Drop),
                _ = sleep(delay) => {}
            }
        }
        Ok(())
    }

    fn omit_replies(&self) -> bool {
        self.shared
            .faults
            .as_ref()
            .is_some_and(|f| f.omit_replies())
    }

    async fn on_hello(&mut self, ws: &mut Ws, hello: Hello) -> Result<(), End> {
        if self.fault(Step::Hello) {
            return Err(End::Drop);
        }
        lock(&self.shared.stats).hellos += 1;

        // Invalid uaids are treated as absent; valid ones must name a stored user.
        let requested = hello
            .uaid
            .as_deref()
            .and_then(|u| uuid::Uuid::try_parse(u).ok())
            .map(|u| u.simple().to_string());
        let force_new = self
            .shared
            .faults
            .as_ref()
            .is_some_and(|f| f.take_force_new_uaid());
        let existing = match requested {
            Some(uaid) if force_new => {
                self.shared.store().delete_user(&uaid).map_err(internal)?;
                None
            }
            Some(uaid) => self
                .shared
                .store()
                .user_exists(&uaid)
                .map_err(internal)?
                .then_some(uaid),
            None => None,
        };
        let uaid = existing.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        tracing::Span::current().record("uaid", short(&uaid));
        tracing::debug!(reassigned = hello.uaid.is_some_and(|u| u != uaid), "hello");

        let broadcasts = self.subscribe_broadcasts(hello.broadcasts.unwrap_or_default());
        self.reply_delay().await?;
        self.shared.clients.bind(self.id, &uaid);
        self.uaid = Some(uaid.clone());
        let reply = json!({
            "messageType": "hello",
            "uaid": uaid,
            "status": 200,
            "use_webpush": true,
            "broadcasts": broadcasts,
        });
        self.send(ws, reply.to_string()).await?;
        self.draining = true;
        self.check_storage(ws).await
    }

    /// Records the client's broadcast versions and returns what differs from the server's:
    /// changed versions, plus `errors` for ids the server does not know.
    fn subscribe_broadcasts(&mut self, requested: HashMap<String, String>) -> Map<String, Value> {
        let table = lock(&self.shared.broadcasts);
        let mut delta = Map::new();
        let mut errors = Map::new();
        for (id, version) in requested.into_iter().take(1000) {
            match table.get(&id) {
                Some(current) => {
                    if *current != version {
                        delta.insert(id.clone(), current.clone().into());
                    }
                    self.broadcast_subs.insert(id, current.clone());
                }
                None => {
                    errors.insert(id, "Broadcast not found".into());
                }
            }
        }
        if !errors.is_empty() {
            delta.insert("errors".to_owned(), Value::Object(errors));
        }
        delta
    }

    /// Reads the next batch of stored messages and sends it (autopush's
    /// `check_storage_advance` and `check_msg_limit`).
    async fn check_storage(&mut self, ws: &mut Ws) -> Result<(), End> {
        let Some(uaid) = self.uaid.clone() else {
            return Ok(());
        };
        let exclude: HashSet<String> = self.in_flight.keys().cloned().collect();
        let batch = self
            .shared
            .store()
            .fetch_batch(&uaid, now_ms(), &exclude, BATCH_SIZE)
            .map_err(internal)?;
        if batch.is_empty() {
            self.draining = false;
            self.sent_from_storage = 0;
            return Ok(());
        }
        self.sent_from_storage += batch.len();
        if self.sent_from_storage > self.shared.opts.max_stored_messages {
            tracing::info!("client read too many messages from storage; dropping its user record");
            self.shared.store().delete_user(&uaid).map_err(internal)?;
            lock(&self.shared.stats).uaid_resets += 1;
            return Err(End::Close(1000, "SM".to_owned()));
        }
        tracing::debug!(count = batch.len(), "sending stored messages");
        self.batch = batch
            .iter()
            .map(|(n, topic)| (n.version.clone(), *topic))
            .collect();
        for (n, _) in batch {
            self.send_notification(ws, n).await?;
        }
        Ok(())
    }

    /// Once nothing sent is unacknowledged (direct messages included, as autopush
    /// waits for those too), the batch is done: its acked messages leave storage and
    /// the next batch is read.
    async fn after_acks(&mut self, ws: &mut Ws) -> Result<(), End> {
        if !self.in_flight.is_empty() || !self.draining {
            return Ok(());
        }
        if let Some(uaid) = self.uaid.clone() {
            let acked = std::mem::take(&mut self.batch_acked);
            let store = self.shared.store();
            for version in &acked {
                store.delete_message(&uaid, version).map_err(internal)?;
            }
        }
        self.batch.clear();
        self.check_storage(ws).await
    }

    async fn on_text(&mut self, ws: &mut Ws, text: &str) -> Result<(), End> {
        let (kind, obj) = parse_client_message(text)?;
        match kind.as_str() {
            "register" => self.on_register(ws, from_obj(obj)?).await,
            "unregister" => self.on_unregister(ws, from_obj(obj)?).await,
            "ack" => self.on_ack(ws, from_obj(obj)?).await,
            "hello" => {
                let _: Hello = from_obj(obj)?;
                Err(sm_error("second hello"))
            }
            "nack" => {
                let nack: Nack = from_obj(obj)?;
                lock(&self.shared.stats)
                    .nacks
                    .push((truncate(&nack.version), code(nack.code, 0)));
                Ok(())
            }
            "ping" => self.on_ping(ws).await,
            "broadcast_subscribe" => {
                let sub: BroadcastSubscribe = from_obj(obj)?;
                let delta = self.subscribe_broadcasts(sub.broadcasts);
                if delta.is_empty() {
                    return Ok(());
                }
                let msg = json!({"messageType": "broadcast", "broadcasts": delta});
                self.send(ws, msg.to_string()).await
            }
            _ => Err(json_error("unknown messageType")),
        }
    }
}

/// Only `GET /` upgrades, as in autopush-rs; another path gets an empty 404.
#[allow(clippy::result_large_err)] // the signature is tungstenite's
fn only_root(req: &HsRequest, resp: HsResponse) -> Result<HsResponse, ErrorResponse> {
    if req.uri().path() == "/" {
        return Ok(resp);
    }
    let mut err = ErrorResponse::new(None);
    *err.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
    Err(err)
}

/// Binary, fragmented or other frames autopush does not handle.
fn unsupported() -> End {
    End::Close(1003, "UnsupportedMessage".to_owned())
}

/// Bounds what a client can make us remember in stats.
fn truncate(s: &str) -> String {
    s.chars().take(128).collect()
}
