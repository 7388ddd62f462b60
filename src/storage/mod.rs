//! The encrypted PHI store. The only module that imports `rusqlite`.
//!
//! - [`Db`] owns one SQLCipher connection plus the keyring; every method is one transaction,
//!   and every PHI access writes its audit entry inside that same transaction.
//! - [`Store`] (`store.rs`) is the async handle: a single owner thread runs jobs sent over a
//!   bounded channel and answers on a oneshot. No database lock is ever held in async code.
//!
//! One file per aggregate, each owning its tables: `accounts` (users, sessions, break-glass),
//! `attachments` (sealed content chunks, views) with `attachment_upload` (resumable uploads,
//! storing a completed one) and `attachment_sync` (queuing its parts),
//! `patients`, `cases` (cases, medications, the case view), `devices`, `alarms`,
//! `observations` (readings, the ingest batch, dead letters), `readings` (the row codec), `triage`, `outbox` (custody:
//! sealing, receipts, purge), `audit` (the hash chain and its checkpoints), `keys` (key
//! versions, data keys, rotation), `receiver` (the cloud receiver's store: [`receiver::ReceiverStore`], the embedded SQLCipher one) with `receiver_files` (its attachments) and `pg` (the shared PostgreSQL one, the only importer of `postgres`); `open`
//! (keying, refusal of plaintext or mis-keyed files, migrations), `schema`, `error`.
//!
//! Invariants: PHI columns hold only field ciphertexts; nothing here logs PHI; a write is
//! reported successful only after COMMIT returned.
mod accounts;
mod alarms;
mod attachment_sync;
mod attachment_upload;
mod attachments;
pub mod audit;
mod backup;
mod cases;
mod codes;
mod compliance;
mod devices;
mod edits;
mod error;
mod grants;
mod handoff;
mod keys;
mod observations;
mod open;
mod outbox;
mod patients;
pub mod pg;
mod prealerts;
mod readings;
pub mod receiver;
pub mod receiver_audit;
pub mod receiver_files;
mod record;
pub mod schema;
mod sealing;
mod store;
mod triage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;

use crate::config::{AuditConfig, Config};
use crate::crypto::field::DataKey;
use crate::crypto::keyring::Keyring;
use crate::model::AuditEvent;

pub use accounts::{BreakGlass, Grant, LoginUser, SessionRow, UserInfo};
pub use alarms::Alarm;
pub use attachment_sync::AttachmentPart;
pub use attachment_upload::NewAttachment;
pub use attachments::{AttachmentOpen, CHUNK_BYTES, Rendition};
pub use audit::{AuditFilter, AuditRow, Finding, VerifyReport};
pub use backup::{
    BACKUP_FORMAT, BackupManifest, DaemonLock, LastBackup, RestoreReport, backup_signers,
    check_backup_data, read_backup, restore,
};
pub use cases::{BundleState, CaseAlarm, CaseParts, CaseSummary, CaseView};
pub use compliance::ComplianceFacts;
pub use devices::DeviceInfo;
pub use edits::VoidedReading;
pub use error::{Result, StoreError};
pub use grants::{AccessGrant, GrantCheck, NewGrant};
pub use handoff::TransferOfCare;
pub use keys::{CurrentKeyVersion, KeyVersionInfo, RewrapReport};
pub use observations::{IngestItem, IngestOutcome, Observation};
pub use outbox::{
    OutboxItem, OutboxRow, OutboxSlot, OutboxStats, ReceiptOutcome, SealWork, outbox_priority,
};

/// What a WAL checkpoint did: frames in the WAL, frames now in the database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalCheckpoint {
    /// Another checkpoint was running.
    pub busy: bool,
    pub wal_frames: i64,
    pub checkpointed: i64,
}

/// Size a WAL file is cut back to after a reset (SQLite's `journal_size_limit`).
const WAL_KEEP_BYTES: i64 = 64 << 20;

/// Unwrapped data keys kept in memory by the owner thread.
const DATA_KEY_CACHE: usize = 4096;

/// State the owner thread keeps next to the connection.
pub(crate) struct State {
    pub keys: Keyring,
    pub appliance_id: String,
    pub audit_cfg: AuditConfig,
    dk_cache: HashMap<i64, Arc<DataKey>>,
    /// Bumped whenever a data key is destroyed, shared by the writer and its readers: a reader
    /// that sees it move drops its cached keys (a crypto-erase leaves no key in any cache).
    erased: Arc<AtomicU64>,
    erased_seen: u64,
    /// A reader's state: never records anything (the writer does).
    reader: bool,
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
                erased: Arc::new(AtomicU64::new(0)),
                erased_seen: 0,
                reader: false,
            },
            path,
        };
        db.migrate()?;
        db.register_key_versions()?;
        Ok(db)
    }

    fn migrate(&mut self) -> Result<()> {
        let st = &mut self.st;
        run_migrations(&mut self.conn, schema::MIGRATIONS, |tx, version| {
            if version == 1 {
                audit::init_head(tx, &st.appliance_id)?;
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('appliance_id', ?1)",
                    [&st.appliance_id],
                )?;
            }
            if version == 4 {
                let n = outbox::canonicalize_pending(tx)?;
                tracing::info!(envelopes = n, "envelope signatures made canonical (low-S)");
            }
            if version == 6 {
                let n = accounts::seal_break_glass_text(st, tx)?;
                tracing::info!(uses = n, "break-glass reasons sealed");
            }
            if version == 8 {
                let n = record::legacy_medications_to_record(st, tx)?;
                tracing::info!(
                    medications = n,
                    "free-text medications carried into the care record"
                );
            }
            if version == 7 {
                let n = readings::bind_semantic_columns(st, tx)?;
                tracing::info!(values = n, "sealed values bound to their semantic columns");
            }
            let ev = AuditEvent::new(
                &crate::model::Actor::system(),
                "store.migrate",
                format!("schema/{version}"),
                crate::model::Outcome::Success,
            );
            if version == audit::SUBJECTS_SCHEMA {
                let n = audit::backfill_subjects(tx)?;
                tracing::info!(rows = n, "audit query index filled");
            }
            // Before v12 the log has no `chain` column: those entries follow chain v1.
            let rule = audit::Rule::at_schema(version);
            let mut trail = audit::Appender::start(tx)?;
            trail.append_as(tx, st, &ev, crate::model::now_ms(), rule)?;
            trail.finish(tx)?;
            tracing::info!(version, "database migrated");
            Ok(())
        })
    }

    /// A read-only connection to the same file for a reader thread of [`Store`]: its own
    /// keyring (loaded from the same sources) and data-key cache, sharing the writer's erase
    /// counter.
    pub fn open_reader(&self) -> Result<Db> {
        let keys = Keyring::load(self.st.keys.sources.clone())?;
        let busy: i64 = self
            .conn
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))?;
        let conn = open_keyed(
            &self.path,
            &keys.db_key,
            &keys.db_key_path,
            busy.max(0) as u64,
        )?;
        conn.execute_batch("PRAGMA query_only = ON;")?;
        Ok(Db {
            conn,
            st: State {
                keys,
                appliance_id: self.st.appliance_id.clone(),
                audit_cfg: self.st.audit_cfg.clone(),
                dk_cache: HashMap::new(),
                erased: self.st.erased.clone(),
                erased_seen: self.st.erased.load(Ordering::SeqCst),
                reader: true,
            },
            path: self.path.clone(),
        })
    }

    /// Drops cached data keys when any was destroyed since the last look (readers call this
    /// before and after each job).
    pub(crate) fn forget_erased_keys(&mut self) {
        let now = self.st.erased.load(Ordering::SeqCst);
        if now != self.st.erased_seen {
            self.st.dk_cache.clear();
            self.st.erased_seen = now;
        }
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

    /// Leaves WAL checkpoints to [`Db::checkpoint_wal`] on another connection: no commit of
    /// this one runs SQLite's automatic checkpoint any more (the daemon's writer, whose
    /// commits ingest and audited reads wait on). A WAL reset after a full checkpoint is cut
    /// back to `WAL_KEEP_BYTES`.
    pub fn defer_wal_checkpoints(&self) -> Result<()> {
        self.conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {WAL_KEEP_BYTES};"
        ))?;
        Ok(())
    }

    /// One PASSIVE checkpoint (never waits for, nor blocks, the writer or readers): copies
    /// what it can of the WAL into the database file.
    pub fn checkpoint_wal(&self) -> Result<WalCheckpoint> {
        Ok(self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok(WalCheckpoint {
                    busy: r.get::<_, i64>(0)? != 0,
                    wal_frames: r.get(1)?,
                    checkpointed: r.get(2)?,
                })
            })?)
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

pub use open::db_key_fingerprint;
pub(crate) use open::{open_keyed, run_migrations};
pub use patients::PatientQuery;
pub use record::{EntryWritten, REQUEST_KEY_TTL_MS, WriteOpts, valid_request_key};
pub use sealing::{BundleExport, Export, Queued};
pub use store::{Audited, Owned, Owner, Store, join as join_owner};

/// For unit tests: a database as `init` creates it in `dir`, opened with its keys.
#[cfg(test)]
pub(crate) fn test_db(dir: &Path) -> Db {
    let state = dir.join("state");
    crate::cli::init(&state, "t-1", "default", &[]).expect("init");
    let (cfg, _) = crate::config::Config::load(&state.join("edge.toml"), true).unwrap();
    let keys = Keyring::load(crate::crypto::keyring::KeySources::from_env(&cfg.keys.dir)).unwrap();
    Db::open(&cfg, keys).unwrap()
}
