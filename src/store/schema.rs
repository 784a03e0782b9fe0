//! Schema versions, kept in `PRAGMA user_version`. Each migration is a frozen SQL file; all
//! pending steps run in one IMMEDIATE transaction so a crash mid-upgrade leaves the old schema.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[include_str!("migrations/001.sql")];

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
