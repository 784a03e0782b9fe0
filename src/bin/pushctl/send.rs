//! The application-server side of `pushctl send`: compose the message, encrypt it, sign
//! VAPID and POST it to the endpoint, as a website's server would.

use std::io::Read;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value as Json};
use webpushd::appserver::{self, SendOptions, SendResponse};
use webpushd::crypto;
use webpushd::vapid::VapidKey;

use crate::args::{is_url, NotificationArgs, SendArgs};
use crate::output::{say, Out};

/// Where `send` posts, and with which keys.
pub struct SendTarget {
    pub endpoint: String,
    pub p256dh: Vec<u8>,
    pub auth: Vec<u8>,
    /// The subscription is restricted to an application server key.
    pub has_key: bool,
}

/// What the push server said, short: the `message` of an autopush JSON error, or the body.
fn server_says(body: &str) -> String {
    let text = serde_json::from_str::<Json>(body)
        .ok()
        .and_then(|j| j["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text
    }
}

fn status_text(status: u16) -> String {
    match hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

/// An endpoint URL given with its keys needs no daemon and no bus: the target, or `None`
/// when `send` names a subscription the daemon must look up.
pub fn endpoint_target(args: &SendArgs) -> Result<Option<SendTarget>> {
    let (true, Some(k), Some(a)) = (is_url(&args.target), &args.p256dh, &args.auth) else {
        return Ok(None);
    };
    let p256dh = crypto::b64(k)
        .ok()
        .filter(|k| k.len() == 65)
        .ok_or_else(|| anyhow!("--p256dh must be the subscription's 65-byte public key, base64url-encoded (87 characters)"))?;
    let auth = crypto::b64(a)
        .ok()
        .filter(|a| a.len() == 16)
        .ok_or_else(|| anyhow!("--auth must be the subscription's 16-byte auth secret, base64url-encoded (22 characters)"))?;
    Ok(Some(SendTarget {
        endpoint: args.target.clone(),
        p256dh,
        auth,
        has_key: false,
    }))
}

/// Encrypt, sign and POST the message to `t`, and say what the push server answered.
pub async fn post(t: SendTarget, args: &SendArgs, out: &Out) -> Result<()> {
    let payload = payload(args)?;
    let key = vapid_key(args)?;
    let opts = SendOptions {
        ttl: args.ttl,
        urgency: args.urgency.clone(),
        topic: args.topic.clone(),
        aesgcm: args.encoding == "aesgcm",
        subject: args.subject.clone(),
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(40),
        appserver::send(&t.endpoint, &t.p256dh, &t.auth, &payload, &key, &opts),
    )
    .await
    .map_err(|_| anyhow!("the push server did not answer"))??;
    let ok = (200..300).contains(&resp.status);
    if out.json {
        out.json(&json!({
            "status": resp.status,
            "location": resp.location,
            "body": resp.body,
        }));
    } else if ok {
        say!(
            "{}: the push server accepted the message",
            status_text(resp.status)
        );
    }
    if ok {
        return Ok(());
    }
    Err(refused(&resp, args, &t))
}

/// The bytes to send: the declarative message, standard input, DATA, or nothing.
fn payload(args: &SendArgs) -> Result<Vec<u8>> {
    Ok(match args.data.as_deref() {
        _ if args.notification.title.is_some() => args
            .notification
            .payload()
            .expect("clap: --title requires --navigate"),
        None => Vec::new(),
        Some("-") => {
            let mut v = Vec::new();
            std::io::stdin()
                .take(1 << 20)
                .read_to_end(&mut v)
                .context("reading the payload from standard input")?;
            v
        }
        Some(s) => s.as_bytes().to_vec(),
    })
}

/// The key of `--vapid-key FILE`, or a fresh one.
fn vapid_key(args: &SendArgs) -> Result<VapidKey> {
    Ok(match &args.vapid_key {
        Some(file) => {
            let pem = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            VapidKey::from_pem(&pem).with_context(|| {
                format!(
                    "{} is not a P-256 private key in PEM (EC PRIVATE KEY or PRIVATE KEY)",
                    file.display()
                )
            })?
        }
        None => VapidKey::generate()?,
    })
}

/// The push server refused: what it said, and what to do where pushctl can tell.
fn refused(resp: &SendResponse, args: &SendArgs, t: &SendTarget) -> anyhow::Error {
    let said = server_says(&resp.body);
    let answer = if said.is_empty() {
        status_text(resp.status)
    } else {
        format!("{}: {said}", status_text(resp.status))
    };
    let advice = match resp.status {
        401 | 403 if args.vapid_key.is_some() => {
            "; the key in --vapid-key FILE is not the one the subscription was created with"
        }
        401 | 403 if t.has_key => {
            "; this subscription only takes pushes signed with its application server key: pass that private key with --vapid-key FILE"
        }
        404 | 410 => "; the subscription is gone: the app must subscribe again",
        413 => "; the payload is too large for the push server (4096 bytes is safe)",
        _ => "",
    };
    anyhow!("the push server refused the message ({answer}){advice}")
}

impl NotificationArgs {
    /// The declarative push message to send, when `--title` was given.
    fn payload(&self) -> Option<Vec<u8>> {
        let (title, navigate) = (self.title.as_ref()?, self.navigate.as_ref()?);
        let mut n = json!({ "title": title, "navigate": navigate });
        if let Some(b) = &self.body {
            n["body"] = json!(b);
        }
        if let Some(t) = &self.tag {
            n["tag"] = json!(t);
        }
        if !self.actions.is_empty() {
            n["actions"] = self
                .actions
                .iter()
                .map(|a| json!({ "action": a.id, "title": a.title, "navigate": a.navigate }))
                .collect();
        }
        if self.require_interaction {
            n["requireInteraction"] = json!(true);
        }
        if self.silent {
            n["silent"] = json!(true);
        }
        let mut m = json!({ "web_push": 8030, "notification": n });
        if let Some(badge) = self.app_badge {
            m["app_badge"] = json!(badge);
        }
        if self.mutable {
            m["mutable"] = json!(true);
        }
        Some(serde_json::to_vec(&m).expect("json values serialise"))
    }
}
