//! The local push server behaves like autopush-rs 1.83.1 (docs/push-server.md): driven here
//! by a raw WebSocket client and plain HTTP POSTs, the way Firefox and application servers
//! do.
//!
//! Every wait has a timeout; "nothing arrives" is checked with a short quiet window.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use webpushd::server::{DeliverOutcome, PushServer, ServerOptions, Step};
use webpushd::vapid::{self, VapidKey};

const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing else arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

const CH1: &str = "8f5e7a4c-2b3d-4e6f-9a1b-0c2d3e4f5a6b";
const CH2: &str = "11111111-2222-4333-8444-555555555555";

// ---------------------------------------------------------------------------------------
// Harness

struct Harness {
    server: PushServer,
    opts: ServerOptions,
    _dir: tempfile::TempDir,
}

async fn start() -> Harness {
    start_with(|_| {}).await
}

async fn start_with(adjust: impl FnOnce(&mut ServerOptions)) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = ServerOptions::new(dir.path().join("push-server.sqlite"));
    opts.fault_injection = true;
    adjust(&mut opts);
    let server = PushServer::start(opts.clone())
        .await
        .expect("server starts");
    Harness {
        server,
        opts,
        _dir: dir,
    }
}

impl Harness {
    async fn connect(&self) -> Client {
        Client::connect(&self.server.ws_url()).await
    }

    /// A client that said hello and registered `channel`; returns it with its endpoint.
    async fn subscribed(&self, channel: &str, key: Option<&VapidKey>) -> (Client, String, String) {
        let mut c = self.connect().await;
        let uaid = c.hello(None).await;
        let reply = c.register(channel, key).await;
        assert_eq!(reply["status"], 200, "{reply}");
        let endpoint = reply["pushEndpoint"].as_str().expect("endpoint").to_owned();
        (c, uaid, endpoint)
    }

    async fn wait_until(&self, what: &str, cond: impl Fn(&PushServer) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(&self.server) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[derive(Debug, PartialEq)]
enum Ending {
    Closed(u16, String),
    /// The TCP stream ended without a close frame.
    Dropped,
}

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// A client that asks for no subprotocol (autopush-rs accepts it, and names none).
    async fn connect(url: &str) -> Client {
        let (ws, resp) = timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        assert_eq!(resp.headers().get("sec-websocket-protocol"), None);
        Client { ws }
    }

    async fn send(&mut self, msg: Value) {
        self.send_text(&msg.to_string()).await;
    }

    async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// The next text frame, or `None` if nothing comes within `within`.
    async fn recv_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let frame = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.ws.next(),
            )
            .await
            .ok()?;
            match frame {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("server sends JSON"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn recv(&mut self) -> Value {
        self.recv_within(WAIT).await.expect("a message in time")
    }

    async fn recv_type(&mut self, kind: &str) -> Value {
        let msg = self.recv().await;
        assert_eq!(msg["messageType"], kind, "{msg}");
        msg
    }

    async fn assert_quiet(&mut self) {
        if let Some(msg) = self.recv_within(QUIET).await {
            panic!("expected nothing, got {msg}");
        }
    }

    /// Reads until the connection ends; text frames on the way are skipped.
    async fn ending(&mut self) -> Ending {
        let deadline = Instant::now() + WAIT;
        loop {
            let frame = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.ws.next(),
            )
            .await
            .expect("connection ends in time");
            match frame {
                Some(Ok(Message::Close(Some(f)))) => {
                    return Ending::Closed(f.code.into(), f.reason.as_str().to_owned())
                }
                Some(Ok(Message::Close(None))) => return Ending::Closed(1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ending::Dropped,
            }
        }
    }

    async fn hello(&mut self, uaid: Option<&str>) -> String {
        let mut msg = json!({"messageType": "hello", "use_webpush": true});
        if let Some(uaid) = uaid {
            msg["uaid"] = uaid.into();
        }
        self.send(msg).await;
        let reply = self.recv_type("hello").await;
        assert_eq!(reply["status"], 200);
        assert_eq!(reply["use_webpush"], true);
        assert!(reply["broadcasts"].is_object(), "{reply}");
        reply["uaid"].as_str().expect("uaid").to_owned()
    }

    async fn register(&mut self, channel: &str, key: Option<&VapidKey>) -> Value {
        let mut msg = json!({"messageType": "register", "channelID": channel});
        if let Some(key) = key {
            msg["key"] = URL_SAFE_NO_PAD.encode(key.public_raw()).into();
        }
        self.send(msg).await;
        let reply = self.recv_type("register").await;
        assert_eq!(reply["channelID"], channel);
        reply
    }

    async fn ack(&mut self, notification: &Value) {
        self.send(json!({"messageType": "ack", "updates": [{
            "channelID": notification["channelID"],
            "version": notification["version"],
            "code": 100,
        }]}))
        .await;
    }
}

fn is_uaid(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// ---------------------------------------------------------------------------------------
// A tiny HTTP client, as an application server

struct HttpResponse {
    status: u16,
    headers: hyper::HeaderMap,
    json: Value,
}

async fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let uri: hyper::Uri = url.parse().expect("url");
    let host = uri.host().expect("host").to_owned();
    let port = uri.port_u16().expect("port");
    let stream = TcpStream::connect((host.as_str(), port))
        .await
        .expect("tcp");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(uri.path())
        .header("host", format!("{host}:{port}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let resp = timeout(WAIT, sender.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    HttpResponse {
        status,
        headers,
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
    }
}

async fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    http("POST", url, headers, body).await
}

/// An aes128gcm push with TTL 60.
async fn push(endpoint: &str, body: &[u8]) -> HttpResponse {
    post(
        endpoint,
        &[("TTL", "60"), ("Content-Encoding", "aes128gcm")],
        body,
    )
    .await
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn vapid_header(key: &VapidKey, aud: &str) -> String {
    vapid_header_exp(key, aud, now_secs() + 3600)
}

fn vapid_header_exp(key: &VapidKey, aud: &str, exp: u64) -> String {
    vapid::authorization_header(key, aud, "mailto:test@example.com", exp).expect("sign")
}

// ---------------------------------------------------------------------------------------
// Hello

#[tokio::test]
async fn hello_assigns_a_uaid_and_keeps_it_for_a_registered_client() {
    let h = start().await;
    let (mut c, uaid, _) = h.subscribed(CH1, None).await;
    assert!(is_uaid(&uaid), "{uaid}");
    drop(c.ws.close(None).await);

    let mut c = h.connect().await;
    assert_eq!(c.hello(Some(&uaid)).await, uaid);

    // Invalid and unknown uaids silently get a new one.
    let mut c2 = h.connect().await;
    let fresh = c2.hello(Some("not-a-uaid")).await;
    assert!(is_uaid(&fresh) && fresh != uaid);
    let mut c3 = h.connect().await;
    let unknown = "0123456789abcdef0123456789abcdef";
    let other = c3.hello(Some(unknown)).await;
    assert!(is_uaid(&other) && other != unknown);
    h.wait_until("three clients", |s| s.stats().connected_clients == 3)
        .await;
    assert_eq!(h.server.stats().hellos, 4);
}

/// autopush's `ClientMessage` is a serde enum: `HELLO` or `Register` is no message type.
#[tokio::test]
async fn message_type_is_matched_case_sensitively() {
    let h = start().await;
    let mut c = h.connect().await;
    c.send(json!({"messageType": "HELLO", "use_webpush": true}))
        .await;
    assert_eq!(c.ending().await, Ending::Closed(1011, "Json".into()));

    let mut c = h.connect().await;
    c.hello(None).await;
    c.send(json!({"messageType": "Register", "channelID": CH1}))
        .await;
    assert_eq!(c.ending().await, Ending::Closed(1011, "Json".into()));
}

#[tokio::test]
async fn first_message_must_be_hello_within_the_timeout() {
    let h = start_with(|o| o.hello_timeout = Duration::from_millis(300)).await;
    let mut c = h.connect().await;
    assert_eq!(
        c.ending().await,
        Ending::Closed(1011, "HandshakeTimeout".into())
    );

    // A message that parses but is not a hello is refused by the state machine.
    let mut c = h.connect().await;
    c.send(json!({"messageType": "register", "channelID": CH1}))
        .await;
    assert_eq!(c.ending().await, Ending::Closed(1011, "SM".into()));
    let mut c = h.connect().await;
    c.send_text("{}").await;
    assert_eq!(c.ending().await, Ending::Closed(1011, "SM".into()));
    // One that does not parse is a JSON error.
    let mut c = h.connect().await;
    c.send_text("hello?").await;
    assert_eq!(c.ending().await, Ending::Closed(1011, "Json".into()));
    // A non-UUID in the hello's channelIDs fails to parse too.
    let mut c = h.connect().await;
    c.send(json!({"messageType": "hello", "use_webpush": true, "channelIDs": ["nope"]}))
        .await;
    assert_eq!(c.ending().await, Ending::Closed(1011, "Json".into()));
    // A WebSocket ping (or pong) as the first frame is unsupported.
    let mut c = h.connect().await;
    c.ws.send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .unwrap();
    assert_eq!(
        c.ending().await,
        Ending::Closed(1003, "UnsupportedMessage".into())
    );
    let mut c = h.connect().await;
    c.ws.send(Message::Pong(Bytes::new())).await.unwrap();
    assert_eq!(
        c.ending().await,
        Ending::Closed(1003, "UnsupportedMessage".into())
    );
}

/// The head of the server's answer to a raw upgrade request for `path` (lower-cased).
async fn raw_upgrade(h: &Harness, path: &str, extra_headers: &str) -> String {
    let addr = h
        .server
        .ws_url()
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_owned();
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         {extra_headers}\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = timeout(WAIT, tcp.read(&mut byte)).await.unwrap().unwrap();
        assert_eq!(
            n,
            1,
            "answer cut short: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.push(byte[0]);
    }
    String::from_utf8(answer).unwrap().to_ascii_lowercase()
}

/// Firefox asks for `push-notification`; autopush-rs upgrades and names no subprotocol
/// (a strict RFC 6455 client then fails the handshake, browsers do not).
#[tokio::test]
async fn handshake_with_the_push_subprotocol_names_none_back() {
    let h = start().await;
    let answer = raw_upgrade(&h, "/", "Sec-WebSocket-Protocol: push-notification\r\n").await;
    assert!(answer.starts_with("http/1.1 101"), "{answer}");
    assert!(
        answer.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{answer}"
    );
    assert!(!answer.contains("sec-websocket-protocol"), "{answer}");
}

/// autopush-rs upgrades only `GET /`.
#[tokio::test]
async fn only_the_root_path_upgrades() {
    let h = start().await;
    let answer = raw_upgrade(&h, "/push", "").await;
    assert!(answer.starts_with("http/1.1 404"), "{answer}");
    let answer = raw_upgrade(&h, "/", "").await;
    assert!(answer.starts_with("http/1.1 101"), "{answer}");
}

// ---------------------------------------------------------------------------------------
// Register, deliver, ack

#[tokio::test]
async fn push_is_delivered_with_exact_data_and_ack_removes_it() {
    let h = start().await;
    let (mut c, _, endpoint) = h.subscribed(CH1, None).await;
    assert!(
        endpoint.starts_with(&format!("{}/wpush/v1/", h.server.http_base())),
        "{endpoint}"
    );

    let body = b"\x00\x01binary body\xff";
    let resp = post(
        &endpoint,
        &[
            ("TTL", "120"),
            ("Content-Encoding", "aes128gcm"),
            ("Topic", "news"),
            ("Urgency", "high"),
        ],
        body,
    )
    .await;
    assert_eq!(resp.status, 201);
    assert_eq!(resp.headers["ttl"], "120");
    let location = resp.headers["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("{}/m/", h.server.http_base())));

    let n = c.recv_type("notification").await;
    assert_eq!(n["channelID"], CH1);
    assert_eq!(n["data"], URL_SAFE_NO_PAD.encode(body));
    assert_eq!(n["headers"], json!({"encoding": "aes128gcm"}));
    assert_eq!(location.rsplit('/').next(), n["version"].as_str());
    let keys: Vec<_> = n.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        ["channelID", "data", "headers", "messageType", "version"],
        "TTL, topic and urgency are not sent to the client"
    );
    assert_eq!(h.server.stats().stored_messages, 1);

    c.ack(&n).await;
    h.wait_until("the ack to delete it", |s| s.stats().stored_messages == 0)
        .await;
    let version = n["version"].as_str().unwrap().to_owned();
    assert_eq!(h.server.stats().acks, vec![(CH1.to_owned(), version, 100)]);
}

#[tokio::test]
async fn empty_and_aesgcm_pushes() {
    let h = start().await;
    let (mut c, _, endpoint) = h.subscribed(CH1, None).await;

    assert_eq!(post(&endpoint, &[("TTL", "0")], b"").await.status, 201);
    let n = c.recv_type("notification").await;
    assert!(n.get("data").is_none() && n.get("headers").is_none(), "{n}");

    let resp = post(
        &endpoint,
        &[
            ("TTL", "60"),
            ("Content-Encoding", "aesgcm"),
            ("Encryption", "salt=\"c2FsdHNhbHRzYWx0\""),
            ("Crypto-Key", "dh=BCdh==; p256ecdsa=BKey"),
        ],
        b"ciphertext",
    )
    .await;
    assert_eq!(resp.status, 201);
    let n = c.recv_type("notification").await;
    // Forwarded as autopush does: quotes and padding gone, spaces kept.
    assert_eq!(
        n["headers"],
        json!({"encoding": "aesgcm", "encryption": "salt=c2FsdHNhbHRzYWx0",
               "crypto_key": "dh=BCdh; p256ecdsa=BKey"})
    );

    // aesgcm without Crypto-Key is accepted.
    let resp = post(
        &endpoint,
        &[
            ("TTL", "60"),
            ("Content-Encoding", "aesgcm"),
            ("Encryption", "salt=c2FsdA"),
        ],
        b"ciphertext",
    )
    .await;
    assert_eq!(resp.status, 201, "{}", resp.json);
    let n = c.recv_type("notification").await;
    assert_eq!(
        n["headers"],
        json!({"encoding": "aesgcm", "encryption": "salt=c2FsdA"})
    );

    // aes128gcm forwards a Crypto-Key (here a draft-VAPID p256ecdsa) too.
    let resp = post(
        &endpoint,
        &[
            ("TTL", "60"),
            ("Content-Encoding", "aes128gcm"),
            ("Crypto-Key", "p256ecdsa=BKey=="),
        ],
        b"ciphertext",
    )
    .await;
    assert_eq!(resp.status, 201, "{}", resp.json);
    let n = c.recv_type("notification").await;
    assert_eq!(
        n["headers"],
        json!({"encoding": "aes128gcm", "crypto_key": "p256ecdsa=BKey"})
    );
}

#[tokio::test]
async fn unacked_messages_are_redelivered_after_reconnect() {
    let h = start().await;
    let (mut c, uaid, endpoint) = h.subscribed(CH1, None).await;
    assert_eq!(push(&endpoint, b"once").await.status, 201);
    let first = c.recv_type("notification").await;
    drop(c);

    let mut c = h.connect().await;
    assert_eq!(c.hello(Some(&uaid)).await, uaid);
    let again = c.recv_type("notification").await;
    assert_eq!(again["version"], first["version"]);
    assert_eq!(again["data"], first["data"]);
    c.ack(&again).await;
    h.wait_until("ack", |s| s.stats().stored_messages == 0)
        .await;
    drop(c);

    let mut c = h.connect().await;
    c.hello(Some(&uaid)).await;
    c.assert_quiet().await;
}

#[tokio::test]
async fn offline_messages_survive_a_server_restart() {
    let mut h = start().await;
    let (c, uaid, endpoint) = h.subscribed(CH1, None).await;
    drop(c);
    h.wait_until("disconnect", |s| !s.is_connected(&uaid)).await;
    assert_eq!(push(&endpoint, b"while you were away").await.status, 201);

    let ws_addr: std::net::SocketAddr = h.server.ws_url()["ws://".len()..]
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let http_addr = h.server.http_base()["http://".len()..].parse().unwrap();
    h.server.shutdown().await;

    h.opts.ws_addr = ws_addr;
    h.opts.http_addr = http_addr;
    h.server = PushServer::start(h.opts.clone())
        .await
        .expect("restart on the same ports");
    let mut c = h.connect().await;
    assert_eq!(c.hello(Some(&uaid)).await, uaid);
    let n = c.recv_type("notification").await;
    assert_eq!(n["data"], URL_SAFE_NO_PAD.encode(b"while you were away"));
    // The endpoint is still valid after the restart.
    assert_eq!(push(&endpoint, b"more").await.status, 201);
    c.recv_type("notification").await;
}

#[tokio::test]
async fn stored_messages_come_in_batches_of_ten() {
    let h = start().await;
    let (c, uaid, endpoint) = h.subscribed(CH1, None).await;
    drop(c);
    h.wait_until("disconnect", |s| !s.is_connected(&uaid)).await;
    for i in 0..25u8 {
        let outcome = h
            .server
            .deliver(&endpoint, vec![i], Some("aes128gcm"), 60)
            .unwrap();
        assert!(matches!(outcome, DeliverOutcome::Stored { .. }));
    }

    let mut c = h.connect().await;
    c.hello(Some(&uaid)).await;
    let mut received = Vec::new();
    for expected in [10, 10, 5] {
        let mut batch = Vec::new();
        for _ in 0..expected {
            batch.push(c.recv_type("notification").await);
        }
        c.assert_quiet().await;
        // Acking all but the last does not release the next batch.
        for n in &batch[..batch.len() - 1] {
            c.ack(n).await;
        }
        c.assert_quiet().await;
        c.ack(&batch[batch.len() - 1]).await;
        received.extend(batch);
    }
    c.assert_quiet().await;
    let data: Vec<_> = received.iter().map(|n| n["data"].clone()).collect();
    let sent: Vec<_> = (0..25u8)
        .map(|i| Value::from(URL_SAFE_NO_PAD.encode([i])))
        .collect();
    assert_eq!(data, sent, "oldest first, each once");
}

#[tokio::test]
async fn live_pushes_go_through_while_a_batch_is_pending() {
    let h = start().await;
    let (c, uaid, endpoint) = h.subscribed(CH1, None).await;
    drop(c);
    h.wait_until("disconnect", |s| !s.is_connected(&uaid)).await;
    for i in 0..12u8 {
        h.server
            .deliver(CH1, vec![i], Some("aes128gcm"), 60)
            .unwrap();
    }
    let mut c = h.connect().await;
    c.hello(Some(&uaid)).await;
    for _ in 0..10 {
        c.recv_type("notification").await;
    }
    assert_eq!(push(&endpoint, b"live").await.status, 201);
    let live = c.recv_type("notification").await;
    assert_eq!(live["data"], URL_SAFE_NO_PAD.encode(b"live"));
    c.assert_quiet().await;
}

#[tokio::test]
async fn topic_replaces_the_stored_message_and_ttl0_offline_is_dropped() {
    let h = start().await;
    let (c, uaid, endpoint) = h.subscribed(CH1, None).await;
    drop(c);
    h.wait_until("disconnect", |s| !s.is_connected(&uaid)).await;
    let headers = |topic| {
        [
            ("TTL", "60"),
            ("Content-Encoding", "aes128gcm"),
            ("Topic", topic),
        ]
    };
    assert_eq!(post(&endpoint, &headers("score"), b"1-0").await.status, 201);
    assert_eq!(post(&endpoint, &headers("score"), b"2-0").await.status, 201);
    assert_eq!(post(&endpoint, &headers("other"), b"x").await.status, 201);
    let resp = post(
        &endpoint,
        &[("TTL", "0"), ("Content-Encoding", "aes128gcm")],
        b"now or never",
    )
    .await;
    assert_eq!(resp.status, 201);
    assert_eq!(h.server.stats().stored_messages, 2);

    let mut c = h.connect().await;
    c.hello(Some(&uaid)).await;
    let a = c.recv_type("notification").await;
    let b = c.recv_type("notification").await;
    assert_eq!(a["data"], URL_SAFE_NO_PAD.encode(b"2-0"));
    assert_eq!(b["data"], URL_SAFE_NO_PAD.encode(b"x"));
    c.assert_quiet().await;
}

#[tokio::test]
async fn expired_messages_are_not_delivered() {
    let h = start().await;
    let (c, uaid, endpoint) = h.subscribed(CH1, None).await;
    drop(c);
    h.wait_until("disconnect", |s| !s.is_connected(&uaid)).await;
    let resp = post(
        &endpoint,
        &[("TTL", "1"), ("Content-Encoding", "aes128gcm")],
        b"stale",
    )
    .await;
    assert_eq!(resp.status, 201);
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the TTL pass
    let mut c = h.connect().await;
    c.hello(Some(&uaid)).await;
    c.assert_quiet().await;
}

#[tokio::test]
async fn unregister_deletes_the_channel() {
    let h = start().await;
    let (mut c, _, endpoint) = h.subscribed(CH1, None).await;
    c.send(json!({"messageType": "unregister", "channelID": CH1, "code": 201}))
        .await;
    let reply = c.recv_type("unregister").await;
    assert_eq!(
        (reply["channelID"].as_str(), reply["status"].as_u64()),
        (Some(CH1), Some(200))
    );
    assert_eq!(h.server.stats().unregisters, vec![(CH1.to_owned(), 201)]);
    let resp = push(&endpoint, b"too late").await;
    assert_eq!((resp.status, resp.json["errno"].as_u64()), (410, Some(106)));

    // Unknown channels are fine too, in any UUID spelling; the reply names the channel
    // in its lower-case dashed form.
    c.send(json!({"messageType": "unregister", "channelID": CH2.to_uppercase()}))
        .await;
    let reply = c.recv_type("unregister").await;
    assert_eq!(
        (reply["status"].as_u64(), reply["channelID"].as_str()),
        (Some(200), Some(CH2))
    );
    assert_eq!(h.server.stats().unregisters[1], (CH2.to_owned(), 200));
    // A channelID that is no UUID does not parse.
    c.send(json!({"messageType": "unregister", "channelID": "nope"}))
        .await;
    assert_eq!(c.ending().await, Ending::Closed(1011, "Json".into()));
}

/// autopush's `remove_channel` (Redis and Bigtable) leaves the channel's stored messages:
/// an unacknowledged one still comes back after a reconnect.
#[tokio::test]
async fn unregister_keeps_stored_messages() {
    let h = start().await;
    let (mut c, uaid, endpoint) = h.subscribed(CH1, None).await;
    assert_eq!(push(&endpoint, b"kept").await.status, 201);
    let n = c.recv_type("notification").await;
    c.send(json!({"messageType": "unregister", "channelID": CH1}))
        .await;
    c.recv_type("unregister").await;
    assert_eq!(h.server.stats().stored_messages, 1);
    drop(c);
    h.wait_until("disconnect", |s| !s.is_connected(&uaid)).await;

    let mut c = h.connect().await;
    assert_eq!(c.hello(Some(&uaid)).await, uaid);
    let again = c.recv_type("notification").await;
    assert_eq!(again["version"], n["version"]);
    c.ack(&again).await;
    h.wait_until("ack", |s| s.stats().stored_messages == 0)
        .await;
}

/// autopush's `msg_limit`: the endpoint keeps answering 201 for an offline client; the
/// user record goes only when the client, reading storage, passes the limit.
#[tokio::test]
async fn too_many_stored_messages_drop_the_user_record_while_reading() {
    let h = start_with(|o| o.max_stored_messages = 15).await;
    let (c, uaid, endpoint) = h.subscribed(CH1, None).await;
    drop(c);
    h.wait_until("disconnect", |s| !s.is_connected(&uaid)).await;
    for _ in 0..25 {
        assert_eq!(push(&endpoint, b"x").await.status, 201);
    }
    assert_eq!(h.server.stats().uaid_resets, 0);

    let mut c = h.connect().await;
    assert_eq!(c.hello(Some(&uaid)).await, uaid);
    let mut batch = Vec::new();
    for _ in 0..10 {
        batch.push(c.recv_type("notification").await);
    }
    for n in &batch {
        c.ack(n).await;
    }
    // The second batch would make 20 > 15: the user is dropped, the connection closed.
    assert_eq!(c.ending().await, Ending::Closed(1000, "SM".into()));
    assert_eq!(h.server.stats().uaid_resets, 1);
    assert_eq!(h.server.stats().stored_messages, 0);
    let resp = push(&endpoint, b"x").await;
    assert_eq!((resp.status, resp.json["errno"].as_u64()), (410, Some(106)));

    // The client's next hello with the old uaid gets a new one, with nothing stored.
    let mut c = h.connect().await;
    let fresh = c.hello(Some(&uaid)).await;
    assert_ne!(fresh, uaid);
    c.assert_quiet().await;

    // Dropping the record of a connected client closes it with 1000 "SM".
    c.register(CH1, None).await;
    h.server.drop_user(&fresh).unwrap();
    assert_eq!(c.ending().await, Ending::Closed(1000, "SM".into()));
}

/// autopush moves its storage read pointer only when a whole batch is acked: after a
/// partial ack and a reconnect, the batch comes back whole, acked messages included
/// (a message with a topic is deleted on its ack, though).
#[tokio::test]
async fn partly_acked_batch_is_redelivered_whole() {
    let h = start().await;
    let (c, uaid, endpoint) = h.subscribed(CH1, None).await;
    drop(c);
    h.wait_until("disconnect", |s| !s.is_connected(&uaid)).await;
    for body in [&b"a"[..], b"b", b"c"] {
        assert_eq!(push(&endpoint, body).await.status, 201);
    }
    let topic = [
        ("TTL", "60"),
        ("Content-Encoding", "aes128gcm"),
        ("Topic", "t"),
    ];
    assert_eq!(post(&endpoint, &topic, b"d").await.status, 201);

    let mut c = h.connect().await;
    c.hello(Some(&uaid)).await;
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(c.recv_type("notification").await);
    }
    c.ack(&first[0]).await;
    c.ack(&first[3]).await;
    h.wait_until("the topic ack", |s| s.stats().acks.len() == 2)
        .await;
    drop(c);
    h.wait_until("disconnect", |s| !s.is_connected(&uaid)).await;

    let mut c = h.connect().await;
    c.hello(Some(&uaid)).await;
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(c.recv_type("notification").await);
    }
    c.assert_quiet().await;
    let versions = |ns: &[Value]| ns.iter().map(|n| n["version"].clone()).collect::<Vec<_>>();
    assert_eq!(versions(&again), versions(&first[..3]));
    for n in &again {
        c.ack(n).await;
    }
    h.wait_until("the batch to be done", |s| s.stats().stored_messages == 0)
        .await;
    drop(c);
    let mut c = h.connect().await;
    c.hello(Some(&uaid)).await;
    c.assert_quiet().await;
}

#[tokio::test]
async fn deliver_accepts_a_channel_id_or_an_endpoint() {
    let h = start().await;
    let (mut c, _, endpoint) = h.subscribed(CH1, None).await;
    let by_channel = h.server.deliver(CH1, b"a".to_vec(), Some("aes128gcm"), 60);
    assert!(matches!(by_channel, Ok(DeliverOutcome::Sent { .. })));
    let by_endpoint = h.server.deliver(&endpoint, vec![], None, 0);
    assert!(matches!(by_endpoint, Ok(DeliverOutcome::Sent { .. })));
    assert_eq!(c.recv_type("notification").await["data"], "YQ");
    c.recv_type("notification").await;
    assert!(h.server.deliver(CH2, vec![], None, 60).is_err());
    assert!(h.server.deliver("garbage", vec![], None, 60).is_err());
    assert!(h.server.deliver(CH1, b"x".to_vec(), None, 60).is_err());
}

// ---------------------------------------------------------------------------------------
// Protocol errors close the socket

#[tokio::test]
async fn upper_case_channel_id_closes_1011() {
    let h = start().await;
    let mut c = h.connect().await;
    c.hello(None).await;
    c.send(json!({"messageType": "register", "channelID": CH1.to_uppercase()}))
        .await;
    assert!(matches!(c.ending().await, Ending::Closed(1011, _)));
}

/// autopush only base64url-decodes `key` (and hashes it into the endpoint): any bytes
/// are fine; what does not decode gets status 400 and "Failed to generate endpoint".
#[tokio::test]
async fn register_key_is_only_base64url_decoded() {
    let h = start().await;
    let mut c = h.connect().await;
    c.hello(None).await;
    for key in ["AAAA", "", "AAAA==", "c29tZSBieXRlcw"] {
        c.send(json!({"messageType": "register", "channelID": CH1, "key": key}))
            .await;
        let reply = c.recv_type("register").await;
        assert_eq!(reply["status"], 200, "{key:?}: {reply}");
        assert!(
            reply["pushEndpoint"]
                .as_str()
                .unwrap()
                .contains("/wpush/v2/"),
            "{reply}"
        );
    }
    for key in ["not base64!", "ab+/cd", "A"] {
        c.send(json!({"messageType": "register", "channelID": CH1, "key": key}))
            .await;
        let reply = c.recv_type("register").await;
        assert_eq!(reply["status"], 400, "{key:?}: {reply}");
        assert_eq!(reply["pushEndpoint"], "Failed to generate endpoint");
    }
}

#[tokio::test]
async fn malformed_client_messages_close_1011() {
    let h = start().await;
    for (bad, reason) in [
        ("not json", "Json"),
        ("[]", "Json"),
        (r#"{"messageType":"bogus"}"#, "Json"),
        (r#"{"messageType":"ack","updates":"nope"}"#, "Json"),
        (
            r#"{"messageType":"ack","updates":[{"channelID":"nope","version":"v"}]}"#,
            "Json",
        ),
        (
            r#"{"messageType":"ack","updates":[{"channelID":"8f5e7a4c-2b3d-4e6f-9a1b-0c2d3e4f5a6b","version":"v","code":70000}]}"#,
            "Json",
        ),
        (r#"{"messageType":"nack","code":1}"#, "Json"),
        (r#"{"messageType":"register"}"#, "Json"),
        (r#"{"messageType":"hello"}"#, "SM"),
        (r#"{"foo":1}"#, "Json"),
    ] {
        let mut c = h.connect().await;
        c.hello(None).await;
        c.send_text(bad).await;
        assert_eq!(
            c.ending().await,
            Ending::Closed(1011, reason.into()),
            "{bad}"
        );
    }

    // What autopush's types accept: an upper-case ack channelID, a negative nack code.
    let mut c = h.connect().await;
    c.hello(None).await;
    c.send(json!({"messageType": "ack", "updates": [{"channelID": CH1.to_uppercase(), "version": "v"}]}))
        .await;
    c.send(json!({"messageType": "nack", "version": "v", "code": -5}))
        .await;
    c.send_text("{}").await;
    assert_eq!(c.recv().await, json!({}));
    assert_eq!(
        h.server.stats().acks,
        vec![(CH1.to_owned(), "v".to_owned(), 0)]
    );
    assert_eq!(h.server.stats().nacks, vec![("v".to_owned(), 0)]);
}

#[tokio::test]
async fn binary_oversized_and_invalid_utf8_frames_close() {
    let h = start().await;
    let mut c = h.connect().await;
    c.hello(None).await;
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(
        c.ending().await,
        Ending::Closed(1003, "UnsupportedMessage".into())
    );

    let mut c = h.connect().await;
    c.hello(None).await;
    let big = format!(r#"{{"messageType":"ping","pad":"{}"}}"#, "x".repeat(70_000));
    c.send_text(&big).await;
    assert_eq!(c.ending().await, Ending::Closed(1002, "Protocol".into()));

    let mut c = h.connect().await;
    c.hello(None).await;
    let frame = Frame::message(&b"{\"a\":\"\xff\"}"[..], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(c.ending().await, Ending::Closed(1002, "Protocol".into()));
}

#[tokio::test]
async fn client_pings_are_answered_but_not_twice_within_the_window() {
    let h = start().await;
    let mut c = h.connect().await;
    c.hello(None).await;
    c.send_text("{}").await;
    assert_eq!(c.recv().await, json!({}));
    c.send(json!({"messageType": "ping"})).await;
    assert_eq!(c.ending().await, Ending::Closed(1011, "SM".into()));
    assert_eq!(h.server.stats().pings, 2);

    let h = start_with(|o| o.client_ping_min_interval = Duration::from_millis(100)).await;
    let mut c = h.connect().await;
    c.hello(None).await;
    c.send_text("{}").await;
    assert_eq!(c.recv().await, json!({}));
    tokio::time::sleep(Duration::from_millis(150)).await; // outside the window
    c.send(json!({"messageType": "ping"})).await;
    assert_eq!(c.recv().await, json!({}));
}

#[tokio::test]
async fn second_connection_with_the_same_uaid_closes_the_first() {
    let h = start().await;
    let (mut first, uaid, _) = h.subscribed(CH1, None).await;
    let mut second = h.connect().await;
    assert_eq!(second.hello(Some(&uaid)).await, uaid);
    assert_eq!(first.ending().await, Ending::Closed(1011, "SM".into()));
    // Pushes now reach the second connection.
    h.server.deliver(CH1, vec![], None, 60).unwrap();
    second.recv_type("notification").await;
}

#[tokio::test]
async fn server_pings_and_pong_timeout() {
    let h = start_with(|o| {
        o.server_ping_interval = Duration::from_millis(100);
        o.pong_timeout = Duration::from_millis(200);
    })
    .await;
    // A client that stops reading does not pong, and is closed with 1011 "PongTimeout".
    let mut sleeper = h.connect().await;
    sleeper.hello(None).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // not reading, on purpose
    assert_eq!(
        sleeper.ending().await,
        Ending::Closed(1011, "PongTimeout".into())
    );

    // One that keeps reading answers the pings (tungstenite does) and stays.
    let mut reader = h.connect().await;
    reader.hello(None).await;
    assert!(reader
        .recv_within(Duration::from_millis(600))
        .await
        .is_none());
    reader.send_text("{}").await;
    assert_eq!(reader.recv().await, json!({}));
}

// ---------------------------------------------------------------------------------------
// Broadcasts

#[tokio::test]
async fn broadcasts_report_changes_and_unknown_ids() {
    let h = start().await;
    h.server
        .set_broadcast("remote-settings/monitor_changes", "v2");
    h.server.set_broadcast("same", "v1");
    let mut c = h.connect().await;
    c.send(
        json!({"messageType": "hello", "use_webpush": true, "broadcasts": {
        "remote-settings/monitor_changes": "v1", "same": "v1", "nope": "v0"}}),
    )
    .await;
    let reply = c.recv_type("hello").await;
    assert_eq!(
        reply["broadcasts"],
        json!({"remote-settings/monitor_changes": "v2", "errors": {"nope": "Broadcast not found"}})
    );

    h.server.set_broadcast("same", "v9");
    let msg = c.recv_type("broadcast").await;
    assert_eq!(msg["broadcasts"], json!({"same": "v9"}));
    h.server.set_broadcast("unsubscribed", "v1");
    c.assert_quiet().await;

    c.send(json!({"messageType": "broadcast_subscribe", "broadcasts": {"unsubscribed": "v0"}}))
        .await;
    let msg = c.recv_type("broadcast").await;
    assert_eq!(msg["broadcasts"], json!({"unsubscribed": "v1"}));
    c.send(json!({"messageType": "broadcast_subscribe", "broadcasts": {"same": "v9"}}))
        .await;
    c.assert_quiet().await;
}

// ---------------------------------------------------------------------------------------
// HTTP endpoint

#[tokio::test]
async fn http_endpoint_status_codes() {
    let h = start().await;
    let (_c, _, endpoint) = h.subscribed(CH1, None).await;
    let check = |resp: HttpResponse, status: u16, errno: Option<u64>| {
        assert_eq!(resp.status, status, "{}", resp.json);
        assert_eq!(resp.json["errno"].as_u64(), errno, "{}", resp.json);
        if status >= 400 {
            assert_eq!(resp.json["code"].as_u64(), Some(u64::from(status)));
            assert!(resp.json["error"].is_string() && resp.json["message"].is_string());
        }
    };

    let aes = ("Content-Encoding", "aes128gcm");
    check(post(&endpoint, &[aes], b"x").await, 400, Some(111));
    check(
        post(&endpoint, &[("TTL", "soon"), aes], b"x").await,
        400,
        Some(111),
    );
    check(
        post(&endpoint, &[("TTL", "-1"), aes], b"x").await,
        400,
        Some(114),
    );
    check(
        post(&endpoint, &[("TTL", "60")], b"x").await,
        400,
        Some(110),
    );
    check(
        post(
            &endpoint,
            &[("TTL", "60"), ("Content-Encoding", "gzip")],
            b"x",
        )
        .await,
        400,
        Some(110),
    );
    check(
        post(
            &endpoint,
            &[("TTL", "60"), ("Content-Encoding", "aesgcm")],
            b"x",
        )
        .await,
        400,
        Some(110),
    );
    // Content-Encoding is compared exactly.
    check(
        post(
            &endpoint,
            &[("TTL", "60"), ("Content-Encoding", "AES128GCM")],
            b"x",
        )
        .await,
        400,
        Some(110),
    );
    // A negative TTL is reported after the crypto headers.
    check(
        post(&endpoint, &[("TTL", "-1")], b"x").await,
        400,
        Some(110),
    );
    // aesgcm needs no Crypto-Key (autopush checks its dh only when it is sent).
    check(
        post(
            &endpoint,
            &[
                ("TTL", "60"),
                ("Content-Encoding", "aesgcm"),
                ("Encryption", "salt=abc"),
            ],
            b"x",
        )
        .await,
        201,
        None,
    );
    check(
        post(
            &endpoint,
            &[
                ("TTL", "60"),
                ("Content-Encoding", "aesgcm"),
                ("Encryption", "salt=abc"),
                ("Crypto-Key", "dh=abc;"),
            ],
            b"x",
        )
        .await,
        400,
        Some(110),
    );
    // Urgency is not looked at.
    check(
        post(&endpoint, &[("TTL", "60"), aes, ("Urgency", "asap")], b"x").await,
        201,
        None,
    );
    check(
        post(&endpoint, &[("TTL", "60"), aes, ("Topic", "a=b")], b"x").await,
        400,
        Some(113),
    );
    check(
        post(
            &endpoint,
            &[("TTL", "60"), aes, ("Topic", &"t".repeat(33))],
            b"x",
        )
        .await,
        400,
        Some(113),
    );
    // autopush's max_data_bytes: 5630.
    check(
        post(&endpoint, &[("TTL", "60"), aes], &[0u8; 5631]).await,
        413,
        Some(104),
    );
    check(
        post(&endpoint, &[("TTL", "60"), aes], &[0u8; 5630]).await,
        201,
        None,
    );

    let base = h.server.http_base();
    check(
        post(&format!("{base}/wpush/v1/garbage"), &[("TTL", "60")], b"").await,
        404,
        Some(102),
    );
    // A v1 token presented on the v2 path is not a valid token either.
    let token = endpoint.rsplit('/').next().unwrap();
    check(
        post(&format!("{base}/wpush/v2/{token}"), &[("TTL", "60")], b"").await,
        404,
        Some(102),
    );
    check(
        post(&format!("{base}/wpush/v3/{token}"), &[("TTL", "60")], b"").await,
        404,
        Some(102),
    );
    // `/wpush/{token}` is a v1 endpoint.
    check(
        post(&format!("{base}/wpush/{token}"), &[("TTL", "60")], b"").await,
        201,
        None,
    );
    // Wrong method and unknown paths: empty bodies, as autopush.
    for (method, url, status) in [
        ("GET", endpoint.clone(), 405),
        ("GET", format!("{base}/nothing"), 404),
        ("POST", format!("{base}/m/abc"), 405),
    ] {
        let resp = http(method, &url, &[], b"").await;
        assert_eq!((resp.status, &resp.json), (status, &Value::Null), "{url}");
    }
    // Dockerflow health routes.
    assert_eq!(
        http("GET", &format!("{base}/__lbheartbeat__"), &[], b"")
            .await
            .status,
        200
    );
    let resp = http("GET", &format!("{base}/__heartbeat__"), &[], b"").await;
    assert_eq!((resp.status, &resp.json["status"]), (200, &json!("OK")));
    let resp = http("GET", &format!("{base}/__version__"), &[], b"").await;
    assert!(resp.json["version"].is_string(), "{}", resp.json);

    // TTL is capped at 30 days and echoed.
    let resp = post(&endpoint, &[("TTL", "99999999")], b"").await;
    assert_eq!(
        (resp.status, resp.headers["ttl"].to_str().unwrap()),
        (201, "2592000")
    );
    // An application server may cancel a message it sent.
    let location = resp.headers["location"].to_str().unwrap().to_owned();
    check(http("DELETE", &location, &[], b"").await, 204, None);
}

#[tokio::test]
async fn unknown_user_or_channel_is_gone() {
    let h = start().await;
    let (mut c, uaid, endpoint) = h.subscribed(CH1, None).await;
    c.send(json!({"messageType": "unregister", "channelID": CH1}))
        .await;
    c.recv_type("unregister").await;
    let resp = push(&endpoint, b"x").await;
    assert_eq!((resp.status, resp.json["errno"].as_u64()), (410, Some(106)));
    assert_eq!(resp.headers["cache-control"], "max-age=86400");
    h.server.drop_user(&uaid).unwrap();
    // An unknown user is "No such subscription" too: autopush never sends 103 here.
    let resp = push(&endpoint, b"x").await;
    assert_eq!((resp.status, resp.json["errno"].as_u64()), (410, Some(106)));
}

#[tokio::test]
async fn v2_endpoints_require_the_registered_vapid_key() {
    let h = start().await;
    let key = VapidKey::generate().unwrap();
    let (mut c, _, endpoint) = h.subscribed(CH1, Some(&key)).await;
    assert!(endpoint.contains("/wpush/v2/"), "{endpoint}");
    let aud = h.server.http_base();
    let aes = ("Content-Encoding", "aes128gcm");

    let resp = post(&endpoint, &[("TTL", "60"), aes], b"x").await;
    assert_eq!((resp.status, resp.json["errno"].as_u64()), (401, Some(109)));

    let good = vapid_header(&key, &aud);
    let resp = post(
        &endpoint,
        &[("TTL", "60"), aes, ("Authorization", &good)],
        b"x",
    )
    .await;
    assert_eq!(resp.status, 201, "{}", resp.json);
    c.recv_type("notification").await;

    let other = VapidKey::generate().unwrap();
    let wrong_key = vapid_header(&other, &aud);
    let resp = post(
        &endpoint,
        &[("TTL", "60"), aes, ("Authorization", &wrong_key)],
        b"x",
    )
    .await;
    assert_eq!(resp.status, 401);

    let wrong_aud = vapid_header(&key, "https://push.services.mozilla.com");
    let resp = post(
        &endpoint,
        &[("TTL", "60"), aes, ("Authorization", &wrong_aud)],
        b"x",
    )
    .await;
    assert_eq!(resp.status, 401);

    let resp = post(
        &endpoint,
        &[
            ("TTL", "60"),
            aes,
            ("Authorization", "vapid t=a.b.c, k=xyz"),
        ],
        b"x",
    )
    .await;
    assert_eq!(resp.status, 401);

    // The draft "WebPush <jwt>" form with the key in Crypto-Key works too.
    let (jwt, _) = vapid::parse_authorization(&good, None).unwrap();
    let crypto_key = format!("p256ecdsa={}", URL_SAFE_NO_PAD.encode(key.public_raw()));
    let resp = post(
        &endpoint,
        &[
            ("TTL", "60"),
            aes,
            ("Authorization", &format!("WebPush {jwt}")),
            ("Crypto-Key", &crypto_key),
        ],
        b"x",
    )
    .await;
    assert_eq!(resp.status, 201, "{}", resp.json);
    c.recv_type("notification").await;
}

/// autopush-rs's VAPID rules, beyond the basics above.
#[tokio::test]
async fn vapid_rules_follow_autopush() {
    let h = start().await;
    let key = VapidKey::generate().unwrap();
    let (mut c, _, endpoint) = h.subscribed(CH1, Some(&key)).await;
    let aud = h.server.http_base();
    let aes = ("Content-Encoding", "aes128gcm");
    let send = |auth: String, extra: Option<(&'static str, String)>| {
        let endpoint = endpoint.clone();
        async move {
            let mut headers = vec![("TTL", "60".to_owned()), (aes.0, aes.1.to_owned())];
            headers.push(("Authorization", auth));
            headers.extend(extra);
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post(&endpoint, &headers, b"x").await
        }
    };
    let status = |resp: HttpResponse| (resp.status, resp.json["errno"].as_u64());

    // 60 s of leeway on exp.
    let resp = send(vapid_header_exp(&key, &aud, now_secs() - 30), None).await;
    assert_eq!(resp.status, 201, "{}", resp.json);
    c.recv_type("notification").await;
    let resp = send(vapid_header_exp(&key, &aud, now_secs() - 120), None).await;
    assert_eq!(status(resp), (401, Some(109)));
    // aud must be the origin exactly: no trailing slash.
    let resp = send(vapid_header(&key, &format!("{aud}/")), None).await;
    assert_eq!(status(resp), (401, Some(109)));

    // Standard base64 (padded) keys, and the Bearer scheme with Crypto-Key.
    let good = vapid_header(&key, &aud);
    let (jwt, _) = vapid::parse_authorization(&good, None).unwrap();
    let std_key = base64::engine::general_purpose::STANDARD.encode(key.public_raw());
    let resp = send(format!("vapid t={jwt}, k={std_key}"), None).await;
    assert_eq!(resp.status, 201, "{}", resp.json);
    c.recv_type("notification").await;
    let crypto_key = format!("p256ecdsa={}", URL_SAFE_NO_PAD.encode(key.public_raw()));
    let resp = send(format!("Bearer {jwt}"), Some(("Crypto-Key", crypto_key))).await;
    assert_eq!(resp.status, 201, "{}", resp.json);
    c.recv_type("notification").await;
    // The draft scheme without a usable Crypto-Key is an encryption error, 400/110.
    let resp = send(format!("WebPush {jwt}"), None).await;
    assert_eq!(status(resp), (400, Some(110)));
    let resp = send(
        format!("WebPush {jwt}"),
        Some(("Crypto-Key", "dh=abc".to_owned())),
    )
    .await;
    assert_eq!(status(resp), (400, Some(110)));

    // The JWT is checked before the user and channel: an unsubscribed endpoint with an
    // expired JWT is 401, not 410; also on a v1 endpoint.
    c.send(json!({"messageType": "unregister", "channelID": CH1}))
        .await;
    c.recv_type("unregister").await;
    let expired = vapid_header_exp(&key, &aud, now_secs() - 3600);
    let resp = send(expired.clone(), None).await;
    assert_eq!(status(resp), (401, Some(109)));
    let reply = c.register(CH2, None).await;
    let v1 = reply["pushEndpoint"].as_str().unwrap().to_owned();
    let resp = post(
        &v1,
        &[("TTL", "60"), aes, ("Authorization", &expired)],
        b"x",
    )
    .await;
    assert_eq!(status(resp), (401, Some(109)));
    let resp = post(&v1, &[("TTL", "60"), aes, ("Authorization", &good)], b"x").await;
    assert_eq!(resp.status, 201, "{}", resp.json);
}

// ---------------------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn faults_are_off_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let server = PushServer::start(ServerOptions::new(dir.path().join("s.db")))
        .await
        .unwrap();
    assert!(server.faults().is_none());
}

#[tokio::test]
async fn fault_drop_at_hello_and_register() {
    let h = start().await;
    let faults = h.server.faults().unwrap();
    faults.drop_connection_at(Step::Hello);
    let mut c = h.connect().await;
    c.send(json!({"messageType": "hello", "use_webpush": true}))
        .await;
    assert_eq!(c.ending().await, Ending::Dropped);
    // Once only.
    let mut c = h.connect().await;
    c.hello(None).await;

    faults.drop_connection_at(Step::Register);
    c.send(json!({"messageType": "register", "channelID": CH1}))
        .await;
    assert_eq!(c.ending().await, Ending::Dropped);
    assert_eq!(h.server.stats().registers, 0);
}

#[tokio::test]
async fn fault_drop_after_notification_keeps_it_stored() {
    let h = start().await;
    let (mut c, uaid, endpoint) = h.subscribed(CH1, None).await;
    h.server
        .faults()
        .unwrap()
        .drop_connection_at(Step::Notification);
    assert_eq!(push(&endpoint, b"m").await.status, 201);
    let n = c.recv_type("notification").await;
    assert_eq!(c.ending().await, Ending::Dropped);

    let mut c = h.connect().await;
    c.hello(Some(&uaid)).await;
    assert_eq!(c.recv_type("notification").await["version"], n["version"]);
}

#[tokio::test]
async fn fault_drop_at_ack_leaves_the_message_stored() {
    let h = start().await;
    let (mut c, uaid, endpoint) = h.subscribed(CH1, None).await;
    assert_eq!(push(&endpoint, b"m").await.status, 201);
    let n = c.recv_type("notification").await;
    h.server.faults().unwrap().drop_connection_at(Step::Ack);
    c.ack(&n).await;
    assert_eq!(c.ending().await, Ending::Dropped);
    assert_eq!(h.server.stats().stored_messages, 1);
    assert!(h.server.stats().acks.is_empty());

    let mut c = h.connect().await;
    c.hello(Some(&uaid)).await;
    let again = c.recv_type("notification").await;
    assert_eq!(again["version"], n["version"]);
    c.ack(&again).await;
    h.wait_until("ack", |s| s.stats().stored_messages == 0)
        .await;
}

#[tokio::test]
async fn fault_reply_delay_and_omitted_replies() {
    let h = start().await;
    let faults = h.server.faults().unwrap();
    faults.set_reply_delay(Some(Duration::from_millis(400)));
    let mut c = h.connect().await;
    c.send(json!({"messageType": "hello", "use_webpush": true}))
        .await;
    assert!(c.recv_within(Duration::from_millis(200)).await.is_none());
    c.recv_type("hello").await;
    faults.set_reply_delay(None);

    faults.set_omit_replies(true);
    c.send(json!({"messageType": "register", "channelID": CH1}))
        .await;
    c.assert_quiet().await;
    // The register still took effect: pushes arrive.
    h.server.deliver(CH1, vec![], None, 60).unwrap();
    c.recv_type("notification").await;
    c.send(json!({"messageType": "unregister", "channelID": CH1}))
        .await;
    c.assert_quiet().await;
    faults.set_omit_replies(false);
    c.register(CH2, None).await;
}

#[tokio::test]
async fn fault_register_status() {
    let h = start().await;
    let faults = h.server.faults().unwrap();
    let mut c = h.connect().await;
    c.hello(None).await;
    faults.set_register_status(Some(409));
    let reply = c.register(CH1, None).await;
    assert_eq!(reply["status"], 409);
    // autopush always names a pushEndpoint; "" when registering failed.
    assert_eq!(reply["pushEndpoint"], "");
    faults.set_register_status(None);
    assert_eq!(c.register(CH1, None).await["status"], 200);
}

#[tokio::test]
async fn fault_force_new_uaid() {
    let h = start().await;
    let (c, uaid, endpoint) = h.subscribed(CH1, None).await;
    drop(c);
    h.server.faults().unwrap().force_new_uaid();
    let mut c = h.connect().await;
    let fresh = c.hello(Some(&uaid)).await;
    assert_ne!(fresh, uaid);
    assert_eq!(push(&endpoint, b"x").await.status, 410);
    // Once only.
    c.register(CH1, None).await;
    drop(c);
    let mut c = h.connect().await;
    assert_eq!(c.hello(Some(&fresh)).await, fresh);
}

#[tokio::test]
async fn fault_close_all_and_send_raw() {
    let h = start().await;
    let faults = h.server.faults().unwrap();
    let mut a = h.connect().await;
    a.hello(None).await;
    let mut b = h.connect().await;
    b.hello(None).await;

    faults.send_raw(r#"{"messageType":"register","channelID":"nobody-asked","status":200}"#);
    assert_eq!(a.recv_type("register").await["channelID"], "nobody-asked");
    assert_eq!(b.recv_type("register").await["channelID"], "nobody-asked");
    faults.send_raw("this is not JSON");
    for c in [&mut a, &mut b] {
        let frame = timeout(WAIT, c.ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(frame, Message::text("this is not JSON"));
    }

    faults.close_all(4774, "go away");
    assert_eq!(a.ending().await, Ending::Closed(4774, "go away".into()));
    assert_eq!(b.ending().await, Ending::Closed(4774, "go away".into()));
}

#[tokio::test]
async fn fault_ignore_pings() {
    let h = start().await;
    let mut c = h.connect().await;
    c.hello(None).await;
    h.server.faults().unwrap().set_ignore_pings(true);
    c.send_text("{}").await;
    c.assert_quiet().await;
    assert_eq!(h.server.stats().pings, 1);
}

#[tokio::test]
async fn fault_refuse_connections_and_count_attempts() {
    let h = start().await;
    let faults = h.server.faults().unwrap();
    faults.set_refuse_connections(true);
    for _ in 0..3 {
        let attempt = timeout(WAIT, tokio_tungstenite::connect_async(h.server.ws_url()))
            .await
            .expect("refused promptly");
        assert!(attempt.is_err());
    }
    let attempts = faults.connection_attempts();
    assert_eq!(attempts.len(), 3);
    assert!(attempts.windows(2).all(|w| w[0] <= w[1]));
    faults.set_refuse_connections(false);
    let mut c = h.connect().await;
    c.hello(None).await;
    assert_eq!(faults.connection_attempts().len(), 4);
}
