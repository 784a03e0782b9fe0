//! `pushctl monitor`: the daemon's signals and state changes, one line each, until
//! interrupted.

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use webpushd::client::{
    AdminProxy, Expired, ExpiredStream, ManagerProxy, Message, MessageStream, QuotaChanged,
    QuotaChangedStream, SubscriptionChanged, SubscriptionChangedStream,
};
use zbus::fdo::{PropertiesChanged, PropertiesChangedStream};
use zbus::zvariant::Value;

use crate::output::{line, meta_json, now_ms, payload_json, preview, say, Out};

/// The daemon's name, the Admin object and its interface.
const ADMIN: (&str, &str, &str) = (
    "org.webpushd.Push1",
    "/org/webpushd/Push1",
    "org.webpushd.Push1.Admin",
);

/// Every stream `monitor` follows.
struct Streams {
    messages: MessageStream,
    changed: SubscriptionChangedStream,
    quota: QuotaChangedStream,
    expired: ExpiredStream,
    state: PropertiesChangedStream,
}

impl Streams {
    async fn open(conn: &zbus::Connection, manager: &ManagerProxy<'_>) -> Result<Streams> {
        let messages = manager.receive_message().await?;
        let changed = manager.receive_subscription_changed().await?;
        let quota = manager.receive_quota_changed().await?;
        let expired = manager.receive_expired().await?;
        // State changes straight from PropertiesChanged, subscribed to before the state is
        // read, so that no change is missed between the two.
        let state = zbus::fdo::PropertiesProxy::builder(conn)
            .destination(ADMIN.0)?
            .path(ADMIN.1)?
            .build()
            .await?
            .receive_properties_changed()
            .await?;
        Ok(Streams {
            messages,
            changed,
            quota,
            expired,
            state,
        })
    }
}

pub async fn monitor(
    conn: &zbus::Connection,
    manager: &ManagerProxy<'_>,
    admin: &AdminProxy<'_>,
    out: &Out,
) -> Result<()> {
    let mut s = Streams::open(conn, manager).await?;
    // The current state first: it also tells a reader that every event from here on
    // will be printed.
    let mut last_state = admin
        .state()
        .await
        .context("asking webpushd for its state")?;
    if !out.json {
        eprintln!("Monitoring; Ctrl-C to stop.");
    }
    emit(
        out,
        "State",
        json!({ "state": last_state }),
        last_state.clone(),
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            Some(m) = s.messages.next() => on_message(out, &m)?,
            Some(m) = s.changed.next() => on_subscription_changed(out, &m)?,
            Some(m) = s.quota.next() => on_quota_changed(out, &m)?,
            Some(m) = s.expired.next() => on_expired(out, &m)?,
            Some(p) = s.state.next() => {
                let Some(v) = new_state(admin, &p).await? else {
                    continue;
                };
                if v != last_state {
                    emit(out, "State", json!({"state": v}), v.clone());
                    last_state = v;
                }
            }
            else => return Ok(()),
        }
    }
}

/// One event: a JSON line with `event` and `time`, or the kind and `text` in columns.
fn emit(out: &Out, kind: &str, fields: Json, text: String) {
    if out.json {
        let mut o = fields;
        o["event"] = json!(kind);
        o["time"] = json!(now_ms());
        line(&serde_json::to_string(&o).expect("json"));
    } else {
        say!("{kind:<20} {text}");
    }
}

fn on_message(out: &Out, m: &Message) -> Result<()> {
    let a = m.args()?;
    let mut f = payload_json(a.payload());
    f["subscription"] = json!(a.subscription().as_str());
    f["scope"] = json!(a.scope());
    f["id"] = json!(a.message_id());
    f["meta"] = meta_json(a.meta());
    emit(
        out,
        "Message",
        f,
        format!("{} {} {}", a.scope(), a.message_id(), preview(a.payload())),
    );
    Ok(())
}

fn on_subscription_changed(out: &Out, m: &SubscriptionChanged) -> Result<()> {
    let a = m.args()?;
    let path = a.subscription().as_str();
    emit_reason(out, "SubscriptionChanged", path, a.scope(), a.reason());
    Ok(())
}

fn on_expired(out: &Out, m: &Expired) -> Result<()> {
    let a = m.args()?;
    let path = a.subscription().as_str();
    emit_reason(out, "Expired", path, a.scope(), a.reason());
    Ok(())
}

/// SubscriptionChanged and Expired: a subscription, its scope and a reason.
fn emit_reason(out: &Out, kind: &str, subscription: &str, scope: &str, reason: &str) {
    emit(
        out,
        kind,
        json!({"subscription": subscription, "scope": scope, "reason": reason}),
        format!("{scope} {reason}"),
    );
}

fn on_quota_changed(out: &Out, m: &QuotaChanged) -> Result<()> {
    let a = m.args()?;
    emit(
        out,
        "QuotaChanged",
        json!({"subscription": a.subscription().as_str(), "scope": a.scope(), "remaining": a.remaining()}),
        format!("{} remaining {}", a.scope(), a.remaining()),
    );
    Ok(())
}

/// The Admin `State` a PropertiesChanged reports, if it reports one.
async fn new_state(admin: &AdminProxy<'_>, p: &PropertiesChanged) -> Result<Option<String>> {
    let a = p.args()?;
    if a.interface_name().as_str() != ADMIN.2 {
        return Ok(None);
    }
    Ok(match a.changed_properties().get("State") {
        Some(Value::Str(v)) => Some(v.to_string()),
        _ if a.invalidated_properties().contains(&"State") => Some(admin.state().await?),
        _ => None,
    })
}
