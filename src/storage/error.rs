//! The store's errors ([`StoreError`]): each variant says how the caller recovers;
//! [`StoreError::is_config`] tells "fix the setup" (exit 78) from runtime failures.

use std::path::PathBuf;

use crate::crypto::CryptoError;
use crate::crypto::keyring::KeyError;
use crate::model::InvalidPhi;

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
    /// The record exists already (an account, a device). Recovery: use the existing one or
    /// choose another id.
    #[error("{kind} `{id}` already exists")]
    AlreadyExists { kind: &'static str, id: String },
    /// The case is closed: nothing can be added to it, bound to it or closed again. Recovery:
    /// open a new case.
    #[error("case {case_id} is closed")]
    CaseClosed { case_id: String },
    /// An identifier is malformed. Recovery: use one matching `[A-Za-z0-9._-]{1,64}`.
    #[error("`{id}` is not a valid {kind} id ([A-Za-z0-9._-]{{1,64}})")]
    InvalidId { kind: &'static str, id: String },
    /// A device of one territory and a case of another. Recovery: bind a device of the case's
    /// territory.
    #[error(
        "device `{device}` belongs to territory `{device_territory}`, the case to `{case_territory}`"
    )]
    TerritoryMismatch {
        device: String,
        device_territory: String,
        case_territory: String,
    },
    /// The device is bound to no case. Recovery: none needed.
    /// Every case of the patient is closed (its bundle sealed). Recovery: correct the record
    /// at the receiving hospital, or open a new case.
    #[error("patient {id}: every case is closed and sent; the record is final here")]
    RecordFinal { id: String },
    /// A territory this appliance holds no key for (so no records either).
    #[error("territory `{territory}` is not kept on this appliance")]
    UnknownTerritory { territory: String },
    /// The device is bound to another open case. Recovery: unbind it there first.
    #[error("device `{device}` is bound to open case {case_id}; unbind it there first")]
    AlreadyBound { device: String, case_id: String },
    #[error("device `{device}` is not bound")]
    NotBound { device: String },
    /// An access grant for a user of the record's own territory. Recovery: none needed, the
    /// user's role already decides.
    #[error("user `{user}` belongs to this territory; a grant is only for users of another")]
    GrantNotNeeded { user: String },
    /// A supervisor tried to review their own break-glass use. Recovery: another supervisor
    /// reviews it.
    #[error("a break-glass use must be reviewed by another supervisor")]
    OwnReview,
    /// The break-glass use was reviewed already. Recovery: none needed.
    #[error("break-glass use {id} is already reviewed")]
    AlreadyReviewed { id: i64 },
    /// A patient search named no criterion. Recovery: give a last name, a date of birth or an
    /// MRN.
    /// A record entry failed validation. Recovery: fix the named field.
    #[error("{0}")]
    InvalidRecord(crate::model::record::FieldError),
    /// The client edited an older version than the current one (`If-Match`). Recovery: read
    /// the current version, re-apply the change, send again.
    #[error(
        "{what} changed since you read it (now version {current}); reload and apply your change again"
    )]
    Stale { what: String, current: i64 },
    #[error("a patient search needs at least one of last name, date of birth, MRN")]
    EmptySearch,
    /// A territory key version cannot be retired yet. Recovery: `keys rotate` (when it is the
    /// current version) or `keys rewrap --territory T` (while it still wraps data keys) first.
    #[error("territory `{territory}` key version {version} {why}")]
    KeyInUse {
        territory: String,
        version: u32,
        why: String,
    },
    /// A rotated key was written where the keyring does not read. Recovery: point `keys.dir`
    /// at the directory named.
    #[error(
        "wrote {file} to {dir} but it is not among the key sources ({sources}); point keys.dir there"
    )]
    KeyOutsideSources {
        file: String,
        dir: PathBuf,
        sources: String,
    },
    /// A stored value does not decode: corruption or a bug, never the caller's input.
    /// Recovery: restore the database from backup and report it.
    #[error("{what} does not decode")]
    Undecodable { what: String },
    /// Sealing an envelope failed (the sealer logs the case and skips it). Recovery: none at
    /// the caller; the log names the cause.
    #[error("sealing the {kind} failed: {why}")]
    Seal { kind: &'static str, why: String },
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
    /// Attachment content was refused by its bytes (type, kind, truncation, malformed).
    /// Nothing of it is kept. Recovery: attach the complete file of an accepted type.
    #[error("{0}")]
    Media(#[from] crate::media::MediaError),
    /// An attachment limit would be exceeded. Recovery: a smaller file, or raise
    /// `[attachments]` limits.
    #[error("{what}")]
    AttachmentTooLarge { what: String },
    /// An upload piece does not continue where the stored bytes end. Recovery: ask for the
    /// attachment's `received` offset and resume from there.
    #[error("the upload continues at byte {expected}, not {got}")]
    UploadOffset { expected: u64, got: u64 },
    /// The attachment is still arriving (or already stored) for what was asked. Recovery:
    /// finish the upload first, or nothing (it is stored).
    #[error("attachment {id} is {state}")]
    AttachmentState { id: String, state: &'static str },
    /// Stored content chunks are missing or extra: rows were deleted or added behind the
    /// daemon's back. Recovery: none for this file; treat as tampering.
    #[error("attachment {id} has {found} of its {expected} content chunks (truncated or padded)")]
    AttachmentTruncated {
        id: String,
        found: u64,
        expected: u64,
    },
    #[error("backup: {0}")]
    Backup(String),
    #[error("the database is in use by a running daemon ({} is locked); stop it first (systemctl stop hema3n-edge)", lock.display())]
    InUse { lock: PathBuf },
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The shared PostgreSQL store failed (connection lost, server restarting, a query
    /// refused). Recovery: the receiver leaves the broker and reconnects with back-off; what it
    /// had not acknowledged is redelivered.
    #[error("PostgreSQL {what}: {why}")]
    Postgres {
        what: &'static str,
        why: String,
        /// The server's SQLSTATE, when the server answered (empty for a lost connection).
        sqlstate: String,
    },
    /// The PostgreSQL store cannot be used as configured (authentication refused, a schema
    /// newer than this receiver, a data key wrapped by another receiver key). Recovery: fix
    /// the setup (exit 78).
    #[error("PostgreSQL setup: {0}")]
    PostgresSetup(String),
    /// The storage thread is gone (shutting down or crashed). Recovery: retry after restart.
    #[error("storage thread is not running")]
    Closed,
}

impl StoreError {
    /// True when the failure is the database's or the process's (disk full, I/O, corrupt file,
    /// storage thread gone) rather than the data's: retrying other work will fail the same way.
    /// Data-dependent errors (a missing territory key, an erased record, a refused seal) concern
    /// one item and let a batch continue with the others.
    pub fn is_systemic(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(_)
                | StoreError::Postgres { .. }
                | StoreError::PostgresSetup(_)
                | StoreError::Closed
                | StoreError::Io { .. }
                | StoreError::Migration { .. }
                | StoreError::Plaintext { .. }
                | StoreError::WrongKey { .. }
                | StoreError::Corrupt { .. }
                | StoreError::NoCipher
                | StoreError::TooNew { .. }
        )
    }

    /// True when another writer held the database lock past the busy timeout (retry later).
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }

    /// True when SQLite found no room on the disk (`SQLITE_FULL`): the transaction rolled back
    /// whole, nothing of it is stored.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DiskFull
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
                | StoreError::PostgresSetup(_)
        )
    }

    /// True when the store is only unavailable for now (a shared database's connection was
    /// lost): the receiver backs off and reconnects instead of exiting.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Postgres { .. })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
