//! Opening the database: the raw SQLCipher key, refusal of plaintext, mis-keyed or corrupt
//! files (with the key id recorded next to the database), and migrations.

use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::{Result, StoreError};
use crate::crypto::key_id;

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Returns whether a non-empty file existed; refuses an unencrypted SQLite file.
/// Applies `migrations` past `PRAGMA user_version`, each in its own IMMEDIATE transaction
/// (re-checked under the write lock, since another process may migrate meanwhile); `after` runs
/// inside each step's transaction. A database newer than this build is refused.
pub(crate) fn run_migrations(
    conn: &mut Connection,
    migrations: &[&str],
    mut after: impl FnMut(&rusqlite::Transaction<'_>, i64) -> Result<()>,
) -> Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let current = migrations.len() as i64;
    if found > current {
        return Err(StoreError::TooNew {
            found,
            supported: current,
        });
    }
    for (i, sql) in migrations.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now >= version {
            continue;
        }
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Migration { version, source: e })?;
        tx.pragma_update(None, "user_version", version)?;
        after(&tx, version)?;
        tx.commit()?;
    }
    Ok(())
}

/// Opens (creating if absent) a SQLCipher database with a raw 256-bit key: refuses plaintext
/// files, tells a wrong key from a corrupt file, enables WAL with `synchronous=FULL`, keeps the
/// files private.
pub(crate) fn open_keyed(
    path: &Path,
    key: &[u8; 32],
    key_path: &Path,
    busy_timeout_ms: u64,
) -> Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            path: dir.into(),
            source: e,
        })?;
    }
    let existed = refuse_plaintext(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    apply_key(&conn, key)?;
    let db_key_id = db_key_fingerprint(key);
    let sidecar = keyid_path(path);
    let recorded = std::fs::read_to_string(&sidecar)
        .ok()
        .map(|s| s.trim().to_string());
    // The first read decides whether the key is right (SQLCipher: "file is not a database").
    if let Err(e) = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        if e.sqlite_error_code() == Some(ErrorCode::NotADatabase) {
            if existed && recorded.as_deref().is_some_and(|r| r == db_key_id) {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: "the key matches but the file does not decode".into(),
                });
            }
            return Err(StoreError::WrongKey {
                path: path.to_path_buf(),
                key_path: key_path.to_path_buf(),
                key_id: db_key_id,
                expected: recorded,
            });
        }
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        });
    }
    if recorded.is_none() {
        let _ = std::fs::write(&sidecar, format!("{db_key_id}\n"));
    }
    // SQLite gives -wal and -shm the main file's mode: keep all of them private.
    for p in [path, sidecar.as_path()] {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
    }
    conn.busy_timeout(std::time::Duration::from_millis(busy_timeout_ms))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("cannot enable WAL (journal_mode={mode})"),
        });
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY; PRAGMA foreign_keys = ON; \
         PRAGMA secure_delete = ON; PRAGMA cipher_memory_security = OFF; PRAGMA cache_size = -16384;",
    )?;
    Ok(conn)
}

/// Keys a fresh connection with the raw 256-bit key (`x'…'`: no PBKDF2), refusing a SQLite
/// without SQLCipher. Keying sets up SQLCipher's crypto provider (OpenSSL); two threads doing
/// it at once made `PRAGMA key` fail once in a test run ("An error occurred with PRAGMA key or
/// rekey"). Opening is rare (start-up, the CLI, tests, backups), so keying is serialised per
/// process.
static KEYING: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(super) fn apply_key(conn: &Connection, key: &[u8; 32]) -> Result<()> {
    let _one_at_a_time = KEYING.lock().unwrap_or_else(|p| p.into_inner());
    let cipher: Option<String> = conn
        .query_row("PRAGMA cipher_version", [], |r| r.get(0))
        .ok();
    if cipher.as_deref().unwrap_or("").is_empty() {
        return Err(StoreError::NoCipher);
    }
    let key_sql = zeroize::Zeroizing::new(format!(
        "PRAGMA key = \"x'{}'\";",
        hex::encode(key.as_ref())
    ));
    conn.execute_batch(&key_sql)?;
    Ok(())
}

/// Re-encrypts the database of `conn` under `key` (`PRAGMA rekey`, one transaction with a
/// rollback journal: SQLCipher cannot rekey in WAL mode, so the WAL is checkpointed away first
/// and WAL comes back after), then records the new key id beside it.
pub(super) fn rekey(conn: &Connection, path: &Path, key: &[u8; 32]) -> Result<()> {
    let _one_at_a_time = KEYING.lock().unwrap_or_else(|p| p.into_inner());
    let (busy, _, _): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if busy != 0 {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "another connection holds the database: stop the daemon before a rekey".into(),
        });
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("cannot leave WAL for the rekey (journal_mode={mode})"),
        });
    }
    let sql = zeroize::Zeroizing::new(format!(
        "PRAGMA rekey = \"x'{}'\";",
        hex::encode(key.as_ref())
    ));
    let rekeyed = conn.execute_batch(&sql);
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    rekeyed?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("cannot re-enable WAL after the rekey (journal_mode={mode})"),
        });
    }
    let sidecar = keyid_path(path);
    let staged = sidecar.with_extension("keyid.new");
    std::fs::write(&staged, format!("{}\n", db_key_fingerprint(key)))
        .and_then(|()| std::fs::rename(&staged, &sidecar))
        .map_err(|e| StoreError::Io {
            path: sidecar,
            source: e,
        })
}

pub(super) fn refuse_plaintext(path: &Path) -> Result<bool> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(StoreError::Io {
                path: path.into(),
                source: e,
            });
        }
    };
    let mut head = [0u8; 16];
    let n = f.read(&mut head).map_err(|e| StoreError::Io {
        path: path.into(),
        source: e,
    })?;
    if n == 16 && &head == SQLITE_MAGIC {
        return Err(StoreError::Plaintext { path: path.into() });
    }
    Ok(n > 0)
}

pub(super) fn keyid_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".keyid");
    PathBuf::from(s)
}

/// Public id of a database key as recorded next to the database.
pub fn db_key_fingerprint(key: &[u8; 32]) -> String {
    key_id(key, "sqlcipher")
}
