//! The HIPAA Security Rule self-check: one item per technical safeguard of 45 CFR §164.312 plus
//! backups (§164.308(a)(7)) and key ages, each `pass`, `warn` or `fail` with the evidence it
//! checked. [`gather`] reads the facts (configuration, database, key and certificate files);
//! [`evaluate`] applies `rules.rs` (pure: every rule and threshold is unit-tested there). Used by `check --compliance`, by the
//! daemon's `compliance` task (`app::health::ComplianceCheck`: `/metrics` gauges,
//! `GET /api/v1/compliance`, the supervisor view).
//! Evidence holds settings, counts, times and account ids — never PHI.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::crypto::keyring::{KeySources, Keyring};
use crate::lifecycle::{CertExpiry, KeyAge};
use crate::model::iso8601_ms;
use crate::storage::{ComplianceFacts, Db, KeyVersionInfo, LastBackup, StoreError};

pub mod accounting;
mod rules;

/// Items whose facts come from the database (failed when it cannot be read).
const NEEDS_DB: &[&str] = &[
    "unique_user_identification",
    "emergency_access",
    "encryption",
    "audit_controls",
    "integrity",
    "authentication",
    "backups",
    "key_ages",
];

/// One item's verdict; ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
    /// The `/metrics` gauge value and the exit code of `check --compliance` (0, 1, 2 — the
    /// monitoring-plugin convention).
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// One safeguard and what was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// Stable name (`/metrics` label, JSON), e.g. `automatic_logoff`.
    pub id: &'static str,
    /// The regulation paragraph, e.g. `164.312(a)(2)(iii)`.
    pub safeguard: &'static str,
    pub title: &'static str,
    pub status: Status,
    /// What was checked and found, one fact per line.
    pub evidence: Vec<String>,
}

/// Every item at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub evaluated_at: String,
    #[serde(skip)]
    pub evaluated_at_ms: i64,
    pub worst: Status,
    pub items: Vec<Item>,
}

/// Everything [`evaluate`] looks at.
#[derive(Debug, Clone)]
pub struct Facts {
    pub db: ComplianceFacts,
    /// Why the database facts could not be read (then `db` and the lists are empty).
    pub db_error: Option<String>,
    /// `audit verify`: the first finding, or the error that stopped it.
    pub audit: Result<(u64, u64), String>,
    /// `PRAGMA integrity_check` problems, or the error that stopped it.
    pub integrity: Result<Vec<String>, String>,
    pub cipher_version: String,
    /// The database file starts with SQLite's plaintext header.
    pub plaintext_header: bool,
    /// Keys are encrypted credentials (systemd or sealed), not plain files.
    pub keys_sealed: bool,
    pub key_versions: Vec<KeyVersionInfo>,
    pub key_ages: Vec<KeyAge>,
    pub certificates: Vec<CertExpiry>,
    pub last_backup: Option<LastBackup>,
}

/// Reads the facts from the configuration, the open database and the key and certificate
/// files. Runs the full audit verification and `integrity_check` (`quick_check` unless `full`):
/// seconds on a large database, on a read connection of its own in the daemon.
fn gather(cfg: &Config, db: &Db, now: i64, full: bool) -> Result<Facts, StoreError> {
    let audit = match db.verify_audit() {
        Ok(r) if r.ok() => Ok((r.entries, r.checkpoints)),
        Ok(r) => Err(r.findings[0].to_string()),
        Err(e) => Err(e.to_string()),
    };
    let integrity = db.integrity_check(!full).map_err(|e| e.to_string());
    let mut header = [0u8; 16];
    let plaintext_header = std::fs::File::open(db.path())
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .is_ok()
        && &header == b"SQLite format 3\0";
    let keys_sealed = std::env::var_os("CREDENTIALS_DIRECTORY").is_some()
        || crate::crypto::keyring::keys_sealed(&cfg.keys.dir, &cfg.keys.credstore);
    // A damaged database is a finding, not a reason to print nothing: what cannot be read
    // fails the items that need it.
    let read = || -> Result<_, StoreError> {
        Ok((
            db.compliance_facts(crate::crypto::password::HASH_PARAMS_PREFIX)?,
            db.cipher_version()?,
            db.key_versions()?,
            crate::lifecycle::key_ages(cfg, &db.current_key_versions()?, now),
            db.last_backup()?,
        ))
    };
    let (facts, cipher_version, key_versions, key_ages, last_backup, db_error) = match read() {
        Ok((f, c, v, a, b)) => (f, c, v, a, b, None),
        Err(e) => (
            ComplianceFacts::default(),
            String::new(),
            Vec::new(),
            Vec::new(),
            None,
            Some(e.to_string()),
        ),
    };
    Ok(Facts {
        db: facts,
        db_error,
        audit,
        integrity,
        cipher_version,
        plaintext_header,
        keys_sealed,
        key_versions,
        key_ages,
        certificates: crate::lifecycle::certificates(cfg, now),
        last_backup,
    })
}

/// Opens the database on a connection of its own (a WAL reader beside the daemon's writer),
/// gathers and evaluates; `full` runs `integrity_check` instead of `quick_check` (the CLI).
pub fn evaluate_now(cfg: &Config, full: bool) -> Result<Report, StoreError> {
    let keys = Keyring::load(KeySources::from_env(&cfg.keys.dir))?;
    let db = Db::open(cfg, keys)?;
    let now = crate::model::now_ms();
    let facts = gather(cfg, &db, now, full)?;
    Ok(evaluate(cfg, &facts, now))
}

/// The daemon's latest report: the compliance task writes it, `/metrics` and the API read it.
#[derive(Clone)]
pub struct Latest(Arc<watch::Sender<Option<Arc<Report>>>>);

impl Default for Latest {
    fn default() -> Self {
        Latest(Arc::new(watch::Sender::new(None)))
    }
}

impl Latest {
    pub fn get(&self) -> Option<Arc<Report>> {
        self.0.borrow().clone()
    }
    pub fn set(&self, r: Report) {
        self.0.send_replace(Some(Arc::new(r)));
    }
    /// The report, waiting up to `limit` for the first evaluation after start.
    pub async fn wait(&self, limit: Duration) -> Option<Arc<Report>> {
        let mut rx = self.0.subscribe();
        let got = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
        got.ok()?.ok()?.clone()
    }
}

/// Every item from the facts.
pub fn evaluate(cfg: &Config, f: &Facts, now: i64) -> Report {
    let mut items = vec![
        rules::unique_ids(f),
        rules::emergency_access(cfg, f, now),
        rules::automatic_logoff(cfg),
        rules::encryption(cfg, f),
        rules::audit_controls(cfg, f, now),
        rules::integrity(f),
        rules::authentication(cfg, f),
        rules::transmission(cfg, f),
        rules::backups(cfg, f, now),
        rules::key_ages(cfg, f),
    ];
    if let Some(e) = &f.db_error {
        for i in items.iter_mut().filter(|i| NEEDS_DB.contains(&i.id)) {
            i.status = Status::Fail;
            i.evidence.push(format!(
                "FAIL: not evaluated, the database could not be read: {e}"
            ));
        }
    }
    let worst = items.iter().map(|i| i.status).max().unwrap_or(Status::Pass);
    Report {
        evaluated_at: iso8601_ms(now),
        evaluated_at_ms: now,
        worst,
        items,
    }
}
