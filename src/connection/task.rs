//! The connection actor's loop: connect, hello, serve requests, ping, back off, repeat.
//!
//! One `select!` per state, one timer armed at a time: while connected and idle the only
//! deadline is the next ping, so an idle daemon sleeps.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::backoff::Backoff;
use super::handshake::{self, Ws};
use super::protocol::{self, ClientMessage, Notification, ServerMessage};
use super::{Command, ConnState, ConnStatus, Event, HelloParams, RequestError, Settings};
use crate::ids::ChannelId;

/// autopush closes a connection whose client sends two application pings (`{}`) within
/// 45 s; a liveness check sooner than that is a WebSocket ping frame, which it answers.
const APP_PING_MIN_INTERVAL: Duration = Duration::from_secs(45);
/// Notifications read from the socket but not yet taken by `push`, at most; past it, the
/// socket is left unread until `push` catches up.
const INBOX_MAX: usize = 256;

/// Frames larger than this from the server are refused (a hostile or broken server must
/// not make us buffer megabytes; real notifications are under 6 KiB).
const MAX_FRAME: usize = 256 * 1024;
/// Unregisters waiting for a connection, at most.
const MAX_QUEUED_UNREGISTERS: usize = 4096;

struct Request {
    channel: ChannelId,
    key: Option<String>,
    deadline: Instant,
    sent: bool,
    reply: oneshot::Sender<Result<String, RequestError>>,
}

/// Why a session ended.
enum End {
    Shutdown,
    /// Lost or failed; `was_up` if hello had succeeded.
    Lost {
        error: String,
        close_code: Option<u16>,
    },
    /// `Reconnect` was asked for: go again at once.
    Again,
}

/// What to do after handling a command while not connected.
enum Flow {
    Stay,
    ConnectNow,
}

pub(super) struct Actor {
    settings: Settings,
    tls: Option<Arc<rustls::ClientConfig>>,
    commands: mpsc::Receiver<Command>,
    hello: watch::Receiver<HelloParams>,
    events: mpsc::Sender<Event>,
    status: watch::Sender<ConnStatus>,
    cancel: CancellationToken,
    backoff: Backoff,
    requests: Vec<Request>,
    unregisters: VecDeque<(ChannelId, u16)>,
    /// See `serve`.
    inbox: VecDeque<Notification>,
    broadcast_subscribe: Option<std::collections::BTreeMap<String, String>>,
    /// Close code 4774: no automatic reconnects until a new request.
    hold: bool,
    online: bool,
}

impl Actor {
    pub(super) fn new(
        settings: Settings,
        tls: Option<Arc<rustls::ClientConfig>>,
        commands: mpsc::Receiver<Command>,
        hello: watch::Receiver<HelloParams>,
        events: mpsc::Sender<Event>,
        status: watch::Sender<ConnStatus>,
        cancel: CancellationToken,
    ) -> Actor {
        let backoff = Backoff::new(settings.retry_base, settings.retry_max, rand::random());
        Actor {
            settings,
            tls,
            commands,
            hello,
            events,
            status,
            cancel,
            backoff,
            requests: Vec::new(),
            unregisters: VecDeque::new(),
            inbox: VecDeque::new(),
            broadcast_subscribe: None,
            hold: false,
            online: true,
        }
    }

    pub(super) async fn run(mut self) {
        // Commands queued before the start (the network is down, say) count first.
        while let Ok(cmd) = self.commands.try_recv() {
            self.offline_command(cmd);
        }
        if !self.online && !self.wait_before_retry().await {
            return;
        }
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let span = info_span!("connection", attempt);
            let end = self.session().instrument(span).await;
            match end {
                End::Shutdown => break,
                End::Again => continue,
                End::Lost { error, close_code } => {
                    self.status.send_modify(|s| {
                        s.last_error = Some(error.clone());
                        s.connected_since = None;
                    });
                    if close_code == Some(protocol::CLOSE_NO_RECONNECT) {
                        warn!("server closed with 4774: not reconnecting until a new request");
                        self.hold = true;
                    }
                    if !self.wait_before_retry().await {
                        break;
                    }
                }
            }
        }
        for r in self.requests.drain(..) {
            let _ = r.reply.send(Err(RequestError::Shutdown));
        }
        self.set_state(ConnState::Offline, None);
    }

    fn set_state(&self, state: ConnState, next_retry: Option<SystemTime>) {
        let failures = self.backoff.failures();
        self.status.send_if_modified(|s| {
            let changed = s.state != state || s.next_retry != next_retry || s.failures != failures;
            s.state = state;
            s.next_retry = next_retry;
            s.failures = failures;
            if state == ConnState::Connected {
                s.connected_since = Some(SystemTime::now());
            }
            changed
        });
    }

    /// Wait out the back-off (or the 4774 hold, or being offline) while still taking
    /// commands. Returns `false` on shutdown.
    async fn wait_before_retry(&mut self) -> bool {
        let hold = self.hold || !self.online;
        let delay = if hold {
            None
        } else {
            Some(self.backoff.next_delay())
        };
        let wake = delay.map(|d| Instant::now() + d);
        match delay {
            Some(d) if d.is_zero() => return true,
            Some(d) => {
                debug!(delay_ms = d.as_millis() as u64, "backing off");
                self.set_state(ConnState::Backoff, Some(SystemTime::now() + d));
            }
            None => self.set_state(ConnState::Offline, None),
        }
        loop {
            let deadline = [wake, self.earliest_deadline()].into_iter().flatten().min();
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return false };
                    if let Flow::ConnectNow = self.offline_command(cmd) {
                        return true;
                    }
                }
                _ = sleep_or_never(deadline) => {
                    self.fail_expired(RequestError::Unavailable);
                    if let Some(w) = wake {
                        if Instant::now() >= w {
                            return true;
                        }
                    }
                }
            }
        }
    }

    /// A command that arrives while there is no usable connection.
    fn offline_command(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Register {
                channel,
                key,
                reply,
            } => {
                self.requests.push(Request {
                    channel,
                    key,
                    deadline: Instant::now() + self.settings.request_timeout,
                    sent: false,
                    reply,
                });
                if self.hold && self.online {
                    // A new request lifts the 4774 hold.
                    self.hold = false;
                    return Flow::ConnectNow;
                }
                Flow::Stay
            }
            Command::Unregister { channel, code } => {
                if self.unregisters.len() < MAX_QUEUED_UNREGISTERS {
                    self.unregisters.push_back((channel, code));
                }
                Flow::Stay
            }
            Command::Ack(updates) => {
                // The server redelivers what we could not acknowledge; `push` drops the
                // duplicates, so nothing is lost by dropping the ack here.
                debug!(count = updates.len(), "not connected: ack dropped");
                Flow::Stay
            }
            Command::BroadcastSubscribe(b) => {
                self.broadcast_subscribe = Some(b);
                Flow::Stay
            }
            Command::SetUrl(url) => {
                self.set_url(url);
                self.offline_command(Command::Reconnect)
            }
            Command::Reconnect => {
                self.hold = false;
                if self.online {
                    Flow::ConnectNow
                } else {
                    Flow::Stay
                }
            }
            Command::Network(online) => {
                self.online = online;
                if online {
                    self.hold = false;
                    Flow::ConnectNow
                } else {
                    self.set_state(ConnState::Offline, None);
                    Flow::Stay
                }
            }
        }
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.requests.iter().map(|r| r.deadline).min()
    }

    /// Fail every request whose deadline has passed; returns how many were sent ones.
    fn fail_expired(&mut self, err: RequestError) -> usize {
        let now = Instant::now();
        let mut sent_expired = 0;
        let mut i = 0;
        while i < self.requests.len() {
            if self.requests[i].deadline <= now {
                let r = self.requests.swap_remove(i);
                if r.sent {
                    sent_expired += 1;
                }
                warn!(channel = %r.channel, "request timed out");
                let _ = r.reply.send(Err(err.clone()));
            } else {
                i += 1;
            }
        }
        sent_expired
    }

    /// Another push server: forget what was queued for the old one; load TLS roots if needed.
    fn set_url(&mut self, url: String) {
        info!("moving to another push server");
        self.unregisters.clear();
        if url.starts_with("wss://") && self.tls.is_none() {
            self.tls = super::system_tls()
                .inspect_err(|e| warn!(error = %e, "no TLS roots for the new push server"))
                .ok();
        }
        self.settings.url = url;
        self.backoff.reset();
    }

    async fn connect(&self) -> Result<Ws, String> {
        let config = WebSocketConfig::default()
            .max_frame_size(Some(MAX_FRAME))
            .max_message_size(Some(MAX_FRAME));
        let fut = handshake::open(&self.settings.url, self.tls.as_ref(), config);
        match timeout(self.settings.request_timeout, fut).await {
            Err(_) => Err("connecting timed out".into()),
            Ok(Err(e)) => Err(format!("cannot connect: {e}")),
            Ok(Ok(ws)) => Ok(ws),
        }
    }

    /// One connection: from connect to its loss.
    async fn session(&mut self) -> End {
        self.set_state(ConnState::Connecting, None);
        let mut ws = tokio::select! {
            _ = self.cancel.cancelled() => return End::Shutdown,
            r = self.connect() => match r {
                Ok(ws) => ws,
                Err(error) => {
                    info!(%error, "connection failed");
                    return End::Lost { error, close_code: None };
                }
            }
        };

        // hello
        let params = self.hello.borrow().clone();
        let hello = ClientMessage::Hello {
            uaid: params.uaid.as_ref().map(|u| u.as_str().to_string()),
            use_webpush: true,
            broadcasts: params.broadcasts.clone(),
        };
        if let Err(e) = ws.send(Message::text(hello.to_json())).await {
            return End::Lost {
                error: format!("sending hello: {e}"),
                close_code: None,
            };
        }
        let hello_deadline = Instant::now() + self.settings.request_timeout;
        let (uaid, broadcasts) = loop {
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    close(&mut ws).await;
                    return End::Shutdown;
                }
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return End::Shutdown };
                    // Queued; sent once hello is done.
                    self.offline_command(cmd);
                }
                _ = sleep_until(hello_deadline) => {
                    return End::Lost { error: "no answer to hello".into(), close_code: None };
                }
                frame = ws.next() => match read_frame(frame) {
                    Frame::Text(text) => match protocol::parse_server_message(&text) {
                        Ok(ServerMessage::Hello { uaid, status: 200, broadcasts }) => break (uaid, broadcasts),
                        Ok(ServerMessage::Hello { status, .. }) => {
                            return End::Lost { error: format!("hello refused with status {status}"), close_code: None };
                        }
                        Ok(other) => debug!(?other, "ignoring a message before hello"),
                        Err(e) => warn!(error = %e, "ignoring a malformed server message"),
                    },
                    Frame::Other => {}
                    Frame::Closed { error, code } => return End::Lost { error, close_code: code },
                }
            }
        };
        info!(uaid = uaid.short(), "connected");
        self.backoff.reset();
        self.set_state(ConnState::Connected, None);
        self.status.send_modify(|s| s.last_error = None);
        let event = Event::Hello {
            uaid,
            sent: params.uaid,
            broadcasts,
        };
        if self.events.send(event).await.is_err() {
            return End::Shutdown;
        }

        // Pending work, re-sent after every hello.
        while let Some((channel, code)) = self.unregisters.pop_front() {
            let m = ClientMessage::Unregister {
                channel_id: channel.to_string(),
                code,
            };
            if let Err(e) = ws.send(Message::text(m.to_json())).await {
                return lost_send(e);
            }
        }
        for i in 0..self.requests.len() {
            let m = register_message(&self.requests[i]);
            self.requests[i].sent = true;
            if let Err(e) = ws.send(Message::text(m)).await {
                return lost_send(e);
            }
        }
        if let Some(b) = self.broadcast_subscribe.take() {
            let m = ClientMessage::BroadcastSubscribe { broadcasts: b };
            if let Err(e) = ws.send(Message::text(m.to_json())).await {
                return lost_send(e);
            }
        }

        self.connected(ws).await
    }

    async fn connected(&mut self, mut ws: Ws) -> End {
        let mut pinger = Pinger::default();
        let end = self.serve(&mut ws, &mut pinger).await;
        // Notifications read but not yet handed on still go to `push`: a TTL 0 message is
        // not stored by the server, so dropping it here would lose it.
        while let Some(n) = self.inbox.pop_front() {
            if self.events.send(Event::Notification(n)).await.is_err() {
                return End::Shutdown;
            }
        }
        end
    }

    /// The connected loop. Notifications go through `inbox`, so a busy `push` does not stop
    /// the socket from being read: the server's WebSocket pings (autopush-rs: a pong within
    /// 4 s) are answered while a burst is being committed.
    async fn serve(&mut self, ws: &mut Ws, pinger: &mut Pinger) -> End {
        let mut last_rx = Instant::now();
        // Channels unregistered on this connection: `push` says it again for every copy of
        // a message the server sends to an expired subscription, and a server that resends
        // in a loop would get an unregister for each.
        let mut unregistered = std::collections::HashSet::new();
        // A permit borrows its sender; this one is not `self`'s, so the branches may use `self`.
        let events = self.events.clone();
        loop {
            let ping_at = last_rx + self.settings.ping_interval;
            // While a ping waits for its answer, the ping time has passed and only the
            // deadline counts: a past `ping_at` in the timer would wake the loop at once,
            // again and again, until the answer or the deadline.
            let ping_timer = pinger.deadline.unwrap_or(ping_at);
            let timer = [Some(ping_timer), self.earliest_deadline()]
                .into_iter()
                .flatten()
                .min()
                .expect("ping_timer is always set");
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    close(ws).await;
                    return End::Shutdown;
                }
                permit = events.reserve(), if !self.inbox.is_empty() => {
                    let Ok(permit) = permit else { return End::Shutdown };
                    let n = self.inbox.pop_front().expect("inbox is not empty");
                    permit.send(Event::Notification(n));
                }
                frame = ws.next(), if self.inbox.len() < INBOX_MAX => {
                    last_rx = Instant::now();
                    pinger.deadline = None;
                    match read_frame(frame) {
                        Frame::Text(text) => {
                            if let Some(end) = self.server_message(&text).await {
                                return end;
                            }
                        }
                        Frame::Other => {}
                        Frame::Closed { error, code } => {
                            info!(%error, "connection lost");
                            return End::Lost { error, close_code: code };
                        }
                    }
                }
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else {
                        close(ws).await;
                        return End::Shutdown;
                    };
                    let msg = match cmd {
                        Command::Register { channel, key, reply } => {
                            unregistered.remove(&channel);
                            let r = Request {
                                channel,
                                key,
                                deadline: Instant::now() + self.settings.request_timeout,
                                sent: true,
                                reply,
                            };
                            let m = register_message(&r);
                            self.requests.push(r);
                            Some(Message::text(m))
                        }
                        Command::Unregister { channel, code } => {
                            let text = ClientMessage::Unregister { channel_id: channel.to_string(), code }.to_json();
                            if unregistered.insert(channel) {
                                Some(Message::text(text))
                            } else {
                                debug!("already unregistered on this connection");
                                None
                            }
                        }
                        Command::Ack(updates) => Some(Message::text(ClientMessage::Ack { updates }.to_json())),
                        Command::BroadcastSubscribe(broadcasts) => {
                            Some(Message::text(ClientMessage::BroadcastSubscribe { broadcasts }.to_json()))
                        }
                        Command::Reconnect => {
                            info!("reconnecting on request");
                            close(ws).await;
                            return End::Again;
                        }
                        Command::SetUrl(url) => {
                            close(ws).await;
                            self.set_url(url);
                            return End::Again;
                        }
                        Command::Network(true) => {
                            // Back online or resumed: check the connection now, unless a
                            // check is already under way (a resume and a network-up often
                            // come together).
                            pinger.start(Instant::now() + self.settings.request_timeout)
                        }
                        Command::Network(false) => {
                            self.online = false;
                            close(ws).await;
                            return End::Lost { error: "network is down".into(), close_code: None };
                        }
                    };
                    if let Some(msg) = msg {
                        if let Err(e) = ws.send(msg).await {
                            return lost_send(e);
                        }
                    }
                }
                _ = sleep_until(timer) => {
                    let now = Instant::now();
                    if self.fail_expired(RequestError::Timeout) > 0 {
                        close(ws).await;
                        return End::Lost { error: "a request timed out".into(), close_code: None };
                    }
                    if pinger.deadline.is_some_and(|d| d <= now) {
                        warn!("no answer to ping");
                        return End::Lost { error: "no answer to ping".into(), close_code: None };
                    }
                    if now >= ping_at {
                        if let Some(msg) = pinger.start(now + self.settings.request_timeout) {
                            debug!("idle: ping");
                            if let Err(e) = ws.send(msg).await {
                                return lost_send(e);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Handle one text frame from the server; `Some` ends the session.
    async fn server_message(&mut self, text: &str) -> Option<End> {
        let msg = match protocol::parse_server_message(text) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "ignoring a malformed server message");
                return None;
            }
        };
        match msg {
            ServerMessage::Register {
                channel_id,
                status,
                endpoint,
            } => {
                let Some(pos) = self
                    .requests
                    .iter()
                    .position(|r| r.sent && r.channel == channel_id)
                else {
                    warn!(channel = %channel_id, "register reply matches no request: ignored");
                    return None;
                };
                let r = self.requests.swap_remove(pos);
                let result = match (status, endpoint) {
                    (200, Some(e)) => Ok(e),
                    (s, _) => Err(RequestError::Rejected(s)),
                };
                let _ = r.reply.send(result);
            }
            ServerMessage::Unregister { channel_id, status } => {
                debug!(channel = %channel_id, status, "unregistered");
            }
            ServerMessage::Notification(n) => self.inbox.push_back(n),
            ServerMessage::Broadcast { broadcasts } => {
                if self
                    .events
                    .send(Event::Broadcast(broadcasts))
                    .await
                    .is_err()
                {
                    return Some(End::Shutdown);
                }
            }
            ServerMessage::Hello { .. } => debug!("ignoring a second hello"),
            ServerMessage::Pong => {}
        }
        None
    }
}

/// One liveness check at a time, and never two application pings within 45 s.
#[derive(Default)]
struct Pinger {
    /// The answer to the ping in flight is due by then; any frame from the server counts.
    deadline: Option<Instant>,
    last_app_ping: Option<Instant>,
}

impl Pinger {
    /// The frame that checks the connection, or `None` when a check is already waiting.
    fn start(&mut self, deadline: Instant) -> Option<Message> {
        if self.deadline.is_some() {
            return None;
        }
        self.deadline = Some(deadline);
        let now = Instant::now();
        if self
            .last_app_ping
            .is_some_and(|t| now.duration_since(t) < APP_PING_MIN_INTERVAL)
        {
            return Some(Message::Ping(Default::default()));
        }
        self.last_app_ping = Some(now);
        Some(Message::text(protocol::PING))
    }
}

fn register_message(r: &Request) -> String {
    ClientMessage::Register {
        channel_id: r.channel.to_string(),
        key: r.key.clone(),
    }
    .to_json()
}

fn lost_send(e: impl std::fmt::Display) -> End {
    End::Lost {
        error: format!("send failed: {e}"),
        close_code: None,
    }
}

enum Frame {
    Text(String),
    Other,
    Closed { error: String, code: Option<u16> },
}

fn read_frame(frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Frame {
    match frame {
        None => Frame::Closed {
            error: "connection closed".into(),
            code: None,
        },
        Some(Err(e)) => Frame::Closed {
            error: format!("connection error: {e}"),
            code: None,
        },
        Some(Ok(Message::Text(t))) => Frame::Text(t.to_string()),
        Some(Ok(Message::Close(f))) => {
            let code = f.as_ref().map(|f| u16::from(f.code));
            let reason = f.map(|f| f.reason.to_string()).unwrap_or_default();
            Frame::Closed {
                error: format!(
                    "server closed the connection ({} {reason})",
                    code.unwrap_or(1005)
                ),
                code,
            }
        }
        Some(Ok(Message::Binary(_))) => {
            warn!("ignoring a binary frame");
            Frame::Other
        }
        // Pings are answered by tungstenite as long as we keep reading.
        Some(Ok(_)) => Frame::Other,
    }
}

/// The closing handshake: our close frame, then the server's, read until the stream
/// ends (autopush-rs logs a connection dropped before its answer as an I/O error).
async fn close(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let handshake = async {
        ws.close(Some(frame)).await?;
        while ws.next().await.transpose()?.is_some() {}
        Ok::<_, tokio_tungstenite::tungstenite::Error>(())
    };
    let _ = timeout(Duration::from_secs(1), handshake).await;
}

async fn sleep_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}
