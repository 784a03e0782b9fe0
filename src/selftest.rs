//! The end-to-end self-test of the configured push server, as a sequence of public D-Bus
//! calls (`pushctl selftest`, and any settings window: it needs no daemon internals).
//!
//! The steps, each timed: `connected` (Admin.State is `connected`), `subscribe`
//! (Manager.Subscribe on a temporary scope, restricted to a fresh VAPID key), `send` (a
//! VAPID-signed `aes128gcm` push POSTed to the endpoint, as an application server does),
//! `receive` (the Message signal, or FetchMessages, gives back the same bytes; then
//! AckMessage), `unsubscribe` (Manager.Unsubscribe) and `gone` (the old endpoint answers
//! 404 or 410). The first failure ends the test; the temporary subscription is removed in
//! any case.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use zbus::zvariant::Value;

use crate::appserver::{self, SendOptions};
use crate::client::{AdminProxy, ManagerProxy, MessageStream, SubscriptionProxy};
use crate::vapid::VapidKey;

/// The steps in order, as named in reports and `pushctl selftest --json`.
pub const STEPS: [&str; 6] = [
    "connected",
    "subscribe",
    "send",
    "receive",
    "unsubscribe",
    "gone",
];

/// One step's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    /// How long the step took.
    pub elapsed: Duration,
    /// What happened, in a few words (the error when it failed).
    pub detail: String,
}

/// The steps run, in order; the test passed when every one of them did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub steps: Vec<Step>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.steps.len() == STEPS.len() && self.steps.iter().all(|s| s.ok)
    }

    /// The step that failed, if one did.
    pub fn failed(&self) -> Option<&Step> {
        self.steps.iter().find(|s| !s.ok)
    }
}

type StepResult = Result<String, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Run the self-test over `conn` (the caller's own connection: the temporary subscription
/// belongs to the caller's app). `wait` bounds each step that waits on the server.
pub async fn run(conn: &zbus::Connection, wait: Duration) -> Report {
    run_with(conn, wait, |_| {}).await
}

/// As `run`, telling `progress` of each step as it ends (a window shows them as they go).
pub async fn run_with(
    conn: &zbus::Connection,
    wait: Duration,
    mut progress: impl FnMut(&Step),
) -> Report {
    let mut report = Report::default();
    let mut t = Test {
        conn,
        wait,
        scope: format!("webpushd-selftest:{:016x}", rand::random::<u64>()),
        endpoint: String::new(),
        subscribed: false,
        target: None,
        messages: None,
        payload: Vec::new(),
    };
    for name in STEPS {
        let start = Instant::now();
        let res = t.step(name).await;
        let ok = res.is_ok();
        report.steps.push(Step {
            name,
            ok,
            elapsed: start.elapsed(),
            detail: res.unwrap_or_else(|e| e),
        });
        progress(report.steps.last().expect("just pushed"));
        if !ok {
            break;
        }
    }
    if t.subscribed {
        if let Ok(m) = ManagerProxy::new(conn).await {
            let _ = m.unsubscribe(&t.scope).await;
        }
    }
    report
}

struct Test<'a> {
    conn: &'a zbus::Connection,
    wait: Duration,
    scope: String,
    endpoint: String,
    subscribed: bool,
    target: Option<Target>,
    messages: Option<MessageStream>,
    payload: Vec<u8>,
}

/// The temporary subscription's keys, and the VAPID key it is restricted to.
struct Target {
    key: VapidKey,
    p256dh: Vec<u8>,
    auth: Vec<u8>,
}

impl Test<'_> {
    async fn step(&mut self, name: &str) -> StepResult {
        match name {
            "connected" => self.connected().await,
            "subscribe" => self.subscribe().await,
            "send" => self.send().await,
            "receive" => self.receive().await,
            "unsubscribe" => self.unsubscribe().await,
            _ => self.gone().await,
        }
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, String> {
        ManagerProxy::new(self.conn).await.map_err(err)
    }

    async fn connected(&mut self) -> StepResult {
        let admin = AdminProxy::builder(self.conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(err)?;
        let deadline = Instant::now() + self.wait;
        loop {
            let state = admin.state().await.map_err(err)?;
            if state == "connected" {
                let url = admin.server_url().await.map_err(err)?;
                return Ok(format!("connected to {url}"));
            }
            if Instant::now() >= deadline {
                let status = admin.status().await.map_err(err)?;
                let last = status
                    .get("last_error")
                    .and_then(|v| String::try_from(v.clone()).ok())
                    .filter(|s| !s.is_empty())
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                let doing = match state.as_str() {
                    "backoff" => "waiting to reconnect",
                    "connecting" => "still connecting",
                    "offline" => "offline",
                    other => other,
                };
                return Err(format!(
                    "the daemon is {doing}, not connected to the push server{last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn subscribe(&mut self) -> StepResult {
        let key = VapidKey::generate().map_err(err)?;
        let mut options = HashMap::new();
        options.insert(
            "application_server_key",
            Value::from(key.public_raw().to_vec()),
        );
        let manager = self.manager().await?;
        // Listen before anything can be sent.
        self.messages = Some(manager.receive_message().await.map_err(err)?);
        let path = tokio::time::timeout(self.wait, manager.subscribe(&self.scope, options))
            .await
            .map_err(|_| "the daemon did not answer".to_string())?
            .map_err(err)?;
        self.subscribed = true;
        let sub = SubscriptionProxy::builder(self.conn)
            .path(path)
            .map_err(err)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(err)?;
        self.endpoint = sub.endpoint().await.map_err(err)?;
        self.target = Some(Target {
            key,
            p256dh: sub.p256dh().await.map_err(err)?,
            auth: sub.auth().await.map_err(err)?,
        });
        Ok(format!("endpoint {}", self.endpoint))
    }

    async fn post(&self, payload: &[u8]) -> Result<appserver::SendResponse, String> {
        let t = self.target.as_ref().ok_or("no subscription")?;
        let opts = SendOptions {
            subject: "mailto:selftest@webpushd.invalid".into(),
            ..SendOptions::default()
        };
        let send = appserver::send(&self.endpoint, &t.p256dh, &t.auth, payload, &t.key, &opts);
        tokio::time::timeout(self.wait, send)
            .await
            .map_err(|_| "the push server did not answer".to_string())?
            .map_err(|e| format!("cannot reach the endpoint: {e}"))
    }

    async fn send(&mut self) -> StepResult {
        self.payload = format!("webpushd self-test {:016x}", rand::random::<u64>()).into_bytes();
        let resp = self.post(&self.payload).await?;
        if (200..300).contains(&resp.status) {
            Ok(format!("the push server accepted it ({})", resp.status))
        } else {
            Err(format!(
                "the push server refused the message ({}: {})",
                resp.status,
                resp.body.trim()
            ))
        }
    }

    async fn receive(&mut self) -> StepResult {
        let manager = self.manager().await?;
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut stream = self.messages.take().ok_or("not listening")?;
        loop {
            // The signal, or (had it been missed) the pending messages.
            let tick = tokio::time::sleep(Duration::from_millis(500));
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return Err("no message arrived".into());
                }
                Some(m) = stream.next() => {
                    let Ok(a) = m.args() else { continue };
                    if a.scope() == &self.scope {
                        return self.compare(&manager, a.message_id(), a.payload()).await;
                    }
                }
                _ = tick => {
                    let pending = manager.fetch_messages(&self.scope).await.map_err(err)?;
                    if let Some((id, payload, _)) = pending.into_iter().next() {
                        return self.compare(&manager, &id, &payload).await;
                    }
                }
            }
        }
    }

    async fn compare(&self, manager: &ManagerProxy<'_>, id: &str, got: &[u8]) -> StepResult {
        let _ = manager.ack_message(&self.scope, id).await;
        if got == self.payload.as_slice() {
            Ok(format!("decrypted, {} bytes, as sent", got.len()))
        } else {
            Err(format!(
                "a message arrived but differs from the one sent ({} bytes, not {})",
                got.len(),
                self.payload.len()
            ))
        }
    }

    async fn unsubscribe(&mut self) -> StepResult {
        let removed = self
            .manager()
            .await?
            .unsubscribe(&self.scope)
            .await
            .map_err(err)?;
        self.subscribed = false;
        if removed {
            Ok("removed".into())
        } else {
            Err("the temporary subscription was already gone".into())
        }
    }

    async fn gone(&mut self) -> StepResult {
        // The server may take a moment to forget the channel.
        let deadline = Instant::now() + self.wait;
        loop {
            let resp = self.post(b"gone?").await?;
            match resp.status {
                404 | 410 => return Ok(format!("the endpoint answers {}", resp.status)),
                s if Instant::now() >= deadline => {
                    return Err(format!(
                        "the removed endpoint still answers {s}, not 404 or 410"
                    ))
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}
