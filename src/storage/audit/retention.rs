//! Audit retention: entries hold no PHI and outlive the crypto-erase of the records they
//! describe; they leave the appliance only when both hold — older than `audit.retention_days`,
//! and covered by a signed checkpoint the cloud receipted (a case bundle carries the latest
//! checkpoint; its receipt moves `audit_head.cloud_checkpoint_seq`). The log is cut at a
//! checkpoint, so `audit verify` starts from that checkpoint's signed hash, and the cut is
//! itself an entry (`audit.prune`, naming it) that verification requires: rows deleted without
//! one are reported as deleted. Deleting is refused by trigger above `audit_head.pruned_through`.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::model::{Actor, AuditEvent, Outcome};
use crate::storage::Result;

const DAY_MS: i64 = 86_400_000;

/// The most entries one prune removes (the daemon prunes in steps, never stalling the store).
pub const PRUNE_STEP: i64 = 50_000;

/// What a prune removed or would remove, and the bounds that decided it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrunePlan {
    /// Entries up to here leave (a checkpoint); `None` when nothing may leave yet.
    pub through: Option<i64>,
    pub entries: u64,
    /// Entries before this time are past retention.
    pub cutoff_ms: i64,
    /// The last entry older than the cutoff with none younger before it.
    pub oldest_past_retention: i64,
    /// The newest checkpoint the cloud receipted.
    pub cloud_checkpoint_seq: i64,
    /// Entries up to here were pruned before.
    pub pruned_through: i64,
}

/// Notes that the cloud receipted `bundle_id`, and with it the checkpoint the bundle carried.
pub(crate) fn note_cloud_checkpoint(conn: &Connection, bundle_id: &str) -> Result<()> {
    conn.prepare_cached(
        "UPDATE audit_head SET cloud_checkpoint_seq = max(cloud_checkpoint_seq, \
         coalesce((SELECT checkpoint_seq FROM outbox WHERE bundle_id = ?1), 0)) WHERE id = 1",
    )?
    .execute([bundle_id])?;
    Ok(())
}

/// Where the log is cut (`pruned_through`; 0 before any prune or before schema 15).
pub(crate) fn pruned_through(conn: &Connection) -> Result<i64> {
    let has: bool = conn
        .prepare_cached(
            "SELECT 1 FROM pragma_table_info('audit_head') WHERE name = 'pruned_through'",
        )?
        .exists([])?;
    if !has {
        return Ok(0);
    }
    Ok(conn
        .prepare_cached("SELECT pruned_through FROM audit_head WHERE id = 1")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

fn plan(conn: &Connection, now_ms: i64, retention_days: u64) -> Result<PrunePlan> {
    let (head, pruned, cloud): (i64, i64, i64) = conn.query_row(
        "SELECT seq, pruned_through, cloud_checkpoint_seq FROM audit_head WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let cutoff_ms = now_ms.saturating_sub((retention_days as i64).saturating_mul(DAY_MS));
    let first_young: Option<i64> = conn.query_row(
        "SELECT min(seq) FROM audit_log WHERE ts >= ?1",
        [cutoff_ms],
        |r| r.get(0),
    )?;
    let old = first_young.map_or(head, |s| s - 1);
    let mut p = PrunePlan {
        cutoff_ms,
        oldest_past_retention: old,
        cloud_checkpoint_seq: cloud,
        pruned_through: pruned,
        ..Default::default()
    };
    if retention_days == 0 {
        return Ok(p);
    }
    let limit = old.min(cloud).min(pruned + PRUNE_STEP);
    p.through = conn.query_row(
        "SELECT max(seq) FROM audit_checkpoints WHERE seq > ?1 AND seq <= ?2",
        params![pruned, limit],
        |r| r.get(0),
    )?;
    p.entries = p.through.map_or(0, |t| (t - pruned) as u64);
    Ok(p)
}

impl crate::storage::Db {
    /// Removes the entries past retention that a receipted checkpoint covers (at most
    /// [`PRUNE_STEP`]), cutting at a checkpoint; `dry_run` only plans. Audited (`audit.prune`).
    pub fn audit_prune(
        &mut self,
        actor: &Actor,
        now_ms: i64,
        retention_days: u64,
        dry_run: bool,
    ) -> Result<PrunePlan> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut p = plan(&tx, now_ms, retention_days)?;
        let Some(through) = p.through.filter(|_| !dry_run) else {
            return Ok(p);
        };
        tx.execute(
            "UPDATE audit_head SET pruned_through = ?1 WHERE id = 1",
            [through],
        )?;
        tx.execute("DELETE FROM audit_subjects WHERE seq <= ?1", [through])?;
        p.entries = tx.execute("DELETE FROM audit_log WHERE seq <= ?1", [through])? as u64;
        let ev = AuditEvent::new(actor, "audit.prune", "audit_log", Outcome::Success).details(
            serde_json::json!({
                "through": through, "entries": p.entries, "cutoff_ms": p.cutoff_ms,
                "retention_days": retention_days, "cloud_checkpoint_seq": p.cloud_checkpoint_seq,
            }),
        );
        super::append(&tx, &self.st, &ev, now_ms)?;
        tx.commit()?;
        tracing::info!(
            through,
            entries = p.entries,
            "audit entries past retention pruned"
        );
        Ok(p)
    }
}
