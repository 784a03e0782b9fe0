//! A minimal UnifiedPush connector (UnifiedPush D-Bus specification, versions 2 and 1), as
//! a Linux app embeds one: it owns its service name, serves `org.unifiedpush.Connector2`
//! and `Connector1` at `/org/unifiedpush/Connector`, and appends every call it gets to a
//! JSON-lines file. With `--register TOKEN` it first registers with a distributor.
//!
//! ```text
//! up-connector --name org.example.UpApp --record calls.jsonl \
//!     --register 4f9a…-token [--distributor org.unifiedpush.Distributor.webpushd] [--v1] [--vapid KEY]
//! ```
//!
//! `--unregister TOKEN` unregisters (the distributor confirms with `Unregistered`).
//! `--fail-first N` makes the first N `Message` calls fail; `--idle S` exits after S seconds
//! without calls (as activated apps should).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::sync::Notify;
use zbus::zvariant::{OwnedValue, Value};
use zbus::{fdo, interface};

#[derive(Clone)]
struct Recorder {
    file: PathBuf,
    activity: Arc<Notify>,
    fail_first: Arc<AtomicU32>,
}

impl Recorder {
    fn record(&self, v: serde_json::Value) {
        self.activity.notify_one();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
        {
            let _ = writeln!(f, "{v}");
        }
    }

    fn refuse(&self) -> bool {
        self.fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn text(args: &HashMap<String, OwnedValue>, k: &str) -> String {
    match args.get(k).map(|v| &**v) {
        Some(Value::Str(s)) => s.to_string(),
        _ => String::new(),
    }
}

struct Connector2(Recorder);

#[interface(name = "org.unifiedpush.Connector2")]
impl Connector2 {
    async fn message(
        &self,
        args: HashMap<String, OwnedValue>,
    ) -> fdo::Result<HashMap<String, OwnedValue>> {
        let message: Vec<u8> = match args.get("message").map(|v| &**v) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|b| u8::try_from(b.clone()).ok())
                .collect(),
            _ => return Err(fdo::Error::InvalidArgs("message (ay) is required".into())),
        };
        if self.0.refuse() {
            self.0
                .record(serde_json::json!({"version": 2, "method": "Message", "refused": true}));
            return Err(fdo::Error::Failed("not ready".into()));
        }
        let id = text(&args, "id");
        self.0.record(serde_json::json!({
            "version": 2, "method": "Message", "token": text(&args, "token"),
            "message": b64(&message), "id": id,
        }));
        let mut reply = HashMap::new();
        if args.contains_key("id") {
            reply.insert(
                "id".to_string(),
                Value::from(id).try_to_owned().expect("no fds"),
            );
        }
        Ok(reply)
    }

    async fn new_endpoint(&self, args: HashMap<String, OwnedValue>) -> HashMap<String, OwnedValue> {
        self.0.record(serde_json::json!({
            "version": 2, "method": "NewEndpoint", "token": text(&args, "token"),
            "endpoint": text(&args, "endpoint"),
        }));
        HashMap::new()
    }

    async fn unregistered(&self, args: HashMap<String, OwnedValue>) -> HashMap<String, OwnedValue> {
        self.0.record(serde_json::json!({
            "version": 2, "method": "Unregistered", "token": text(&args, "token"),
        }));
        HashMap::new()
    }
}

struct Connector1(Recorder);

#[interface(name = "org.unifiedpush.Connector1")]
impl Connector1 {
    async fn message(&self, token: &str, message: serde_bytes::ByteBuf, message_identifier: &str) {
        self.0.record(serde_json::json!({
            "version": 1, "method": "Message", "token": token,
            "message": b64(&message), "id": message_identifier,
        }));
    }

    async fn new_endpoint(&self, token: &str, endpoint: &str) {
        self.0.record(serde_json::json!({
            "version": 1, "method": "NewEndpoint", "token": token, "endpoint": endpoint,
        }));
    }

    async fn unregistered(&self, token: &str) {
        self.0
            .record(serde_json::json!({"version": 1, "method": "Unregistered", "token": token}));
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> zbus::Result<()> {
    let mut name = "org.example.UpApp".to_string();
    let mut record = PathBuf::from("up-connector.jsonl");
    let mut fail_first = 0;
    let mut idle = 5u64;
    let mut register: Option<String> = None;
    let mut distributor = "org.unifiedpush.Distributor.webpushd".to_string();
    let mut v1 = false;
    let mut vapid: Option<String> = None;
    let mut unregister: Option<String> = None;
    let mut args = std::env::args().skip(1).filter(|a| !a.is_empty());
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("option needs a value");
        match a.as_str() {
            "--name" => name = value(),
            "--record" => record = value().into(),
            "--fail-first" => fail_first = value().parse().expect("a number"),
            "--idle" => idle = value().parse().expect("seconds"),
            "--register" => register = Some(value()),
            "--distributor" => distributor = value(),
            "--vapid" => vapid = Some(value()),
            "--v1" => v1 = true,
            "--unregister" => unregister = Some(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    let recorder = Recorder {
        file: record,
        activity: Arc::new(Notify::new()),
        fail_first: Arc::new(AtomicU32::new(fail_first)),
    };
    let builder = match std::env::var("DBUS_STARTER_ADDRESS") {
        Ok(addr) => zbus::connection::Builder::address(addr.as_str())?,
        Err(_) => zbus::connection::Builder::session()?,
    };
    let conn = builder
        .serve_at("/org/unifiedpush/Connector", Connector2(recorder.clone()))?
        .serve_at("/org/unifiedpush/Connector", Connector1(recorder.clone()))?
        .name(name.clone())?
        .build()
        .await?;
    if let Some(token) = register {
        let path = "/org/unifiedpush/Distributor";
        let result = if v1 {
            let reply = conn
                .call_method(
                    Some(distributor.as_str()),
                    path,
                    Some("org.unifiedpush.Distributor1"),
                    "Register",
                    &(name.as_str(), token.as_str(), "example connector"),
                )
                .await?;
            let (status, reason): (String, String) = reply.body().deserialize()?;
            serde_json::json!({"method": "RegisterResult", "success": status, "reason": reason})
        } else {
            let mut a: HashMap<&str, Value<'_>> = HashMap::new();
            a.insert("service", Value::from(name.as_str()));
            a.insert("token", Value::from(token.as_str()));
            a.insert("description", Value::from("example connector"));
            if let Some(v) = &vapid {
                a.insert("vapid", Value::from(v.as_str()));
            }
            let reply = conn
                .call_method(
                    Some(distributor.as_str()),
                    path,
                    Some("org.unifiedpush.Distributor2"),
                    "Register",
                    &(a,),
                )
                .await?;
            let r: HashMap<String, OwnedValue> = reply.body().deserialize()?;
            serde_json::json!({"method": "RegisterResult", "success": text(&r, "success"), "reason": text(&r, "reason")})
        };
        recorder.record(result);
    }
    if let Some(token) = unregister {
        let path = "/org/unifiedpush/Distributor";
        if v1 {
            conn.call_method(
                Some(distributor.as_str()),
                path,
                Some("org.unifiedpush.Distributor1"),
                "Unregister",
                &(token.as_str(),),
            )
            .await?;
        } else {
            let a: HashMap<&str, Value<'_>> =
                HashMap::from([("token", Value::from(token.as_str()))]);
            conn.call_method(
                Some(distributor.as_str()),
                path,
                Some("org.unifiedpush.Distributor2"),
                "Unregister",
                &(a,),
            )
            .await?;
        }
    }
    loop {
        if tokio::time::timeout(Duration::from_secs(idle), recorder.activity.notified())
            .await
            .is_err()
        {
            return Ok(());
        }
    }
}
