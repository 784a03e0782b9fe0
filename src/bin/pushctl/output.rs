//! What pushctl prints: aligned, optionally bold text for people, pretty JSON with
//! `--json` (its field names are part of the interface).

use std::collections::HashMap;
use std::io::Write;

use serde_json::{json, Value as Json};
use webpushd::crypto;
use zbus::zvariant::{OwnedValue, Value};

/// Print one line on standard output. A reader that went away (`pushctl … | head -1`)
/// ends pushctl quietly instead of with a panic.
pub fn line(s: &str) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = writeln!(o, "{s}").and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("pushctl: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `line` with `format!` arguments.
macro_rules! say {
    ($($t:tt)*) => { $crate::output::line(&format!($($t)*)) };
}
pub(crate) use say;

pub struct Out {
    pub json: bool,
    pub color: bool,
}

impl Out {
    pub fn bold(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// `Label:` padded to `width` columns; the padding stays outside the colour codes so
    /// the columns line up on a terminal too.
    pub fn label(&self, k: &str, width: usize) -> String {
        let text = format!("{k}:");
        let pad = width.saturating_sub(text.chars().count());
        format!("{}{}", self.bold(&text), " ".repeat(pad))
    }

    pub fn json(&self, v: &Json) {
        line(&serde_json::to_string_pretty(v).expect("json values serialise"));
    }
}

pub use webpushd::clock::now_ms;

/// "3 min ago", "in 5 s", "never".
fn relative(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let delta = now_ms() - ms;
    let (abs, future) = (delta.unsigned_abs() / 1000, delta < 0);
    let text = match abs {
        0..=59 => format!("{abs} s"),
        60..=3599 => format!("{} min", abs / 60),
        3600..=86399 => format!("{} h", abs / 3600),
        _ => format!("{} days", abs / 86400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

pub fn print_one(d: &Json, out: &Out) {
    if out.json {
        out.json(d);
        return;
    }
    let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
    let quota = d["quota"].as_i64().unwrap_or(0);
    let rows = [
        ("Path", s("path")),
        ("App", s("app_id")),
        ("Scope", s("scope")),
        ("Endpoint", s("endpoint")),
        ("P256dh", s("p256dh")),
        ("Auth", s("auth")),
        (
            "Server key",
            if s("application_server_key").is_empty() {
                "none".into()
            } else {
                s("application_server_key")
            },
        ),
        ("Pushes", d["push_count"].to_string()),
        ("Last push", relative(d["last_push"].as_i64().unwrap_or(0))),
        (
            "Quota",
            if quota < 0 {
                "exempt (system)".into()
            } else {
                quota.to_string()
            },
        ),
        (
            "State",
            if d["expired"].as_bool() == Some(true) {
                "expired".into()
            } else {
                "active".into()
            },
        ),
        ("Created", relative(d["created"].as_i64().unwrap_or(0))),
    ];
    let mut rows = rows.to_vec();
    if d["kind"] == "unifiedpush" {
        rows.insert(
            3,
            (
                "Kind",
                "UnifiedPush registration (Scope is its token)".into(),
            ),
        );
        rows.insert(4, ("Service", s("bus_name")));
        rows.insert(5, ("About", s("description")));
    } else if !s("bus_name").is_empty() {
        rows.insert(3, ("Bus name", s("bus_name")));
    }
    for (k, v) in rows {
        say!("{} {v}", out.label(k, 11));
    }
}

pub fn print_list(rows: &[Json], out: &Out) {
    if out.json {
        out.json(&Json::Array(rows.to_vec()));
        return;
    }
    if rows.is_empty() {
        say!("No subscriptions.");
        return;
    }
    let table: Vec<[String; 6]> = rows.iter().map(list_row).collect();
    let header = ["ID", "APP", "SCOPE", "QUOTA", "PUSHES", "LAST PUSH"];
    let mut widths = header.map(str::len);
    for r in &table {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    say!("{}", out.bold(&line(&header.map(String::from))));
    for r in &table {
        say!("{}", line(r));
    }
}

/// One row of the `list` table: ID, APP, SCOPE, QUOTA, PUSHES, LAST PUSH.
fn list_row(d: &Json) -> [String; 6] {
    let id = d["path"]
        .as_str()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    let quota = d["quota"].as_i64().unwrap_or(0);
    [
        id,
        d["app_id"].as_str().unwrap_or("").to_string(),
        // A UnifiedPush registration is known by its service and description.
        if d["kind"] == "unifiedpush" {
            let desc = d["description"].as_str().unwrap_or("");
            let service = d["bus_name"].as_str().unwrap_or("");
            if desc.is_empty() {
                format!("UnifiedPush {service}")
            } else {
                format!("UnifiedPush {service} \u{2014} {desc}")
            }
        } else {
            d["scope"].as_str().unwrap_or("").to_string()
        },
        if quota < 0 {
            "-".into()
        } else {
            quota.to_string()
        },
        d["push_count"].to_string(),
        if d["expired"].as_bool() == Some(true) {
            "expired".into()
        } else {
            relative(d["last_push"].as_i64().unwrap_or(0))
        },
    ]
}

pub fn meta_json(meta: &HashMap<String, OwnedValue>) -> Json {
    let mut m = serde_json::Map::new();
    for (k, v) in meta {
        let j = match &**v {
            Value::Str(s) => json!(s.as_str()),
            Value::I64(n) => json!(n),
            Value::U32(n) => json!(n),
            Value::U64(n) => json!(n),
            Value::I32(n) => json!(n),
            Value::Bool(b) => json!(b),
            other => json!(other.to_string()),
        };
        m.insert(k.clone(), j);
    }
    Json::Object(m)
}

pub fn payload_json(payload: &[u8]) -> Json {
    json!({
        "payload": std::str::from_utf8(payload).ok(),
        "payload_base64": crypto::b64_encode(payload),
    })
}

pub fn print_messages(msgs: &[webpushd::client::FetchedMessage], out: &Out) {
    if out.json {
        let v: Vec<Json> = msgs
            .iter()
            .map(|(id, payload, meta)| {
                let mut o = payload_json(payload);
                o["id"] = json!(id);
                o["meta"] = meta_json(meta);
                o
            })
            .collect();
        out.json(&Json::Array(v));
        return;
    }
    if msgs.is_empty() {
        say!("No pending messages.");
        return;
    }
    for (id, payload, meta) in msgs {
        let received = match meta.get("received_at").map(|v| &**v) {
            Some(Value::I64(t)) => relative(*t),
            _ => "?".into(),
        };
        say!(
            "{} {id}  ({received}, {} bytes)",
            out.bold("Message"),
            payload.len()
        );
        say!("  {}", preview(payload));
    }
}

pub fn preview(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(s) if s.chars().count() > 200 => format!("{}…", s.chars().take(200).collect::<String>()),
        Ok(s) => s.to_string(),
        Err(_) => format!(
            "(binary) {}",
            crypto::b64_encode(&payload[..payload.len().min(150)])
        ),
    }
}
/// The daemon's `Status` dictionary, read leniently: a missing or odd value reads as empty
/// or zero.
pub struct Status(pub HashMap<String, OwnedValue>);

impl Status {
    fn str(&self, k: &str) -> String {
        match self.0.get(k).map(|v| &**v) {
            Some(Value::Str(v)) => v.to_string(),
            _ => String::new(),
        }
    }

    fn num(&self, k: &str) -> i64 {
        match self.0.get(k).map(|v| &**v) {
            Some(Value::I64(n)) => *n,
            Some(Value::U64(n)) => *n as i64,
            Some(Value::U32(n)) => *n as i64,
            Some(Value::I32(n)) => *n as i64,
            _ => 0,
        }
    }
}

pub fn print_status(s: &Status, out: &Out) {
    if out.json {
        out.json(&json!({
            "state": s.str("state"),
            "server": s.str("server"),
            "uaid": s.str("uaid"),
            "version": s.str("version"),
            "subscriptions": s.num("subscriptions"),
            "expired": s.num("expired"),
            "pending_messages": s.num("pending_messages"),
            "messages_received": s.num("messages_received"),
            "connected_since": s.num("connected_since"),
            "last_error": s.str("last_error"),
            "next_retry": s.num("next_retry"),
            "failures": s.num("failures"),
        }));
        return;
    }
    for (k, v) in status_rows(s) {
        say!("{} {v}", out.label(k, 14));
    }
}

fn status_rows(s: &Status) -> Vec<(&'static str, String)> {
    let state = s.str("state");
    let detail = match state.as_str() {
        "connected" => format!("connected (since {})", relative(s.num("connected_since"))),
        "backoff" => format!(
            "backoff (retry {}, {} failures)",
            relative(s.num("next_retry")),
            s.num("failures")
        ),
        other => other.to_string(),
    };
    let uaid = s.str("uaid");
    let uaid = if uaid.is_empty() {
        "none yet".to_string()
    } else {
        format!("{}…", uaid.chars().take(8).collect::<String>())
    };
    let mut rows = vec![
        ("State", detail),
        ("Server", s.str("server")),
        ("UAID", uaid),
        (
            "Subscriptions",
            format!("{} ({} expired)", s.num("subscriptions"), s.num("expired")),
        ),
        ("Pending", format!("{} messages", s.num("pending_messages"))),
        (
            "Received",
            format!("{} messages since start", s.num("messages_received")),
        ),
        ("Version", s.str("version")),
    ];
    let err = s.str("last_error");
    if !err.is_empty() {
        rows.push(("Last error", err));
    }
    rows
}

/// `selftest`: one line per step run, with its time; in JSON, the steps and the verdict.
pub fn print_selftest(r: &webpushd::selftest::Report, out: &Out) {
    if out.json {
        let steps: Vec<Json> = r
            .steps
            .iter()
            .map(|s| {
                json!({
                    "step": s.name,
                    "ok": s.ok,
                    "ms": s.elapsed.as_millis() as u64,
                    "detail": s.detail,
                })
            })
            .collect();
        out.json(&json!({
            "ok": r.ok(),
            "failed_step": r.failed().map(|s| s.name),
            "steps": steps,
        }));
        return;
    }
    for s in &r.steps {
        let mark = if s.ok { "ok  " } else { "FAIL" };
        say!(
            "{mark} {:<12} {:>6} ms  {}",
            s.name,
            s.elapsed.as_millis(),
            s.detail
        );
    }
    if r.ok() {
        say!("the push server works end to end");
    }
}
