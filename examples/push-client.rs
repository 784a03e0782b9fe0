//! A minimal background push receiver: implements `org.webpushd.Push1.Client` so webpushd
//! can start it by D-Bus activation and hand it a message while it is not running.
//!
//! Install a D-Bus service file for your app's name, e.g.
//! `~/.local/share/dbus-1/services/org.example.PushClient.service`:
//!
//! ```ini
//! [D-BUS Service]
//! Name=org.example.PushClient
//! Exec=/path/to/push-client --name org.example.PushClient --record /tmp/pushes.jsonl
//! ```
//!
//! and subscribe with the option `bus_name = "org.example.PushClient"`. Each message is
//! appended to the record file as one JSON line; the successful reply tells webpushd to
//! forget it. `--fail-first N` refuses the first N messages (to see them kept pending).
//! The process exits after `--idle` seconds without messages.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use zbus::zvariant::OwnedValue;
use zbus::{fdo, interface};

struct Client {
    record: PathBuf,
    fail_first: AtomicU32,
    activity: Arc<Notify>,
}

#[interface(name = "org.webpushd.Push1.Client")]
impl Client {
    async fn message(
        &self,
        scope: &str,
        message_id: &str,
        payload: serde_bytes::ByteBuf,
        _meta: HashMap<String, OwnedValue>,
    ) -> fdo::Result<()> {
        self.activity.notify_one();
        if self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(fdo::Error::Failed("not ready yet".into()));
        }
        let line = serde_json::json!({
            "scope": scope,
            "id": message_id,
            "payload": String::from_utf8_lossy(&payload),
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.record)
            .map_err(|e| fdo::Error::Failed(e.to_string()))?;
        writeln!(f, "{line}").map_err(|e| fdo::Error::Failed(e.to_string()))?;
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> zbus::Result<()> {
    let mut name = "org.example.PushClient".to_string();
    let mut record = PathBuf::from("push-client.jsonl");
    let mut fail_first = 0;
    let mut idle = 5u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("option needs a value");
        match a.as_str() {
            "--name" => name = value(),
            "--record" => record = value().into(),
            "--fail-first" => fail_first = value().parse().expect("a number"),
            "--idle" => idle = value().parse().expect("seconds"),
            other => panic!("unknown argument {other}"),
        }
    }
    let activity = Arc::new(Notify::new());
    let client = Client {
        record,
        fail_first: AtomicU32::new(fail_first),
        activity: activity.clone(),
    };
    // Started by activation, the bus tells us its address in DBUS_STARTER_ADDRESS.
    let builder = match std::env::var("DBUS_STARTER_ADDRESS") {
        Ok(addr) => zbus::connection::Builder::address(addr.as_str())?,
        Err(_) => zbus::connection::Builder::session()?,
    };
    // Serve the object before taking the name: activation waits for the name.
    let _conn = builder
        .serve_at("/org/webpushd/Push1/Client", client)?
        .name(name)?
        .build()
        .await?;
    loop {
        if tokio::time::timeout(Duration::from_secs(idle), activity.notified())
            .await
            .is_err()
        {
            return Ok(());
        }
    }
}
