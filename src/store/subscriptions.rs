//! Subscription rows and `SubscriptionRecord`: reading them back (a damaged row is
//! skipped, not fatal), inserting with ids never reused, updating, deleting.

use rusqlite::params;

use super::{Store, StoreError};
use crate::crypto::SubscriptionKeys;
use crate::identity::Sandbox;
use crate::ids::{AppId, ChannelId, Scope};
use crate::model::{Kind, SubscriptionRecord};

/// How a `Kind` is stored: the `kind` and `up_version` columns.
fn kind_columns(kind: Kind) -> (&'static str, i64) {
    match kind {
        Kind::WebPush => ("webpush", 0),
        Kind::UnifiedPush(v) => ("unifiedpush", v as i64),
    }
}

fn kind_from_columns(kind: &str, version: i64) -> Result<Kind, String> {
    match (kind, version) {
        ("webpush", _) => Ok(Kind::WebPush),
        ("unifiedpush", v @ 1..=2) => Ok(Kind::UnifiedPush(v as u8)),
        (k, v) => Err(format!("unknown kind {k:?} version {v}")),
    }
}

/// The plainly typed columns of a subscription row.
struct SubscriptionRecordPartial {
    id: i64,
    endpoint: String,
    app_server_key: Option<Vec<u8>>,
    push_count: u64,
    last_push: i64,
    quota: i32,
    expired: bool,
    expired_reason: String,
    system: bool,
    bus_name: Option<String>,
    created: i64,
    description: String,
}

impl Store {
    pub fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, channel_id, app_id, scope, endpoint, private_key, public_key, auth_secret,
                    app_server_key, push_count, last_push, quota, expired, system, bus_name, created,
                    kind, up_version, description, sandbox, expired_reason
             FROM subscriptions ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            let id: i64 = r.get(0)?;
            // Columns SQLite can type-check; our own validation follows below.
            let raw = (
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(5)?,
                r.get::<_, Vec<u8>>(6)?,
                r.get::<_, Vec<u8>>(7)?,
                r.get::<_, String>(16)?,
                r.get::<_, i64>(17)?,
                r.get::<_, String>(19)?,
            );
            let partial = SubscriptionRecordPartial {
                id,
                endpoint: r.get(4)?,
                app_server_key: r.get(8)?,
                push_count: r.get::<_, i64>(9)?.max(0) as u64,
                last_push: r.get(10)?,
                quota: r.get(11)?,
                expired: r.get(12)?,
                system: r.get(13)?,
                bus_name: r.get(14)?,
                created: r.get(15)?,
                description: r.get(18)?,
                expired_reason: r.get(20)?,
            };
            Ok((partial, raw))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (p, (ch, app, scope, private, public, auth, kind, up_version, sandbox)) = row?;
            let corrupt =
                |what: String| StoreError::Corrupt(format!("subscription {}: {what}", p.id));
            // One damaged row must not stop the daemon (and every restart after it): it is
            // left in the file for inspection and skipped. Its channel, if the server still
            // knows it, is unregistered the first time a message comes for it.
            let record = (|| -> Result<SubscriptionRecord, StoreError> {
                Ok(SubscriptionRecord {
                    id: p.id,
                    channel_id: ChannelId::parse(&ch).map_err(|e| corrupt(e.to_string()))?,
                    app_id: AppId::parse(&app).map_err(|e| corrupt(e.to_string()))?,
                    scope: Scope::parse(&scope).map_err(|e| corrupt(e.to_string()))?,
                    endpoint: p.endpoint,
                    keys: SubscriptionKeys::from_parts(private, public, auth)
                        .map_err(|e| corrupt(e.to_string()))?,
                    app_server_key: p.app_server_key,
                    push_count: p.push_count,
                    last_push: p.last_push,
                    quota: p.quota,
                    expired: p.expired,
                    expired_reason: p.expired_reason,
                    system: p.system,
                    bus_name: p.bus_name,
                    created: p.created,
                    kind: kind_from_columns(&kind, up_version).map_err(corrupt)?,
                    description: p.description,
                    sandbox: Sandbox::parse(&sandbox),
                })
            })();
            match record {
                Ok(r) => out.push(r),
                Err(e) => tracing::error!(error = %e, "a damaged subscription was skipped"),
            }
        }
        Ok(out)
    }

    /// Insert a new subscription; returns its id. Ids are never reused (a deleted
    /// subscription's object path must not come to name another app's subscription), so
    /// the highest id ever given is kept in `meta`.
    pub fn insert_subscription(&mut self, s: &SubscriptionRecord) -> Result<i64, StoreError> {
        self.write(|tx| {
        let last: i64 = tx.query_row(
            "SELECT max(coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_subscription_id'), 0),
                        coalesce((SELECT max(id) FROM subscriptions), 0))",
            [],
            |r| r.get(0),
        )?;
        let id = last + 1;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('last_subscription_id', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [id.to_string()],
        )?;
        tx.execute(
            "INSERT INTO subscriptions (id, channel_id, app_id, scope, endpoint, private_key, public_key,
                 auth_secret, app_server_key, push_count, last_push, quota, expired, system, bus_name, created,
                 kind, up_version, description, sandbox)
             VALUES (?20, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
            params![
                s.channel_id.as_str(),
                s.app_id.as_str(),
                s.scope.as_str(),
                s.endpoint,
                s.keys.private_key(),
                s.keys.public_key(),
                s.keys.auth(),
                s.app_server_key,
                s.push_count as i64,
                s.last_push,
                s.quota,
                s.expired,
                s.system,
                s.bus_name,
                s.created,
                kind_columns(s.kind).0,
                kind_columns(s.kind).1,
                s.description,
                s.sandbox.map_or("", Sandbox::as_str),
                id,
            ],
        )?;
        Ok(id)
        })
    }

    /// Write every mutable field of a subscription (renewal, server reset, quota, expiry).
    pub fn update_subscription(&self, s: &SubscriptionRecord) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute(
                "UPDATE subscriptions SET channel_id = ?2, endpoint = ?3, private_key = ?4,
                 public_key = ?5, auth_secret = ?6, app_server_key = ?7, push_count = ?8,
                 last_push = ?9, quota = ?10, expired = ?11, system = ?12, bus_name = ?13,
                 description = ?14, expired_reason = ?15
             WHERE id = ?1",
                params![
                    s.id,
                    s.channel_id.as_str(),
                    s.endpoint,
                    s.keys.private_key(),
                    s.keys.public_key(),
                    s.keys.auth(),
                    s.app_server_key,
                    s.push_count as i64,
                    s.last_push,
                    s.quota,
                    s.expired,
                    s.system,
                    s.bus_name,
                    s.description,
                    s.expired_reason,
                ],
            )?;
            Ok(())
        })
    }

    /// Delete a subscription, its keys and its pending messages.
    pub fn delete_subscription(&self, id: i64) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute("DELETE FROM subscriptions WHERE id = ?1", [id])?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::examples::{record, CH};

    #[test]
    fn subscription_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let a = store.insert_subscription(&record(CH, "a")).unwrap();
        store.delete_subscription(a).unwrap();
        let b = store
            .insert_subscription(&record("0d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d", "b"))
            .unwrap();
        assert!(b > a, "{b} reuses {a}");
    }
}
