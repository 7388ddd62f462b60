//! Audit-checkpoint continuity in the receiver's stores: every case bundle's checkpoint is kept
//! with the bundle's sequence number; a bundle sealed later (higher sequence number) must carry a
//! newer checkpoint, and one sequence number of the chain has one hash
//! (`receiver::audit_check` compares the hashes it recomputes with the known ones). The SQL is
//! shared by both stores.

use rusqlite::params;

use super::Result;

/// The verified audit trail of a case bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditVerdict {
    /// The signed checkpoint it carries (sequence number, chain hash), when its signature holds.
    pub checkpoint: Option<(i64, [u8; 32])>,
    /// Entries verified against the checkpoint.
    pub entries: u64,
    /// Findings; empty when the trail verified. Each raises an `audit_trail` alarm.
    pub findings: Vec<String>,
}

/// A checkpoint seen before, with the sequence number of the envelope that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownCheckpoint {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub env_seq: i64,
}

/// What a new case bundle's checkpoint is compared with, in one query: the checkpoints of its
/// appliance in the chain range it proves, and those of the envelopes just before and just after
/// it. Checkpoints rise with envelope sequence numbers, so if any earlier envelope carried a
/// checkpoint at or above this one, the one just before it does (unless that order was already
/// broken, which raised its own alarm): two index seeks instead of a scan of the appliance's
/// history. Parameters: (appliance, range start, checkpoint seq, envelope seq).
pub const KNOWN: &str = "SELECT cp_seq, hash, env_seq FROM audit_checkpoints \
    WHERE appliance_id = $1 AND cp_seq BETWEEN $2 AND $3 \
    UNION ALL SELECT * FROM (SELECT cp_seq, hash, env_seq FROM audit_checkpoints \
    WHERE appliance_id = $1 AND env_seq < $4 ORDER BY env_seq DESC LIMIT 1) AS just_before \
    UNION ALL SELECT * FROM (SELECT cp_seq, hash, env_seq FROM audit_checkpoints \
    WHERE appliance_id = $1 AND env_seq > $4 ORDER BY env_seq LIMIT 1) AS just_after";
/// (appliance, checkpoint seq, hash, envelope seq, bundle id).
pub const INSERT: &str = "INSERT INTO audit_checkpoints (appliance_id, cp_seq, hash, env_seq, bundle_id) \
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
/// Alarm kind of every audit-trail finding.
pub const ALARM: &str = "audit_trail";
/// (other alarms, audit-trail alarms).
pub const ALARM_COUNTS: &str = "SELECT count(*) FILTER (WHERE kind <> 'audit_trail'), \
    count(*) FILTER (WHERE kind = 'audit_trail') FROM alarms";

pub static SQLITE_KNOWN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| KNOWN.replace('$', "?"));
pub static SQLITE_INSERT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| INSERT.replace('$', "?"));

/// The finding for a checkpoint out of order with one already seen.
pub fn out_of_order(cp: i64, env_seq: u64, other_cp: i64, other_env: i64) -> String {
    if other_env < env_seq as i64 {
        format!(
            "checkpoint {cp} is not newer than checkpoint {other_cp} of an earlier bundle \
             (sequence {other_env} < {env_seq}): an older checkpoint replayed"
        )
    } else {
        format!(
            "checkpoint {cp} is not older than checkpoint {other_cp} of a later bundle \
             (sequence {other_env} > {env_seq}): checkpoints out of order"
        )
    }
}

/// Logs a finding (alarms are logged where they are raised).
pub fn log(appliance_id: &str, bundle_id: &str, finding: &str) {
    tracing::error!(
        code = "AUDIT_TRAIL",
        appliance_id,
        bundle_id,
        finding,
        "ALARM: a case bundle's audit trail failed verification; stored and receipted (its PHI is kept), alarm raised"
    );
}

/// Records a stored case bundle's checkpoint and raises an alarm per finding; returns how many.
pub(super) fn record_sqlite(
    tx: &rusqlite::Connection,
    appliance_id: &str,
    seq: u64,
    bundle_id: &str,
    v: &AuditVerdict,
    now: i64,
) -> Result<usize> {
    let findings = &v.findings;
    if let Some((cp, hash)) = v.checkpoint {
        tx.prepare_cached(&SQLITE_INSERT)?.execute(params![
            appliance_id,
            cp,
            hash.to_vec(),
            seq as i64,
            bundle_id
        ])?;
    }
    for f in findings {
        log(appliance_id, bundle_id, f);
        tx.prepare_cached(
            "INSERT INTO alarms (raised_at, kind, appliance_id, bundle_id, detail) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![now, ALARM, appliance_id, bundle_id, f])?;
    }
    Ok(findings.len())
}
