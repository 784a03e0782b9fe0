//! Schema versions, kept in `PRAGMA user_version`. Each migration is a frozen SQL file; all
//! pending steps run in one IMMEDIATE transaction so a crash mid-upgrade leaves the old schema.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001.sql"),
    include_str!("migrations/002.sql"),
    include_str!("migrations/003.sql"),
    include_str!("migrations/004.sql"),
    include_str!("migrations/005.sql"),
    include_str!("migrations/006.sql"),
    include_str!("migrations/007.sql"),
];

pub const CURRENT: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > CURRENT {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known: CURRENT,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frozen version-1 database upgrades with its rows intact.
    #[test]
    fn version_1_fixture_upgrades_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(crate::store::DB_FILE)).unwrap();
            conn.execute_batch(include_str!("fixtures/schema_v1.sql"))
                .unwrap();
        }
        let (store, moved) = crate::store::Store::open(dir.path()).unwrap();
        assert!(moved.is_none());
        assert_eq!(
            store.uaid().unwrap().unwrap().as_str(),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(store.broadcasts().unwrap().len(), 1);
        let subs = store.subscriptions().unwrap();
        assert_eq!(subs.len(), 1);
        let s = &subs[0];
        assert_eq!(
            (s.id, s.app_id.as_str(), s.scope.as_str()),
            (7, "org.example.Old", "https://old.example/")
        );
        assert_eq!((s.push_count, s.quota, s.expired), (3, 13, false));
        assert_eq!(s.kind, crate::model::Kind::WebPush);
        assert_eq!(s.description, "");
        assert_eq!(s.sandbox, None);
        // Version 7: no reason was recorded for it.
        assert_eq!(s.expired_reason, "");
        // The keys still decrypt RFC 8291's example message.
        let body = crate::crypto::b64("DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN").unwrap();
        let plain =
            crate::crypto::decrypt(&s.keys, &crate::crypto::Encoding::Aes128gcm, &body).unwrap();
        assert_eq!(plain, b"When I grow up, I want to be a watermelon");
        let pending = store.pending(7).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].payload, b"hello");
        // Version 5: not shown as a notification.
        assert!(!pending[0].shown);
        // Version 6: an old `seen` entry is kept for the longest TTL after it came.
        let ch = crate::ids::ChannelId::parse("9d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d").unwrap();
        assert!(store.seen(&ch, "v1").unwrap());
        let came = 1_700_000_000_000;
        store.prune_seen(came + 29 * 24 * 3600 * 1000).unwrap();
        assert!(store.seen(&ch, "v1").unwrap());
    }

    #[test]
    fn from_empty_reaches_current_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, CURRENT);
        conn.execute("INSERT INTO meta (key, value) VALUES ('uaid', 'kept')", [])
            .unwrap();
        // Reopening at the current version changes nothing.
        migrate(&mut conn, &path).unwrap();
        let uaid: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'uaid'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(uaid, "kept");
    }
}
