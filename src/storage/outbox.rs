//! The durable outbox of sealed bundles and its custody trail.
//!
//! A row is created, sealed and queued in the same transaction that gathers the case (so a crash
//! leaves either nothing or a complete sealed row), is marked `sent` after the cloud broker's
//! PUBACK, and becomes `receipted` only when the receiver's signed receipt names its bundle id
//! and the SHA-256 of exactly its envelope. Nothing is ever deleted before that. After the
//! retention period the case is crypto-erased and the envelope dropped. Every step is audited.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Db, Result, State, StoreError, audit, triage::read_triage};
use crate::crypto::seal::BundleKind;
use crate::crypto::sign::SigningKey;
use crate::model::{Actor, AuditEvent, CaseExport, OutboxState, Outcome, now_ms};

/// Identity of a row being created: what the sealer puts in the envelope header.
#[derive(Debug, Clone)]
pub struct OutboxSlot {
    pub bundle_id: uuid::Uuid,
    pub seq: u64,
    pub kind: BundleKind,
    pub created_at_ms: i64,
}

/// A queued or sent row, ready to publish.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub bundle_id: String,
    pub seq: u64,
    pub kind: BundleKind,
    pub envelope: Vec<u8>,
    pub envelope_sha256: [u8; 32],
    pub attempts: i64,
}

/// Work the sealer should do: cases closed without a bundle, cases at ESI 1-2 without a pre-alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealWork {
    pub case_id: String,
    pub kind: BundleKind,
}

/// Outcome of applying one verified receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// The row is now receipted.
    Receipted,
    /// It already was (a duplicate receipt).
    AlreadyReceipted,
    /// No row has this bundle id.
    UnknownBundle,
    /// The receipt names another envelope hash: not custody of what we sent.
    HashMismatch,
}

/// Counts by state for health, metrics and `outbox status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxStats {
    pub queued: u64,
    pub sent: u64,
    pub receipted: u64,
    pub purged: u64,
    pub queued_bytes: u64,
    /// Creation time of the oldest row not yet receipted.
    pub oldest_pending_ms: Option<i64>,
}

/// A row as listed by `outbox list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutboxRow {
    pub bundle_id: String,
    pub seq: u64,
    pub kind: String,
    pub case_id: Option<String>,
    pub state: OutboxState,
    pub attempts: i64,
    pub created_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub receipted_at_ms: Option<i64>,
    pub purged: bool,
}

/// Sort key of a kind in the outbox: pre-alert, bundle, attachment, telemetry (then by
/// sequence number).
pub fn outbox_priority(kind: BundleKind) -> i64 {
    kind.priority()
}

fn kind_of(s: &str) -> Result<BundleKind> {
    BundleKind::parse(s).ok_or_else(|| StoreError::Undecodable {
        what: format!("outbox kind {s}"),
    })
}

impl Db {
    /// Cases that need a bundle (closed, none queued yet) or a pre-alert (open, latest triage
    /// ESI 1-2, none queued yet), oldest first.
    pub fn seal_work(&self, limit: usize) -> Result<Vec<SealWork>> {
        const QUERIES: [(&str, BundleKind); 2] = [
            (
                "SELECT c.id FROM cases c WHERE c.status = 'closed' AND c.erased_at IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.case_id = c.id AND o.kind = 'bundle') \
                 ORDER BY c.closed_at LIMIT ?1",
                BundleKind::Bundle,
            ),
            (
                "SELECT c.id FROM prealerts p JOIN cases c ON c.id = p.case_id \
                 WHERE p.bundle_id IS NULL AND c.status = 'open' AND c.erased_at IS NULL \
                 ORDER BY p.due_at LIMIT ?1",
                BundleKind::Prealert,
            ),
        ];
        let mut out = Vec::new();
        for (sql, kind) in QUERIES {
            let mut st = self.conn.prepare_cached(sql)?;
            for id in st.query_map([limit as i64], |r| r.get::<_, String>(0))? {
                out.push(SealWork { case_id: id?, kind });
            }
        }
        // Pre-alerts first.
        out.sort_by_key(|w| w.kind.priority());
        out.truncate(limit);
        Ok(out)
    }

    /// Queues a telemetry envelope (no PHI) built by `seal`.
    pub fn enqueue_telemetry<F>(&mut self, seal: F) -> Result<String>
    where
        F: FnOnce(&OutboxSlot, &SigningKey) -> Result<Vec<u8>, String>,
    {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let slot = next_slot(&tx, BundleKind::Telemetry)?;
        let env = seal(&slot, &self.st.keys.signing).map_err(|why| StoreError::Seal {
            kind: "telemetry",
            why,
        })?;
        insert_row(&tx, &slot, None, &env)?;
        tx.commit()?;
        Ok(slot.bundle_id.to_string())
    }

    /// Up to `limit` queued rows in priority order (pre-alert, bundle, telemetry; then by seq),
    /// skipping `exclude` (rows already in flight).
    pub fn outbox_queued(
        &self,
        limit: usize,
        exclude: &std::collections::HashSet<String>,
    ) -> Result<Vec<OutboxItem>> {
        // Pick ids first (rows in flight are skipped without reading their envelopes).
        let picked: Vec<(String, i64, String, i64)> = {
            let mut st = self.conn.prepare_cached(
                "SELECT bundle_id, seq, kind, attempts FROM outbox \
                 WHERE state IN ('queued', 'sent') ORDER BY priority, seq LIMIT ?1",
            )?;
            let rows = st.query_map([(limit + exclude.len()) as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            let mut v = Vec::new();
            for row in rows {
                let row: (String, i64, String, i64) = row?;
                if !exclude.contains(&row.0) {
                    v.push(row);
                    if v.len() == limit {
                        break;
                    }
                }
            }
            v
        };
        let mut out = Vec::with_capacity(picked.len());
        let mut st = self
            .conn
            .prepare_cached("SELECT e.envelope, o.envelope_sha256 FROM outbox o JOIN outbox_envelopes e USING (bundle_id) WHERE o.bundle_id = ?1")?;
        for (bundle_id, seq, kind, attempts) in picked {
            let (envelope, sha): (Vec<u8>, Vec<u8>) =
                st.query_row([&bundle_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let envelope_sha256: [u8; 32] =
                sha.try_into().map_err(|_| StoreError::Undecodable {
                    what: "an outbox envelope hash".into(),
                })?;
            out.push(OutboxItem {
                bundle_id,
                seq: seq as u64,
                kind: kind_of(&kind)?,
                envelope,
                envelope_sha256,
                attempts,
            });
        }
        Ok(out)
    }

    /// Records that the cloud broker acknowledged these rows (PUBACK); audited per row.
    pub fn outbox_mark_sent(&mut self, bundle_ids: &[String]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        for bid in bundle_ids {
            let n = tx.execute(
                "UPDATE outbox SET state = CASE WHEN state = 'queued' THEN 'sent' ELSE state END, \
                 attempts = attempts + 1, sent_at = ?1 WHERE bundle_id = ?2 AND state != 'receipted'",
                params![now, bid],
            )?;
            if n == 1 {
                let ev = AuditEvent::new(
                    &Actor::system(),
                    "bundle.send",
                    format!("bundle/{bid}"),
                    Outcome::Success,
                );
                audit::append(&tx, &self.st, &ev, now)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Applies verified receipts `(bundle id, envelope SHA-256, receipt bytes)` in one
    /// transaction; audited per row.
    pub fn outbox_apply_receipts(
        &mut self,
        receipts: &[(String, [u8; 32], Vec<u8>)],
    ) -> Result<Vec<ReceiptOutcome>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let mut out = Vec::with_capacity(receipts.len());
        for (bid, sha, receipt) in receipts {
            let row: Option<(Vec<u8>, String)> = tx
                .prepare_cached("SELECT envelope_sha256, state FROM outbox WHERE bundle_id = ?1")?
                .query_row([bid], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let outcome = match row {
                None => ReceiptOutcome::UnknownBundle,
                Some((_, state)) if state == "receipted" => ReceiptOutcome::AlreadyReceipted,
                Some((ours, _)) if ours.as_slice() != sha.as_slice() => {
                    ReceiptOutcome::HashMismatch
                }
                Some((_, state)) => {
                    if state == "queued" {
                        // Published, but the PUBACK was lost with a restart: the receipt proves
                        // the send, so the trail records it.
                        let ev = AuditEvent::new(
                            &Actor::system(),
                            "bundle.send",
                            format!("bundle/{bid}"),
                            Outcome::Success,
                        )
                        .details(serde_json::json!({ "inferred_from_receipt": true }));
                        audit::append(&tx, &self.st, &ev, now)?;
                    }
                    tx.prepare_cached(
                        "UPDATE outbox SET state = 'receipted', receipted_at = ?1, receipt = ?2, \
                         sent_at = coalesce(sent_at, ?1), attempts = max(attempts, 1) WHERE bundle_id = ?3",
                    )?
                    .execute(params![now, receipt, bid])?;
                    audit::note_cloud_checkpoint(&tx, bid)?;
                    ReceiptOutcome::Receipted
                }
            };
            let (action, result) = match outcome {
                ReceiptOutcome::Receipted => ("bundle.receipt", Outcome::Success),
                ReceiptOutcome::AlreadyReceipted => ("bundle.receipt_duplicate", Outcome::Success),
                ReceiptOutcome::UnknownBundle | ReceiptOutcome::HashMismatch => {
                    ("bundle.receipt_rejected", Outcome::Failure)
                }
            };
            if outcome != ReceiptOutcome::AlreadyReceipted {
                let ev = AuditEvent::new(&Actor::system(), action, format!("bundle/{bid}"), result)
                    .details(serde_json::json!({ "outcome": format!("{outcome:?}") }));
                audit::append(&tx, &self.st, &ev, now)?;
            }
            out.push(outcome);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Crypto-erases cases whose bundle was receipted more than `retention_ms` ago and whose
    /// attachments are all receipted too, drops their envelopes, and audits each purge.
    /// Returns how many cases were purged.
    pub fn purge_receipted(&mut self, retention_ms: i64, now: i64) -> Result<usize> {
        let due: Vec<(String, Option<String>)> = self
            .conn
            .prepare_cached(
                "SELECT o.bundle_id, o.case_id FROM outbox o WHERE o.state = 'receipted' AND o.kind NOT IN ('prealert', 'attachment') \
                 AND o.receipted_at <= ?1 AND EXISTS (SELECT 1 FROM outbox_envelopes e WHERE e.bundle_id = o.bundle_id) \
                 AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.case_id = o.case_id AND p.kind = 'attachment' AND p.state != 'receipted') \
                 AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.case_id = o.case_id AND a.state = 'stored' \
                     AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.attachment_id = a.id)) \
                 ORDER BY o.seq LIMIT 256",
            )?
            .query_map([now - retention_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut purged = 0;
        for (bid, case) in due {
            if let Some(case) = &case {
                let erased: Option<i64> = self.conn.query_row(
                    "SELECT erased_at FROM cases WHERE id = ?1",
                    [case],
                    |r| r.get(0),
                )?;
                if erased.is_none() {
                    self.erase_case(&Actor::system(), case)?;
                    purged += 1;
                }
            }
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Pre-alerts of the case go with it.
            if let Some(case) = &case {
                tx.execute(
                    "DELETE FROM outbox_envelopes WHERE bundle_id IN (SELECT bundle_id FROM outbox WHERE case_id = ?1 AND state = 'receipted')",
                    [case],
                )?;
            } else {
                tx.execute("DELETE FROM outbox_envelopes WHERE bundle_id = ?1", [&bid])?;
            }
            let ev = AuditEvent::new(
                &Actor::system(),
                "bundle.purge",
                format!("bundle/{bid}"),
                Outcome::Success,
            )
            .details(serde_json::json!({ "case_erased": case.is_some() }));
            audit::append(&tx, &self.st, &ev, now)?;
            tx.commit()?;
        }
        Ok(purged)
    }

    pub fn outbox_stats(&self) -> Result<OutboxStats> {
        let mut s = OutboxStats::default();
        let mut st = self.conn.prepare_cached(
            "SELECT o.state, e.bundle_id IS NULL, count(*), coalesce(sum(length(e.envelope)), 0), min(o.created_at) \
             FROM outbox o LEFT JOIN outbox_envelopes e USING (bundle_id) GROUP BY o.state, e.bundle_id IS NULL",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        for row in rows {
            let (state, empty, n, bytes, oldest) = row?;
            match state.as_str() {
                "queued" => s.queued += n,
                "sent" => s.sent += n,
                _ if empty => s.purged += n,
                _ => s.receipted += n,
            }
            if state != "receipted" {
                s.queued_bytes += bytes;
                s.oldest_pending_ms = match (s.oldest_pending_ms, oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        Ok(s)
    }

    pub fn outbox_list(&self, limit: usize) -> Result<Vec<OutboxRow>> {
        let mut st = self.conn.prepare(
            "SELECT o.bundle_id, o.seq, o.kind, o.case_id, o.state, o.attempts, o.created_at, o.sent_at, o.receipted_at, \
             NOT EXISTS (SELECT 1 FROM outbox_envelopes e WHERE e.bundle_id = o.bundle_id) \
             FROM outbox o ORDER BY o.seq DESC LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            Ok(OutboxRow {
                bundle_id: r.get(0)?,
                seq: r.get::<_, i64>(1)? as u64,
                kind: r.get(2)?,
                case_id: r.get(3)?,
                state: r.get(4)?,
                attempts: r.get(5)?,
                created_at_ms: r.get(6)?,
                sent_at_ms: r.get(7)?,
                receipted_at_ms: r.get(8)?,
                purged: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Everything a bundle carries, decrypted, inside `tx` (the caller audits what it does with
/// it: a bundle, a disclosure, a handoff read), but the audit trail: the case bundle's sealing
/// reads that after signing its checkpoint.
pub(super) fn case_export(
    st: &mut State,
    tx: &rusqlite::Connection,
    case_id: &str,
) -> Result<CaseExport> {
    let (case, dk_id) = st.read_case(tx, case_id)?;
    let dk = st.data_key(tx, dk_id, "case", case_id)?;
    let patient = match &case.patient_id {
        Some(pid) => Some(st.read_patient(tx, pid)?.patient),
        None => None,
    };
    let readings = super::readings::read_case_observations(tx, &dk, case_id)?;
    let mut devices: Vec<(String, String)> = tx
        .prepare_cached(
            "SELECT d.id, d.kind FROM devices d WHERE d.id IN (SELECT DISTINCT device_id FROM observations WHERE case_id = ?1) ORDER BY d.id",
        )?
        .query_map([case_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for r in &readings {
        if let Some(d) = &r.device_id
            && !devices.iter().any(|(id, _)| id == d)
        {
            devices.push((d.clone(), "monitor".into()));
        }
    }
    let triage = read_triage(tx, &dk, case_id, 1)?.into_iter().next();
    let record = super::record::read_entries(tx, &dk, case_id, super::record::Which::All)?;
    let people = super::record::people_of(tx, &record)?;
    Ok(CaseExport {
        appliance_id: st.appliance_id.clone(),
        case_id: case_id.into(),
        territory: case.territory,
        status: case.status.as_str().into(),
        created_at_ms: case.created_at_ms,
        closed_at_ms: case.closed_at_ms,
        patient_id: case.patient_id,
        patient,
        chief_complaint: case.details.chief_complaint,
        mechanism: case.details.mechanism,
        onset: case.details.onset,
        devices,
        readings,
        triage,
        record,
        people,
        // Only a case bundle carries the trail, read when it is sealed (after its checkpoint).
        audit: vec![],
        checkpoint: None,
        audit_segment: None,
        prealert: super::prealerts::info(tx, case_id)?,
        attachments: super::attachments::stored(st, tx, case_id)?,
    })
}

pub(super) fn next_slot(tx: &rusqlite::Connection, kind: BundleKind) -> Result<OutboxSlot> {
    let seq: i64 = tx.query_row("SELECT coalesce(max(seq), 0) + 1 FROM outbox", [], |r| {
        r.get(0)
    })?;
    Ok(OutboxSlot {
        bundle_id: uuid::Uuid::now_v7(),
        seq: seq as u64,
        kind,
        created_at_ms: now_ms(),
    })
}

pub(super) fn insert_row(
    tx: &rusqlite::Connection,
    slot: &OutboxSlot,
    case_id: Option<&str>,
    env: &[u8],
) -> Result<()> {
    tx.execute(
        "INSERT INTO outbox (bundle_id, seq, case_id, priority, kind, envelope, envelope_sha256, created_at, state) \
         VALUES (?1, ?2, ?3, ?4, ?5, X'', ?6, ?7, 'queued')",
        params![
            slot.bundle_id.to_string(),
            slot.seq as i64,
            case_id,
            outbox_priority(slot.kind),
            slot.kind.as_str(),
            crate::crypto::sha256(env).to_vec(),
            slot.created_at_ms
        ],
    )?;
    tx.execute(
        "INSERT INTO outbox_envelopes (bundle_id, envelope) VALUES (?1, ?2)",
        params![slot.bundle_id.to_string(), env],
    )?;
    Ok(())
}

/// Migration v4: rewrites the signature of every envelope not yet receipted into its canonical
/// (low-S) form and updates its hash (the receiver refuses high-S signatures). The signature
/// is an envelope's last 64 bytes. Returns how many envelopes changed.
pub(super) fn canonicalize_pending(conn: &rusqlite::Connection) -> Result<usize> {
    let rows: Vec<(String, Vec<u8>)> = conn
        .prepare(
            "SELECT e.bundle_id, e.envelope FROM outbox_envelopes e JOIN outbox o ON o.bundle_id = e.bundle_id \
             WHERE o.state != 'receipted'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut changed = 0;
    for (id, mut env) in rows {
        let Some(at) = env.len().checked_sub(64) else {
            continue;
        };
        if crate::crypto::sign::is_low_s(&env[at..]) {
            continue;
        }
        crate::crypto::sign::canonicalize(&mut env[at..]);
        let hash = crate::crypto::sha256(&env);
        conn.execute(
            "UPDATE outbox_envelopes SET envelope = ?1 WHERE bundle_id = ?2",
            rusqlite::params![env, id],
        )?;
        conn.execute(
            "UPDATE outbox SET envelope_sha256 = ?1 WHERE bundle_id = ?2",
            rusqlite::params![&hash[..], id],
        )?;
        changed += 1;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sign::{SigningKey, is_low_s};

    #[test]
    fn migration_v4_makes_pending_envelope_signatures_canonical() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE outbox (bundle_id TEXT PRIMARY KEY, state TEXT, envelope_sha256 BLOB);
             CREATE TABLE outbox_envelopes (bundle_id TEXT PRIMARY KEY, envelope BLOB);",
        )
        .unwrap();
        let key = SigningKey::from_pkcs8("t", &SigningKey::generate_pkcs8().unwrap()).unwrap();
        // A signed "envelope" whose signature is turned into its high-S twin, as an older
        // build could have produced it.
        let mut env = b"header and ciphertext".to_vec();
        let sig = key.sign(&env).unwrap();
        let mut high = sig.clone();
        crate::crypto::sign::flip_s(&mut high);
        assert!(!is_low_s(&high));
        env.extend_from_slice(&high);
        for (id, state) in [("a", "queued"), ("b", "receipted")] {
            conn.execute(
                "INSERT INTO outbox VALUES (?1, ?2, ?3)",
                params![id, state, &crate::crypto::sha256(&env)[..]],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO outbox_envelopes VALUES (?1, ?2)",
                params![id, env],
            )
            .unwrap();
        }
        assert_eq!(canonicalize_pending(&conn).unwrap(), 1);
        let (new, hash): (Vec<u8>, Vec<u8>) = conn
            .query_row(
                "SELECT e.envelope, o.envelope_sha256 FROM outbox_envelopes e JOIN outbox o USING (bundle_id) WHERE bundle_id = 'a'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let at = new.len() - 64;
        assert_eq!(new[at..], sig[..]);
        key.public().verify(&new[..at], &new[at..]).unwrap();
        assert_eq!(hash, crate::crypto::sha256(&new).to_vec());
        // Receipted rows are history: untouched. A second run changes nothing.
        let old: Vec<u8> = conn
            .query_row(
                "SELECT envelope FROM outbox_envelopes WHERE bundle_id = 'b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, env);
        assert_eq!(canonicalize_pending(&conn).unwrap(), 0);
    }
}
