//! The cloud receiver's store: registered appliance keys, received bundles (FHIR JSON), rejects
//! and conflict alarms. Idempotent on (appliance id, bundle id): a resend of the same envelope
//! is a duplicate; the same id with another envelope is a conflict, raising one alarm per
//! distinct envelope. [`ReceiverStore`] is what the receiver needs of a store; [`ReceiverDb`]
//! is the embedded one (one receiver, SQLCipher file), `storage::pg` the shared one.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::receiver_audit as audit_sql;
pub use super::receiver_audit::{AuditVerdict, KnownCheckpoint};
use super::{Result, StoreError, open_keyed, run_migrations};
use crate::model::now_ms;

/// A rejected envelope: topic, appliance id (when it could be read), code, message, SHA-256.
pub type EnvelopeReject = (String, Option<String>, String, String, [u8; 32]);

const RECEIVER_MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE appliances (
    id            TEXT    PRIMARY KEY,
    public_key    TEXT    NOT NULL,
    registered_at INTEGER NOT NULL,
    revoked_at    INTEGER
) STRICT;

CREATE TABLE bundles (
    appliance_id    TEXT    NOT NULL,
    bundle_id       TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    kind            TEXT    NOT NULL,
    envelope_sha256 BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    received_at     INTEGER NOT NULL,
    resends         INTEGER NOT NULL DEFAULT 0,
    body            BLOB    NOT NULL,
    PRIMARY KEY (appliance_id, bundle_id)
) STRICT;
CREATE INDEX bundles_by_seq ON bundles (appliance_id, seq);

CREATE TABLE rejects (
    id              INTEGER PRIMARY KEY,
    received_at     INTEGER NOT NULL,
    topic           TEXT    NOT NULL,
    appliance_id    TEXT,
    code            TEXT    NOT NULL,
    message         TEXT    NOT NULL,
    envelope_sha256 BLOB    NOT NULL
) STRICT;

CREATE TABLE alarms (
    id           INTEGER PRIMARY KEY,
    raised_at    INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    appliance_id TEXT    NOT NULL,
    bundle_id    TEXT    NOT NULL,
    detail       TEXT    NOT NULL
) STRICT;
"#,
    // v2: pre-alerts by case (what each says, and which one it replaces), so the hospital
    // sees the latest pre-alert of a case and its chain.
    r#"
CREATE TABLE prealerts (
    appliance_id TEXT    NOT NULL,
    bundle_id    TEXT    NOT NULL,
    case_id      TEXT    NOT NULL,
    replaces     TEXT,
    created_at   INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    summary      TEXT    NOT NULL,
    PRIMARY KEY (appliance_id, bundle_id)
) STRICT;
CREATE INDEX prealerts_by_case ON prealerts (appliance_id, case_id, created_at);
"#,
    // v3: attachments arrive as parts (one envelope each, stored as bundles of kind
    // `attachment`); an attachment is `complete` once every part is here and the whole file's
    // SHA-256 matches, `corrupt` (with an alarm) when it does not.
    r#"
CREATE TABLE attachments (
    appliance_id  TEXT    NOT NULL,
    attachment_id TEXT    NOT NULL,
    case_id       TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    media_type    TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    sha256        TEXT    NOT NULL,
    parts         INTEGER NOT NULL,
    caption       TEXT,
    filename      TEXT,
    created_at    INTEGER NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('partial', 'complete', 'corrupt')),
    completed_at  INTEGER,
    PRIMARY KEY (appliance_id, attachment_id)
) STRICT;
CREATE TABLE attachment_parts (
    appliance_id  TEXT    NOT NULL,
    attachment_id TEXT    NOT NULL,
    part          INTEGER NOT NULL,
    bundle_id     TEXT    NOT NULL,
    offset        INTEGER NOT NULL,
    length        INTEGER NOT NULL,
    data_at       INTEGER NOT NULL,
    PRIMARY KEY (appliance_id, attachment_id, part)
) STRICT;
"#,
    // v4: one alarm per distinct conflicting envelope (a resent conflict raises none again).
    r#"
DELETE FROM alarms WHERE id NOT IN
    (SELECT min(id) FROM alarms GROUP BY kind, appliance_id, bundle_id, detail);
CREATE UNIQUE INDEX alarms_once ON alarms (kind, appliance_id, bundle_id, detail);
"#,
    // v5: what each appliance last sent (for /metrics): arrival, highest sequence number,
    // bundles stored (sequence numbers are contiguous per appliance, so the difference is the
    // gaps), and its latest telemetry.
    r#"
CREATE TABLE appliance_status (
    appliance_id          TEXT    PRIMARY KEY,
    last_seen_at          INTEGER NOT NULL,
    last_seq              INTEGER NOT NULL,
    received              INTEGER NOT NULL,
    telemetry_at          INTEGER,
    outbox_queued         INTEGER,
    open_alarms           INTEGER,
    oldest_unreceipted_at INTEGER
) STRICT;
INSERT INTO appliance_status (appliance_id, last_seen_at, last_seq, received)
    SELECT appliance_id, max(received_at), max(seq), count(*) FROM bundles GROUP BY appliance_id;
"#,
    // v6: the signed audit checkpoints case bundles carried, per appliance, for continuity
    // (`audit_sql`).
    r#"
CREATE TABLE audit_checkpoints (
    appliance_id TEXT    NOT NULL,
    cp_seq       INTEGER NOT NULL,
    hash         BLOB    NOT NULL,
    env_seq      INTEGER NOT NULL,
    bundle_id    TEXT    NOT NULL,
    PRIMARY KEY (appliance_id, cp_seq, bundle_id)
) STRICT;
CREATE INDEX audit_checkpoints_by_env ON audit_checkpoints (appliance_id, env_seq);
"#,
    // A second key accepted until `previous_until` while an appliance's signing key changes.
    r#"
ALTER TABLE appliances ADD COLUMN previous_key TEXT;
ALTER TABLE appliances ADD COLUMN previous_until INTEGER;
"#,
];

/// SQL shared by both stores (portable: `max`/`greatest` aside) for `appliance_status`.
pub(in crate::storage) mod status_sql {
    /// Stored: (appliance, now, highest seq, how many bundles).
    pub const STORED: &str = "INSERT INTO appliance_status (appliance_id, last_seen_at, last_seq, received) \
        VALUES ($1, $2, $3, $4) ON CONFLICT (appliance_id) DO UPDATE SET \
        last_seen_at = GREATEST(appliance_status.last_seen_at, excluded.last_seen_at), \
        last_seq = GREATEST(appliance_status.last_seq, excluded.last_seq), \
        received = appliance_status.received + excluded.received";
    /// A resend: (appliance, now).
    pub const SEEN: &str = "UPDATE appliance_status SET \
        last_seen_at = GREATEST(last_seen_at, $2) WHERE appliance_id = $1";
    /// Newer telemetry: (appliance, created at, outbox queued, open alarms, oldest unreceipted).
    pub const TELEMETRY: &str = "UPDATE appliance_status SET telemetry_at = $2, outbox_queued = $3, \
        open_alarms = $4, oldest_unreceipted_at = $5 \
        WHERE appliance_id = $1 AND (telemetry_at IS NULL OR telemetry_at <= $2)";
    pub const LIST: &str = "SELECT appliance_id, last_seen_at, last_seq, received, telemetry_at, \
        outbox_queued, open_alarms, oldest_unreceipted_at FROM appliance_status ORDER BY appliance_id";

    /// SQLite spells `GREATEST` as two-argument `max`, and numbered parameters `?N` (it reads
    /// `$N` as a name, numbered by first appearance).
    fn sqlite(sql: &str) -> String {
        sql.replace("GREATEST(", "max(").replace('$', "?")
    }

    /// The SQLite spellings, made once (they are prepared for every stored bundle).
    pub static SQLITE_STORED: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| sqlite(STORED));
    pub static SQLITE_SEEN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| sqlite(SEEN));
    pub static SQLITE_TELEMETRY: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| sqlite(TELEMETRY));
}

/// What the receiver needs of a store: the embedded [`ReceiverDb`] or the shared PostgreSQL
/// store (`storage::pg::PgStore`). Every method commits before it returns.
pub trait ReceiverStore: Send {
    /// Registers (or replaces) an appliance's ES256 public key (PEM); clears a revocation and
    /// any previous key still in its overlap.
    fn add_appliance(&mut self, id: &str, pem: &str) -> Result<()>;
    /// A new signing key for an active appliance; the one it replaces stays accepted until
    /// `overlap_until_ms` (envelopes and checkpoints signed before the change). False when the
    /// appliance is not registered and active, or already has this key.
    fn add_appliance_key(&mut self, id: &str, pem: &str, overlap_until_ms: i64) -> Result<bool>;
    /// Revokes an appliance: its envelopes are rejected from the next one on. False when it
    /// was not registered and active.
    fn revoke_appliance(&mut self, id: &str) -> Result<bool>;
    /// `(id, PEM, revoked)` of every registered appliance.
    fn appliances(&mut self) -> Result<Vec<(String, String, bool)>>;
    /// The accepted public keys (PEM) of an active appliance, current first, then the previous
    /// one while in its overlap (read for every envelope, never cached).
    fn appliance_keys(&mut self, id: &str) -> Result<Vec<String>>;
    /// The checkpoints seen from an appliance that a case bundle's checkpoint `to` (range
    /// `from..=to`, envelope sequence number `env_seq`) is compared with
    /// (`receiver_audit::KNOWN`).
    fn audit_checkpoints(
        &mut self,
        id: &str,
        from: i64,
        to: i64,
        env_seq: u64,
    ) -> Result<Vec<KnownCheckpoint>>;
    /// Stores a batch in one transaction; one outcome per bundle, in order.
    fn store_batch(&mut self, items: &[ReceivedBundle]) -> Result<Vec<StoreOutcome>>;
    /// Records rejected envelopes.
    fn record_rejects(&mut self, rejects: &[EnvelopeReject]) -> Result<()>;
    /// Counts for `hema3n-receiver stats`.
    fn stats(&mut self) -> Result<ReceiverStats>;
    /// The stored FHIR JSON (or attachment part) of one bundle.
    fn bundle_body(&mut self, appliance_id: &str, bundle_id: &str) -> Result<Option<Vec<u8>>>;
    /// `(appliance id, bundle id, seq, kind)` of every stored bundle, oldest first.
    fn list_bundles(&mut self) -> Result<Vec<(String, String, u64, String)>>;
    /// Pre-alerts received after `since_ms` (by arrival), oldest first.
    fn prealerts(&mut self, since_ms: i64) -> Result<Vec<PrealertRow>>;
    /// What each appliance last sent, by appliance id.
    fn appliance_status(&mut self) -> Result<Vec<ApplianceStatus>>;
    /// Every attachment received (complete or not), newest first.
    fn attachments(&mut self) -> Result<Vec<super::receiver_files::ReceivedAttachment>>;
    /// Writes a complete attachment's file to `out` (its SHA-256 verified on arrival); returns
    /// its size. An incomplete or corrupt attachment is refused.
    fn export_attachment(
        &mut self,
        appliance: &str,
        attachment: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<u64>;
}

/// A verified, opened bundle ready to store.
#[derive(Debug, Clone)]
pub struct ReceivedBundle {
    pub appliance_id: String,
    pub bundle_id: uuid::Uuid,
    pub seq: u64,
    pub kind: String,
    pub created_at_ms: i64,
    pub envelope_sha256: [u8; 32],
    pub body: Vec<u8>,
    /// What a pre-alert says (for the pre-alert list).
    pub prealert: Option<crate::model::PrealertSummary>,
    /// The header of an attachment part (kind `attachment`) and where its bytes start in
    /// `body`.
    pub attachment: Option<(crate::model::PartHeader, usize)>,
    /// What a telemetry envelope reports (no PHI).
    pub telemetry: Option<TelemetrySummary>,
    /// A case bundle's audit trail, as verified (`receiver::audit_check`).
    pub audit: Option<AuditVerdict>,
}

/// The appliance health a telemetry envelope reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TelemetrySummary {
    pub outbox_queued: i64,
    pub open_alarms: i64,
    /// When the oldest envelope not yet receipted was queued (absent: none waits).
    pub oldest_unreceipted_ms: Option<i64>,
}

/// What an appliance last sent, as the store knows it (all receivers sharing it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApplianceStatus {
    pub appliance_id: String,
    pub last_seen_ms: i64,
    /// Highest sequence number stored.
    pub last_seq: u64,
    /// Bundles stored (every kind takes a sequence number).
    pub received: u64,
    pub telemetry_at_ms: Option<i64>,
    pub outbox_queued: Option<i64>,
    pub open_alarms: Option<i64>,
    pub oldest_unreceipted_ms: Option<i64>,
}

impl ApplianceStatus {
    /// Sequence numbers below the highest one that have not arrived (lost, rejected, or still
    /// on their way).
    pub fn gaps(&self) -> u64 {
        self.last_seq.saturating_sub(self.received)
    }
}

/// A received pre-alert.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PrealertRow {
    pub appliance_id: String,
    pub bundle_id: String,
    pub created_at_ms: i64,
    pub received_at_ms: i64,
    pub summary: crate::model::PrealertSummary,
}

/// What storing a bundle did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Stored now; with the audit-trail alarms it raised (a case bundle's findings).
    Stored { audit_alarms: usize },
    /// Same id, same envelope: already stored (a resend).
    Duplicate,
    /// Same id, different envelope: alarm raised, not receipted.
    Conflict,
}

/// The receiver database.
pub struct ReceiverDb {
    conn: Connection,
}

impl ReceiverDb {
    /// Opens (creating) the receiver database at `path` with its SQLCipher key.
    pub fn open(path: &Path, key: &[u8; 32], key_path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
                path: dir.into(),
                source: e,
            })?;
        }
        let mut conn = open_keyed(path, key, key_path, 5000)?;
        run_migrations(&mut conn, RECEIVER_MIGRATIONS, |_, _| Ok(()))?;
        Ok(ReceiverDb { conn })
    }
}

impl ReceiverStore for ReceiverDb {
    fn add_appliance(&mut self, id: &str, pem: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO appliances (id, public_key, registered_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (id) DO UPDATE SET public_key = excluded.public_key, revoked_at = NULL, \
             previous_key = NULL, previous_until = NULL",
            params![id, pem, now_ms()],
        )?;
        Ok(())
    }

    fn add_appliance_key(&mut self, id: &str, pem: &str, overlap_until_ms: i64) -> Result<bool> {
        Ok(self.conn.execute(
            "UPDATE appliances SET previous_key = public_key, previous_until = ?3, public_key = ?2 \
             WHERE id = ?1 AND revoked_at IS NULL AND public_key <> ?2",
            params![id, pem, overlap_until_ms],
        )? == 1)
    }

    fn revoke_appliance(&mut self, id: &str) -> Result<bool> {
        Ok(self.conn.execute(
            "UPDATE appliances SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            params![now_ms(), id],
        )? == 1)
    }

    fn appliances(&mut self) -> Result<Vec<(String, String, bool)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, public_key, revoked_at IS NOT NULL FROM appliances ORDER BY id")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn appliance_keys(&mut self, id: &str) -> Result<Vec<String>> {
        let row: Option<(String, Option<String>)> = self
            .conn
            .prepare_cached(
                "SELECT public_key, CASE WHEN previous_until > ?2 THEN previous_key END \
                 FROM appliances WHERE id = ?1 AND revoked_at IS NULL",
            )?
            .query_row(params![id, now_ms()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(row.map_or_else(Vec::new, |(cur, prev)| {
            std::iter::once(cur).chain(prev).collect()
        }))
    }

    fn store_batch(&mut self, items: &[ReceivedBundle]) -> Result<Vec<StoreOutcome>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let mut out = Vec::with_capacity(items.len());
        for b in items {
            let bundle_id = b.bundle_id.to_string();
            let existing: Option<Vec<u8>> = tx
                .prepare_cached(
                    "SELECT envelope_sha256 FROM bundles WHERE appliance_id = ?1 AND bundle_id = ?2",
                )?
                .query_row(params![b.appliance_id, bundle_id], |r| r.get(0))
                .optional()?;
            let o = match existing {
                None => {
                    tx.prepare_cached(
                        "INSERT INTO bundles (appliance_id, bundle_id, seq, kind, envelope_sha256, created_at, received_at, body) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?
                    .execute(params![
                        b.appliance_id,
                        bundle_id,
                        b.seq as i64,
                        b.kind,
                        b.envelope_sha256.to_vec(),
                        b.created_at_ms,
                        now,
                        b.body
                    ])?;
                    if let Some((h, data_at)) = &b.attachment {
                        let from = super::receiver_files::Source {
                            appliance_id: &b.appliance_id,
                            bundle_id: &bundle_id,
                        };
                        super::receiver_files::add_part(&tx, &from, h, *data_at, now)?;
                    }
                    if let Some(p) = &b.prealert {
                        tx.prepare_cached(
                            "INSERT INTO prealerts (appliance_id, bundle_id, case_id, replaces, created_at, received_at, summary) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        )?
                        .execute(params![
                            b.appliance_id,
                            bundle_id,
                            p.case_id,
                            p.replaces,
                            b.created_at_ms,
                            now,
                            serde_json::to_string(p).expect("json"),
                        ])?;
                    }
                    tx.prepare_cached(&status_sql::SQLITE_STORED)?
                        .execute(params![b.appliance_id, now, b.seq as i64, 1])?;
                    if let Some(t) = &b.telemetry {
                        tx.prepare_cached(&status_sql::SQLITE_TELEMETRY)?
                            .execute(params![
                                b.appliance_id,
                                b.created_at_ms,
                                t.outbox_queued,
                                t.open_alarms,
                                t.oldest_unreceipted_ms
                            ])?;
                    }
                    let audit_alarms = match &b.audit {
                        Some(v) => audit_sql::record_sqlite(
                            &tx,
                            &b.appliance_id,
                            b.seq,
                            &bundle_id,
                            v,
                            now,
                        )?,
                        None => 0,
                    };
                    StoreOutcome::Stored { audit_alarms }
                }
                Some(sha) if sha.as_slice() == b.envelope_sha256.as_slice() => {
                    tx.prepare_cached(
                        "UPDATE bundles SET resends = resends + 1 WHERE appliance_id = ?1 AND bundle_id = ?2",
                    )?
                    .execute(params![b.appliance_id, bundle_id])?;
                    tx.prepare_cached(&status_sql::SQLITE_SEEN)?
                        .execute(params![b.appliance_id, now])?;
                    StoreOutcome::Duplicate
                }
                Some(sha) => {
                    tx.execute(
                        "INSERT INTO alarms (raised_at, kind, appliance_id, bundle_id, detail) VALUES (?1, 'bundle_conflict', ?2, ?3, ?4) \
                         ON CONFLICT DO NOTHING",
                        params![
                            now,
                            b.appliance_id,
                            bundle_id,
                            conflict_detail(&sha, &b.envelope_sha256)
                        ],
                    )?;
                    StoreOutcome::Conflict
                }
            };
            out.push(o);
        }
        tx.commit()?;
        Ok(out)
    }

    fn attachments(&mut self) -> Result<Vec<super::receiver_files::ReceivedAttachment>> {
        super::receiver_files::list(&self.conn)
    }

    fn audit_checkpoints(
        &mut self,
        id: &str,
        from: i64,
        to: i64,
        env_seq: u64,
    ) -> Result<Vec<KnownCheckpoint>> {
        let mut st = self.conn.prepare_cached(&audit_sql::SQLITE_KNOWN)?;
        let rows = st.query_map(params![id, from, to, env_seq as i64], |r| {
            Ok(KnownCheckpoint {
                seq: r.get(0)?,
                hash: r.get(1)?,
                env_seq: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn appliance_status(&mut self) -> Result<Vec<ApplianceStatus>> {
        let mut st = self.conn.prepare(status_sql::LIST)?;
        let rows = st.query_map([], |r| {
            Ok(ApplianceStatus {
                appliance_id: r.get(0)?,
                last_seen_ms: r.get(1)?,
                last_seq: r.get::<_, i64>(2)? as u64,
                received: r.get::<_, i64>(3)? as u64,
                telemetry_at_ms: r.get(4)?,
                outbox_queued: r.get(5)?,
                open_alarms: r.get(6)?,
                oldest_unreceipted_ms: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn export_attachment(
        &mut self,
        appliance: &str,
        attachment: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        super::receiver_files::export(&self.conn, appliance, attachment, out)
    }

    fn prealerts(&mut self, since_ms: i64) -> Result<Vec<PrealertRow>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT appliance_id, bundle_id, created_at, received_at, summary FROM prealerts \
                 WHERE received_at > ?1 ORDER BY received_at, created_at",
            )?
            .query_map([since_ms], |r| {
                Ok(PrealertRow {
                    appliance_id: r.get(0)?,
                    bundle_id: r.get(1)?,
                    created_at_ms: r.get(2)?,
                    received_at_ms: r.get(3)?,
                    summary: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn record_rejects(&mut self, rejects: &[EnvelopeReject]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        for (topic, app, code, msg, sha) in rejects {
            tx.prepare_cached(
                "INSERT INTO rejects (received_at, topic, appliance_id, code, message, envelope_sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![now, topic, app, code, msg, sha.to_vec()])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn stats(&mut self) -> Result<ReceiverStats> {
        let (bundles, resends): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(resends), 0) FROM bundles",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let rejects: Vec<(String, u64)> = self
            .conn
            .prepare("SELECT code, count(*) FROM rejects GROUP BY code ORDER BY code")?
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<Result<_, _>>()?;
        let (conflicts, audit_alarms): (i64, i64) =
            self.conn
                .query_row(audit_sql::ALARM_COUNTS, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(ReceiverStats {
            bundles: bundles as u64,
            resends: resends as u64,
            rejects,
            conflicts: conflicts as u64,
            audit_alarms: audit_alarms as u64,
        })
    }

    fn bundle_body(&mut self, appliance_id: &str, bundle_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT body FROM bundles WHERE appliance_id = ?1 AND bundle_id = ?2",
                params![appliance_id, bundle_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn list_bundles(&mut self) -> Result<Vec<(String, String, u64, String)>> {
        let mut st = self.conn.prepare(
            "SELECT appliance_id, bundle_id, seq, kind FROM bundles ORDER BY received_at, appliance_id, seq",
        )?;
        let rows = st.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The detail of a conflict alarm (unique per stored and received envelope).
pub(super) fn conflict_detail(stored: &[u8], received: &[u8; 32]) -> String {
    format!(
        "stored envelope sha256 {} differs from received {}",
        hex::encode(stored),
        hex::encode(received)
    )
}

/// Receiver counters for `hema3n-receiver stats`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReceiverStats {
    pub bundles: u64,
    pub resends: u64,
    pub rejects: Vec<(String, u64)>,
    /// Alarms other than audit findings: bundle conflicts, corrupt attachments.
    pub conflicts: u64,
    /// Audit-trail alarms (a finding each).
    pub audit_alarms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_previous_key_is_accepted_only_during_its_overlap() {
        let d = tempfile::tempdir().unwrap();
        let mut db =
            ReceiverDb::open(&d.path().join("r.db"), &[7; 32], &d.path().join("k")).unwrap();
        db.add_appliance("amb-1", "old").unwrap();
        assert_eq!(db.appliance_keys("amb-1").unwrap(), ["old"]);
        let later = now_ms() + 60_000;
        assert!(db.add_appliance_key("amb-1", "new", later).unwrap());
        assert_eq!(db.appliance_keys("amb-1").unwrap(), ["new", "old"]);
        // The same key again changes nothing; an unknown appliance gets none.
        assert!(!db.add_appliance_key("amb-1", "new", later).unwrap());
        assert!(!db.add_appliance_key("amb-2", "new", later).unwrap());
        // An overlap that has ended.
        assert!(
            db.add_appliance_key("amb-1", "newer", now_ms() - 1)
                .unwrap()
        );
        assert_eq!(db.appliance_keys("amb-1").unwrap(), ["newer"]);
        // Replacing outright drops the overlap; revoking drops every key.
        assert!(db.add_appliance_key("amb-1", "next", later).unwrap());
        db.add_appliance("amb-1", "fresh").unwrap();
        assert_eq!(db.appliance_keys("amb-1").unwrap(), ["fresh"]);
        assert!(db.revoke_appliance("amb-1").unwrap());
        assert!(db.appliance_keys("amb-1").unwrap().is_empty());
    }
}
