//! Online backup and verified restore of the encrypted database (`hema3n-edge backup`,
//! `hema3n-edge restore`).
//!
//! A backup is one file: `H3NBKUP1`, the manifest (u32 big-endian length + JSON), its ES256
//! signature by the appliance signing key (u16 length + 64 bytes r‖s over
//! `"hema3n-backup/v1\0" ‖ manifest`), then the database: a page-for-page copy taken with
//! SQLite's backup API in one step (one read snapshot, so the copy is consistent while the
//! daemon keeps committing in WAL mode). The copy is SQLCipher-encrypted under the same
//! `db.key`, and every PHI column inside it is still sealed under its case's data key; no key
//! is in the file. The manifest names size, SHA-256, schema version, audit head and the key ids
//! a restore needs, so a restore checks everything before it replaces anything.
//! Format and reasons: `docs/decisions/2026-12-06-backup-and-restore.md`.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, backup};
use serde::{Deserialize, Serialize};

use super::open::{apply_key, db_key_fingerprint, keyid_path, open_keyed};
use super::{Db, Result, StoreError};
use crate::config::Config;
use crate::crypto::Sha256;
use crate::crypto::keyring::{KeySources, Keyring};
use crate::crypto::sign::PublicKey;
use crate::model::{Actor, AuditEvent, Outcome, now_ms};

/// The `format` of a backup manifest.
pub const BACKUP_FORMAT: &str = "hema3n-backup/1";
const MAGIC: &[u8; 8] = b"H3NBKUP1";
/// Domain separation of the manifest signature.
const SIG_DOMAIN: &[u8] = b"hema3n-backup/v1\0";
/// A manifest is a few hundred bytes; anything much larger is not one of ours.
const MAX_MANIFEST: u32 = 64 * 1024;
/// The `meta` row that remembers the last backup (for `check` and `/metrics`).
const META_LAST_BACKUP: &str = "last_backup";

/// What a backup holds, signed by the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupManifest {
    pub format: String,
    pub appliance_id: String,
    /// When the snapshot was taken (ms since the epoch).
    pub created_at_ms: i64,
    /// `PRAGMA user_version` of the copy.
    pub schema_version: i64,
    /// Id of the `db.key` the copy is encrypted under (`storage::db_key_fingerprint`).
    pub db_key_id: String,
    /// Id of the signing key that signed this manifest.
    pub signing_key_id: String,
    /// Length of the database part in bytes.
    pub size: u64,
    /// SHA-256 (hex) of the database part.
    pub sha256: String,
    /// The copy's audit head: last entry, its chain hash (hex), last signed checkpoint.
    pub audit_seq: i64,
    pub audit_head: String,
    pub audit_checkpoint_seq: i64,
}

/// The last backup taken of this database (or restored into it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastBackup {
    pub at_ms: i64,
    pub sha256: String,
    pub size: u64,
}

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    pub manifest: BackupManifest,
    /// Where the database that was replaced now lies (absent when there was none).
    pub previous: Option<PathBuf>,
    /// Audit entries of the restored log, verified after the switch.
    pub audit_entries: u64,
    /// Schema version after migrations (newer than the backup's when this build is newer).
    pub schema_version: i64,
}

fn bad(why: impl Into<String>) -> StoreError {
    StoreError::Backup(why.into())
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// `path` + `suffix` (SQLite names its WAL and shared-memory files this way).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Creates `path` for writing, private (0600), refusing to follow an existing file.
fn create_private(path: &Path) -> Result<File> {
    let _ = std::fs::remove_file(path);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))
}

/// Streams `r` into `w` (when given), returning its length and SHA-256.
fn hash_copy(mut r: impl Read, mut w: Option<&mut dyn Write>) -> std::io::Result<(u64, [u8; 32])> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok((n, h.finish()));
        }
        h.update(&buf[..k]);
        if let Some(w) = w.as_mut() {
            w.write_all(&buf[..k])?;
        }
        n += k as u64;
    }
}

fn signed_message(manifest: &[u8]) -> Vec<u8> {
    [SIG_DOMAIN, manifest].concat()
}

/// The files SQLite keeps beside a database in WAL mode (moved with it, never apart).
const COMPANIONS: [&str; 2] = ["-wal", "-shm"];

/// Removes what a staged database left beside itself: WAL, shared memory, key-id sidecar.
fn remove_companions(db: &Path) {
    for p in COMPANIONS
        .iter()
        .map(|s| with_suffix(db, s))
        .chain([keyid_path(db)])
    {
        let _ = std::fs::remove_file(p);
    }
}

/// Renames `from` to `to` and makes the rename durable.
fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(io(to))?;
    if let Some(dir) = to.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// The exclusive lock the daemon holds on its database for as long as it runs (`<db>.lock`,
/// `flock`): a restore refuses to replace a database in use, and a second daemon on the same
/// database refuses to start. The kernel drops it when the process ends, however it ends.
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
}

impl DaemonLock {
    pub fn acquire(db: &Path) -> Result<DaemonLock> {
        let path = with_suffix(db, ".lock");
        if let Some(dir) = db.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(DaemonLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse { lock: path }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }
}

impl Db {
    /// Writes a signed backup of this database to `out` (atomically: a partial file is never
    /// left under that name), records it in the audit log and as the last backup, and returns
    /// its manifest. Runs beside the daemon: the copy is one read snapshot.
    pub fn backup(&mut self, actor: &Actor, out: &Path) -> Result<BackupManifest> {
        let snapshot = with_suffix(out, ".snapshot");
        let partial = with_suffix(out, ".partial");
        let r = self.write_backup(&snapshot, &partial, out);
        for p in [&snapshot, &partial] {
            let _ = std::fs::remove_file(p);
        }
        let manifest = r?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        record(&tx, &self.st, actor, "backup.create", &manifest)?;
        tx.commit()?;
        Ok(manifest)
    }

    fn write_backup(&self, snapshot: &Path, partial: &Path, out: &Path) -> Result<BackupManifest> {
        let _ = std::fs::remove_file(snapshot);
        let created_at_ms = now_ms();
        // The copy: one backup step over every page holds one read snapshot of the source (a
        // step-by-step copy would restart whenever the daemon commits, forever under load).
        let (schema_version, audit) = {
            let mut dst = Connection::open_with_flags(
                snapshot,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            )?;
            // The copy's own salt is made on first write; the backup API copies decrypted pages
            // between two connections with the same key and settings.
            apply_key(&dst, &self.st.keys.db_key)?;
            {
                let b = backup::Backup::new(&self.conn, &mut dst)?;
                let mut tries = 0;
                loop {
                    match b.step(-1)? {
                        backup::StepResult::Done => break,
                        backup::StepResult::More => continue,
                        // Another connection holds a lock for a moment: wait as a writer would.
                        _ if tries < 500 => {
                            tries += 1;
                            std::thread::sleep(std::time::Duration::from_millis(10));
                        }
                        _ => return Err(bad("the database stayed locked for 5 s")),
                    }
                }
            }
            // Everything in the copy's main file, nothing left in a WAL beside it.
            dst.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
            let v: i64 = dst.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let head: (i64, Vec<u8>, i64) = dst.query_row(
                "SELECT seq, hash, last_checkpoint_seq FROM audit_head WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            (v, head)
        };
        let (size, sha) =
            hash_copy(File::open(snapshot).map_err(io(snapshot))?, None).map_err(io(snapshot))?;
        let keys = &self.st.keys;
        let manifest = BackupManifest {
            format: BACKUP_FORMAT.into(),
            appliance_id: self.st.appliance_id.clone(),
            created_at_ms,
            schema_version,
            db_key_id: db_key_fingerprint(&keys.db_key),
            signing_key_id: keys.signing.public().key_id(),
            size,
            sha256: hex::encode(sha),
            audit_seq: audit.0,
            audit_head: hex::encode(&audit.1),
            audit_checkpoint_seq: audit.2,
        };
        let json = serde_json::to_vec(&manifest).expect("manifest serialises");
        let sig = keys.signing.sign(&signed_message(&json))?;
        let file = create_private(partial)?;
        let mut w = BufWriter::new(file);
        let write = |w: &mut BufWriter<File>| -> std::io::Result<()> {
            w.write_all(MAGIC)?;
            w.write_all(&(json.len() as u32).to_be_bytes())?;
            w.write_all(&json)?;
            w.write_all(&(sig.len() as u16).to_be_bytes())?;
            w.write_all(&sig)?;
            // The snapshot is ours alone (0600, closed): hashed once above, copied as is.
            let n = std::io::copy(&mut File::open(snapshot)?, w)?;
            if n != size {
                return Err(std::io::Error::other("the snapshot changed while copied"));
            }
            w.flush()?;
            w.get_ref().sync_all()
        };
        write(&mut w).map_err(io(partial))?;
        drop(w);
        rename_durable(partial, out)?;
        Ok(manifest)
    }

    /// The last backup taken of (or restored into) this database.
    pub fn last_backup(&self) -> Result<Option<LastBackup>> {
        let v: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [META_LAST_BACKUP],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
    }
}

/// Records a backup taken (`backup.create`) or restored (`backup.restore`): the audit entry
/// and the last-backup row, in the caller's transaction.
fn record(
    tx: &Connection,
    st: &super::State,
    actor: &Actor,
    action: &str,
    m: &BackupManifest,
) -> Result<()> {
    set_last_backup(
        tx,
        &LastBackup {
            at_ms: m.created_at_ms,
            sha256: m.sha256.clone(),
            size: m.size,
        },
    )?;
    let ev = AuditEvent::new(
        actor,
        action,
        format!("backup/{}", &m.sha256[..16]),
        Outcome::Success,
    )
    .details(serde_json::json!({
        "size": m.size,
        "sha256": m.sha256,
        "taken_at_ms": m.created_at_ms,
        "schema_version": m.schema_version,
        "audit_seq": m.audit_seq,
    }));
    super::audit::append(tx, st, &ev, now_ms())?;
    Ok(())
}

fn set_last_backup(conn: &Connection, last: &LastBackup) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        rusqlite::params![META_LAST_BACKUP, serde_json::to_string(last).expect("json")],
    )?;
    Ok(())
}

/// A backup file's manifest, checked against `signer` (the appliance's public key), and the
/// reader positioned at the start of the database part.
pub fn read_backup(
    file: &Path,
    signers: &[PublicKey],
) -> Result<(BackupManifest, BufReader<File>)> {
    let mut r = BufReader::new(File::open(file).map_err(io(file))?);
    let short = |_| bad(format!("{}: not a complete HEMA3N backup", file.display()));
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(short)?;
    if &magic != MAGIC {
        return Err(bad(format!(
            "{}: not a HEMA3N backup (no H3NBKUP1 header)",
            file.display()
        )));
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(short)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_MANIFEST {
        return Err(bad(format!("manifest length {len} exceeds {MAX_MANIFEST}")));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json).map_err(short)?;
    let mut sl = [0u8; 2];
    r.read_exact(&mut sl).map_err(short)?;
    let mut sig = vec![0u8; u16::from_be_bytes(sl) as usize];
    r.read_exact(&mut sig).map_err(short)?;
    // The signature first: nothing of the manifest is believed before it verifies.
    let msg = signed_message(&json);
    if !signers.iter().any(|k| k.verify(&msg, &sig).is_ok()) {
        let claimed = serde_json::from_slice::<BackupManifest>(&json)
            .map(|m| format!(" (it names signing key {})", m.signing_key_id))
            .unwrap_or_default();
        return Err(bad(format!(
            "{}: the manifest signature does not verify under this appliance's signing keys ({}){claimed}: the manifest was changed, or the backup is another appliance's",
            file.display(),
            signers
                .iter()
                .map(PublicKey::key_id)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let m: BackupManifest =
        serde_json::from_slice(&json).map_err(|e| bad(format!("manifest: {e}")))?;
    if m.format != BACKUP_FORMAT {
        return Err(bad(format!(
            "backup format `{}` is not `{BACKUP_FORMAT}`",
            m.format
        )));
    }
    Ok((m, r))
}

enum CopyError {
    Io(std::io::Error),
    Bad(StoreError),
}

/// Streams the database part into `w` (when given) and checks its length and SHA-256.
fn copy_checked(
    m: &BackupManifest,
    data: &mut impl Read,
    w: Option<&mut dyn Write>,
) -> std::result::Result<(), CopyError> {
    let (n, sha) = hash_copy(data.take(m.size + 1), w).map_err(CopyError::Io)?;
    if n != m.size {
        return Err(CopyError::Bad(bad(format!(
            "the database part is {n} bytes, the manifest says {} (truncated or extended)",
            m.size
        ))));
    }
    if hex::encode(sha) != m.sha256 {
        return Err(CopyError::Bad(bad(
            "the database part does not match the manifest's SHA-256 (changed after the backup)",
        )));
    }
    Ok(())
}

/// The keys a backup of this appliance may be signed by: the current signing key and, read from
/// the live database when it opens, the keys it replaced (`keys rotate-signing`).
pub fn backup_signers(cfg: &Config, keys: &Keyring) -> Vec<PublicKey> {
    let mut v = vec![keys.signing.public()];
    let path = cfg.db_path();
    if path.exists()
        && let Ok(conn) = open_keyed(
            &path,
            &keys.db_key,
            &keys.db_key_path,
            cfg.store.busy_timeout_ms,
        )
        && let Ok(former) = super::audit::former_signing_keys(&conn)
    {
        v.extend(former);
    }
    v
}

/// Checks the database part of a backup (after [`read_backup`]) against its manifest.
pub fn check_backup_data(m: &BackupManifest, data: &mut impl Read) -> Result<()> {
    copy_checked(m, data, None).map_err(|e| match e {
        CopyError::Io(e) => bad(format!("reading the backup: {e}")),
        CopyError::Bad(e) => e,
    })
}

/// Verifies `file` completely, then replaces the database of `cfg` with it: the signed manifest
/// (this appliance's key, appliance id, `db.key` id), the database's size and SHA-256, its
/// audit head against the manifest, `PRAGMA integrity_check` and `audit verify` on the copy —
/// all before the live database is touched. The database that was there is kept beside it as
/// `<db>.pre-restore-<ms>`. Refuses while a daemon holds the database ([`DaemonLock`]).
pub fn restore(cfg: &Config, file: &Path, actor: &Actor) -> Result<RestoreReport> {
    let db_path = cfg.db_path();
    let _lock = DaemonLock::acquire(&db_path)?;
    let keys = Keyring::load(KeySources::from_env(&cfg.keys.dir))?;
    let (m, mut data) = read_backup(file, &backup_signers(cfg, &keys))?;
    if m.appliance_id != cfg.appliance_id {
        return Err(bad(format!(
            "the backup is of appliance `{}`, this is `{}`",
            m.appliance_id, cfg.appliance_id
        )));
    }
    let key_id = db_key_fingerprint(&keys.db_key);
    if m.db_key_id != key_id {
        return Err(bad(format!(
            "the backup is encrypted under db.key {} but this appliance's db.key is {key_id} (recover the escrowed keys first)",
            m.db_key_id
        )));
    }
    let staged = with_suffix(&db_path, ".restore");
    let r = stage(&m, &mut data, &staged, cfg, keys);
    if r.is_err() {
        let _ = std::fs::remove_file(&staged);
        remove_companions(&staged);
    }
    r?;
    // The switch: the old files aside (main file with its WAL, so they stay one database),
    // then the verified copy into place.
    let previous = db_path
        .exists()
        .then(|| with_suffix(&db_path, &format!(".pre-restore-{}", now_ms())));
    if let Some(prev) = &previous {
        for s in COMPANIONS.into_iter().chain([""]) {
            let from = with_suffix(&db_path, s);
            if from.exists() {
                rename_durable(&from, &with_suffix(prev, s))?;
            }
        }
    }
    rename_durable(&staged, &db_path)?;
    remove_companions(&staged);
    let keys = Keyring::load(KeySources::from_env(&cfg.keys.dir))?;
    let mut db = Db::open(cfg, keys)?;
    let rep = db.verify_audit()?;
    if !rep.ok() {
        return Err(bad(format!(
            "the restored audit log does not verify: {}",
            rep.findings[0]
        )));
    }
    let tx = db
        .conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    record(&tx, &db.st, actor, "backup.restore", &m)?;
    tx.commit()?;
    Ok(RestoreReport {
        schema_version: db.schema_version()?,
        audit_entries: rep.entries,
        manifest: m,
        previous,
    })
}

/// Writes the database part to `staged` and checks it as a database of its own: length and
/// SHA-256, audit head as signed, integrity check, audit verify (after migrating it when this
/// build is newer). `keys` are the ones the manifest was checked against.
fn stage(
    m: &BackupManifest,
    data: &mut impl Read,
    staged: &Path,
    cfg: &Config,
    keys: Keyring,
) -> Result<()> {
    {
        let mut w = BufWriter::new(create_private(staged)?);
        copy_checked(m, data, Some(&mut w)).map_err(|e| match e {
            CopyError::Io(e) => io(staged)(e),
            CopyError::Bad(e) => e,
        })?;
        w.flush().map_err(io(staged))?;
        w.get_ref().sync_all().map_err(io(staged))?;
    }
    {
        let conn = open_keyed(
            staged,
            &keys.db_key,
            &keys.db_key_path,
            cfg.store.busy_timeout_ms,
        )?;
        let head: (i64, Vec<u8>) =
            conn.query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        if head.0 != m.audit_seq || hex::encode(&head.1) != m.audit_head {
            return Err(bad(format!(
                "the copy's audit head (entry {}) is not the one the manifest signed (entry {})",
                head.0, m.audit_seq
            )));
        }
    }
    let mut staged_cfg = cfg.clone();
    staged_cfg.store.path = Some(staged.to_path_buf());
    let db = Db::open(&staged_cfg, keys)?;
    let problems = db.integrity_check(false)?;
    if !problems.is_empty() {
        return Err(bad(format!(
            "integrity check of the copy: {}",
            problems.join("; ")
        )));
    }
    let rep = db.verify_audit()?;
    if !rep.ok() {
        return Err(bad(format!(
            "audit verify of the copy: {}",
            rep.findings[0]
        )));
    }
    db.wal_checkpoint()?;
    Ok(())
}
