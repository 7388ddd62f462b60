//! What the HIPAA self-check (`crate::compliance`) reads from the database in one place:
//! accounts, break-glass reviews, audit checkpoints, cloud receipts and the PIN hashes'
//! parameters. Counts and times only — no PHI.

use super::{Db, Result};

/// Database facts for the compliance items.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComplianceFacts {
    /// Enabled accounts (not disabled, not waiting for approval).
    pub enabled_users: Vec<String>,
    /// Enabled accounts whose PIN hash uses other parameters than the current ones.
    pub weak_hashes: u64,
    /// Break-glass grants not yet reviewed, and when the oldest began.
    pub break_glass_pending: u64,
    pub break_glass_oldest_pending_ms: Option<i64>,
    /// The audit head and the last signed checkpoint.
    pub audit_head_seq: i64,
    pub last_checkpoint_seq: i64,
    pub last_checkpoint_ms: Option<i64>,
    /// The last signed receipt from the cloud (any bundle), and bundles still awaiting one.
    pub last_receipt_ms: Option<i64>,
    pub awaiting_receipt: u64,
    /// When the appliance's first territory key was made (its age, for "no backup yet").
    pub created_ms: Option<i64>,
    /// The triggers that refuse UPDATE and DELETE on the audit log are in place.
    pub audit_append_only: bool,
}

impl Db {
    /// Reads [`ComplianceFacts`]; `hash_prefix` is the PHC prefix of the current PIN hash
    /// parameters.
    pub fn compliance_facts(&self, hash_prefix: &str) -> Result<ComplianceFacts> {
        let c = &self.conn;
        let mut st = c.prepare(
            "SELECT id, substr(secret_hash, 1, length(?1)) = ?1 FROM users \
             WHERE disabled_at IS NULL AND NOT pending_approval ORDER BY id",
        )?;
        let mut enabled_users = Vec::new();
        let mut weak_hashes = 0;
        for row in st.query_map([hash_prefix], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
            let (id, current): (String, bool) = row?;
            enabled_users.push(id);
            weak_hashes += u64::from(!current);
        }
        let (break_glass_pending, break_glass_oldest_pending_ms) = c.query_row(
            "SELECT count(*), min(started_at) FROM break_glass WHERE reviewed_at IS NULL",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        )?;
        let (audit_head_seq, last_checkpoint_seq) = c.query_row(
            "SELECT seq, last_checkpoint_seq FROM audit_head WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let last_checkpoint_ms =
            c.query_row("SELECT max(ts) FROM audit_checkpoints", [], |r| r.get(0))?;
        let (last_receipt_ms, awaiting_receipt) = c.query_row(
            "SELECT max(receipted_at), coalesce(sum(state <> 'receipted'), 0) FROM outbox",
            [],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
        )?;
        let created_ms =
            c.query_row("SELECT min(created_at) FROM key_versions", [], |r| r.get(0))?;
        let triggers: i64 = c.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' \
             AND name IN ('audit_log_no_update', 'audit_log_no_delete')",
            [],
            |r| r.get(0),
        )?;
        Ok(ComplianceFacts {
            enabled_users,
            weak_hashes,
            break_glass_pending,
            break_glass_oldest_pending_ms,
            audit_head_seq,
            last_checkpoint_seq,
            last_checkpoint_ms,
            last_receipt_ms,
            awaiting_receipt,
            created_ms,
            audit_append_only: triggers == 2,
        })
    }
}
