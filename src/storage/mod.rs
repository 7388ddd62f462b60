//! The encrypted PHI store. The only module that imports `rusqlite`.
//!
//! - [`Db`] owns one SQLCipher connection plus the keyring; every method is one transaction,
//!   and every PHI access writes its audit entry inside that same transaction.
//! - [`Store`] is the async handle: a single owner thread runs jobs sent over a bounded channel
//!   and answers on a oneshot. No database lock is ever held in async code.
//!
//! Invariants: PHI columns hold only field ciphertexts; nothing here logs PHI; a write is
//! reported successful only after COMMIT returned.

pub mod audit;
mod crew;
mod keys;
mod observations;
mod outbox;
mod patients;
pub mod receiver;
pub mod schema;
mod triage;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::config::{AuditConfig, Config};
use crate::crypto::field::DataKey;
use crate::crypto::keyring::{KeyError, Keyring};
use crate::crypto::{CryptoError, key_id};
use crate::model::{AuditEvent, InvalidPhi};

pub use audit::{Finding, VerifyReport};
pub use crew::{
    AuditRow, BreakGlass, BundleState, CaseAlarm, CaseParts, CaseSummary, CaseView, LoginUser,
    Medication, SessionRow, StoredMedication, UserInfo,
};
pub use keys::{KeyVersionInfo, RewrapReport};
pub use observations::{
    ALARM_DEVICE_SILENT, ALARM_DISK_PRESSURE, Alarm, DeviceInfo, IngestItem, IngestOutcome,
    Observation,
};
pub use outbox::{
    OutboxItem, OutboxRow, OutboxSlot, OutboxStats, ReceiptOutcome, SealWork, outbox_priority,
};

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Unwrapped data keys kept in memory by the owner thread.
const DATA_KEY_CACHE: usize = 4096;

/// Errors of the store. [`StoreError::is_config`] tells the ones that mean "fix the setup"
/// (exit 78) from runtime failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file is an unencrypted SQLite database. Recovery: none automatic; PHI must not be
    /// stored in it. Move it away and let the daemon create an encrypted one.
    #[error(
        "database {path} is an unencrypted SQLite file; refusing to use it for PHI (move it away; a new encrypted database will be created)"
    )]
    Plaintext { path: PathBuf },
    /// The database key does not open the file. Recovery: restore the right `db.key`.
    #[error("database key `db.key` from {key_path} (key id {key_id}) does not open {path}{}; restore the db.key this database was created with (never delete the database)", expected.as_ref().map(|e| format!(": the database was created with key id {e}")).unwrap_or_default())]
    WrongKey {
        path: PathBuf,
        key_path: PathBuf,
        key_id: String,
        expected: Option<String>,
    },
    /// The key matches but the file does not decode. Recovery: restore from backup.
    #[error(
        "database {path} is corrupt or not an HEMA3N database ({detail}); restore it from backup"
    )]
    Corrupt { path: PathBuf, detail: String },
    /// The linked SQLite has no SQLCipher. Recovery: rebuild; this is a packaging bug.
    #[error("the linked SQLite library has no SQLCipher support")]
    NoCipher,
    /// The database is newer than this binary. Recovery: install the newer release.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    TooNew { found: i64, supported: i64 },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("invalid PHI: {0}")]
    InvalidPhi(#[from] InvalidPhi),
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// The case's data key was destroyed; its PHI is gone by design.
    #[error("{kind} {id} was crypto-erased")]
    Erased { kind: &'static str, id: String },
    /// No key for a territory is loaded. Recovery: provision `territory.<T>.v1.key`.
    #[error("no key for territory `{territory}` is loaded; provision territory.{territory}.v1.key")]
    NoTerritoryKey { territory: String },
    /// A data key names a territory key version that is not loaded.
    #[error(
        "territory `{territory}` key version {version} is needed but not loaded; restore territory.{territory}.v{version}.key"
    )]
    KeyVersionMissing { territory: String, version: u32 },
    /// A loaded territory key differs from the one the database recorded for that version.
    #[error(
        "territory `{territory}` key version {version} (key id {loaded}) differs from the key this database recorded (key id {recorded}); restore the original key file"
    )]
    KeyMismatch {
        territory: String,
        version: u32,
        loaded: String,
        recorded: String,
    },
    /// An operation is not allowed in the current state (for example retiring a key in use).
    #[error("{0}")]
    Refused(String),
    #[error("cannot create data directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("migration to schema version {version} failed")]
    Migration {
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The storage thread is gone (shutting down or crashed). Recovery: retry after restart.
    #[error("storage thread is not running")]
    Closed,
}

impl StoreError {
    /// True when another writer held the database lock past the busy timeout (retry later).
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }

    /// True for errors that a restart cannot fix: wrong/missing keys, plaintext or corrupt
    /// database. The daemon exits 78 on these so systemd does not restart-loop.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StoreError::Plaintext { .. }
                | StoreError::WrongKey { .. }
                | StoreError::Corrupt { .. }
                | StoreError::NoCipher
                | StoreError::TooNew { .. }
                | StoreError::Key(_)
                | StoreError::NoTerritoryKey { .. }
                | StoreError::KeyMismatch { .. }
                | StoreError::Io { .. }
        )
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// State the owner thread keeps next to the connection.
pub(crate) struct State {
    pub keys: Keyring,
    pub appliance_id: String,
    pub audit_cfg: AuditConfig,
    dk_cache: HashMap<i64, Arc<DataKey>>,
}

/// One open, keyed, migrated database.
pub struct Db {
    conn: Connection,
    st: State,
    path: PathBuf,
}

impl Db {
    /// Opens (creating if absent) the database of `cfg` with the keys of `keys`.
    pub fn open(cfg: &Config, keys: Keyring) -> Result<Db> {
        let path = cfg.db_path();
        let conn = open_keyed(
            &path,
            &keys.db_key,
            &keys.db_key_path,
            cfg.store.busy_timeout_ms,
        )?;
        let mut db = Db {
            conn,
            st: State {
                keys,
                appliance_id: cfg.appliance_id.clone(),
                audit_cfg: cfg.audit.clone(),
                dk_cache: HashMap::new(),
            },
            path,
        };
        db.migrate()?;
        db.register_key_versions()?;
        Ok(db)
    }

    fn migrate(&mut self) -> Result<()> {
        let st = &self.st;
        run_migrations(&mut self.conn, schema::MIGRATIONS, |tx, version| {
            if version == 1 {
                audit::init_head(tx, &st.appliance_id)?;
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('appliance_id', ?1)",
                    [&st.appliance_id],
                )?;
            }
            let ev = AuditEvent::new(
                &crate::model::Actor::system(),
                "store.migrate",
                format!("schema/{version}"),
                crate::model::Outcome::Success,
            );
            audit::append(tx, st, &ev, crate::model::now_ms())?;
            tracing::info!(version, "database migrated");
            Ok(())
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keyring this database was opened with.
    pub fn keys(&self) -> &Keyring {
        &self.st.keys
    }

    /// Schema version.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// SQLCipher version string.
    pub fn cipher_version(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA cipher_version", [], |r| r.get(0))?)
    }

    /// `PRAGMA integrity_check` (full) or `quick_check`; returns the problems found.
    pub fn integrity_check(&self, quick: bool) -> Result<Vec<String>> {
        let sql = if quick {
            "PRAGMA quick_check"
        } else {
            "PRAGMA integrity_check"
        };
        let mut st = self.conn.prepare(sql)?;
        let rows: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    /// A cheap liveness probe used by the watchdog: one read on the connection.
    pub fn ping(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT seq FROM audit_head WHERE id = 1", [], |r| r.get(0))?)
    }

    /// Writes a standalone audit event (security events that touch no other row).
    pub fn audit(&mut self, ev: &AuditEvent) -> Result<i64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq = audit::append(&tx, &self.st, ev, crate::model::now_ms())?;
        tx.commit()?;
        Ok(seq)
    }

    /// Writes many standalone audit events in one transaction (group commit).
    pub fn audit_many(&mut self, evs: &[AuditEvent]) -> Result<i64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = crate::model::now_ms();
        let mut seq = 0;
        for ev in evs {
            seq = audit::append(&tx, &self.st, ev, now)?;
        }
        tx.commit()?;
        Ok(seq)
    }

    /// Signs a checkpoint if new entries exist and the time interval passed (or `force`).
    pub fn checkpoint_audit_if_due(&mut self, now_ms: i64, force: bool) -> Result<Option<i64>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let r = audit::checkpoint_if_due(&tx, &self.st, now_ms, force)?;
        tx.commit()?;
        Ok(r)
    }

    /// Verifies the whole audit log against the audit key and the appliance public key.
    pub fn verify_audit(&self) -> Result<VerifyReport> {
        audit::verify(&self.conn, &self.st.keys, &self.st.appliance_id)
    }

    /// Checkpoints the WAL into the main file (used at shutdown).
    pub fn wal_checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Raw connection for tests of tamper detection; not for product code.
    #[doc(hidden)]
    pub fn raw_connection_for_tests(&self) -> &Connection {
        &self.conn
    }
}

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

fn refuse_plaintext(path: &Path) -> Result<bool> {
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

fn keyid_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".keyid");
    PathBuf::from(s)
}

/// Public id of a database key as recorded next to the database.
pub fn db_key_fingerprint(key: &[u8; 32]) -> String {
    key_id(key, "sqlcipher")
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// Async handle to the storage owner thread. Cloning is cheap; the thread ends when the last
/// handle is dropped, after checkpointing the WAL.
#[derive(Clone)]
pub struct Store {
    /// Jobs for the owner thread, which holds the receiving end.
    jobs: mpsc::Sender<Job>,
}

impl Store {
    /// Moves `db` onto its own thread. Returns the handle and the thread to join at shutdown.
    pub fn spawn(db: Db, capacity: usize) -> (Store, std::thread::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Job>(capacity);
        let handle = std::thread::Builder::new()
            .name("storage".into())
            .spawn(move || {
                let mut db = db;
                while let Some(job) = rx.blocking_recv() {
                    job(&mut db);
                }
                if let Err(e) = db.wal_checkpoint() {
                    tracing::warn!(error = %e, "final WAL checkpoint failed");
                }
                tracing::info!("storage closed");
            })
            .expect("spawn storage thread");
        (Store { jobs: tx }, handle)
    }

    /// Runs `f` on the owner thread and returns its result. Waits when the queue is full.
    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            let _ = reply.send(f(db));
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

pub use patients::PatientQuery;
