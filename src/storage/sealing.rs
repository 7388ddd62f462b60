//! Queuing a case bundle without building or sealing it under the write lock (#22). Building
//! the FHIR bundle (NEMSIS document, handoff PDF), serialising it, HPKE and ES256 take
//! milliseconds; ingest commits must not wait behind them. Three steps:
//!
//! 1. [`Db::export_case_bundle`], one short write transaction: checks the bundle is wanted,
//!    reads the case, writes `case.export`, signs the checkpoint a case bundle's trail ends
//!    at, reads the trail, and hands out the export with the next outbox slot and a stamp of
//!    the case's rows;
//! 2. the caller builds and seals the envelope for that slot, outside the storage thread;
//! 3. [`Db::queue_case_bundle`], one short write transaction: re-checks the stamp (the case
//!    did not change meanwhile) and the slot (still the next sequence), then stores the row
//!    with `bundle.create`, `bundle.seal` and `bundle.queue` — all or nothing, as before.
//!
//! A changed case starts again at 1; a taken slot seals again for the new slot.

use std::sync::Arc;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::outbox::{case_export, insert_row, next_slot, outbox_priority};
use super::{Db, OutboxSlot, Result, StoreError, audit};
use crate::crypto::seal::BundleKind;
use crate::crypto::sign::SigningKey;
use crate::model::{Actor, AuditEvent, CaseExport, Outcome, now_ms};

/// A case read for its bundle (step 1): what to seal, for which slot.
#[derive(Debug)]
pub struct BundleExport {
    pub export: CaseExport,
    pub slot: OutboxSlot,
    kind: BundleKind,
    stamp: String,
}

/// Step 1's answer.
#[derive(Debug)]
pub enum Export {
    /// Nothing to seal: the case already has this bundle (its id).
    Exists(String),
    Ready(Box<BundleExport>),
}

/// Step 3's answer.
#[derive(Debug)]
pub enum Queued {
    /// Stored and queued: the bundle id.
    Done(String),
    /// The case changed after its export: export again.
    Changed,
    /// Another envelope took the slot: seal again for this one.
    Reslot(OutboxSlot),
}

/// The rows a bundle is made of, summarised without decrypting anything: any write that
/// would change the export changes this (case version and status, readings and their voids,
/// triage results, record entry versions and states, stored attachments, pre-alerts, the
/// patient's version, erasure).
fn stamp(conn: &rusqlite::Connection, case_id: &str) -> Result<String> {
    conn.prepare_cached(
            "SELECT c.version || '|' || c.status || '|' || coalesce(c.erased_at, '') || '|' || coalesce(c.patient_id, '') || '|' || \
               coalesce((SELECT p.version FROM patients p WHERE p.id = c.patient_id), '') || '|' || \
               (SELECT count(*) || ':' || coalesce(max(id), 0) || ':' || count(voided_at) FROM observations WHERE case_id = c.id) || '|' || \
               (SELECT count(*) || ':' || coalesce(max(id), 0) FROM triage_results WHERE case_id = c.id) || '|' || \
               (SELECT count(*) || ':' || coalesce(max(id), 0) || ':' || coalesce(sum(state = 'entered_in_error'), 0) FROM record_entries WHERE case_id = c.id) || '|' || \
               (SELECT count(*) FROM attachments WHERE case_id = c.id AND state = 'stored') || '|' || \
               (SELECT count(*) || ':' || count(bundle_id) || ':' || coalesce(max(seq), 0) FROM prealerts WHERE case_id = c.id) \
             FROM cases c WHERE c.id = ?1",
        )?
        .query_row([case_id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            kind: "case",
            id: case_id.into(),
        })
}

/// Whether a bundle of `kind` is wanted for the case: `Err(existing id)` when it already
/// exists, `Ok(false)` when none is due.
fn wanted(
    tx: &rusqlite::Connection,
    case_id: &str,
    kind: BundleKind,
) -> Result<std::result::Result<bool, String>> {
    // A case has one case bundle; pre-alerts form a chain, one per due link.
    let exists: Option<String> = tx
        .query_row(
            "SELECT bundle_id FROM outbox WHERE case_id = ?1 AND kind = ?2 ORDER BY seq DESC LIMIT 1",
            params![case_id, kind.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    let wanted = match kind {
        BundleKind::Prealert => super::prealerts::due(tx, case_id)?,
        _ => exists.is_none(),
    };
    Ok(match (wanted, exists) {
        (false, Some(b)) => Err(b),
        (w, _) => Ok(w),
    })
}

impl Db {
    /// The key envelopes are signed with, for sealing outside the storage thread.
    pub fn signer(&self) -> Arc<SigningKey> {
        self.st.keys.signing.clone()
    }

    /// Step 1: the case's export for a bundle of `kind`, with its slot (see the module).
    pub fn export_case_bundle(&mut self, case_id: &str, kind: BundleKind) -> Result<Export> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        match wanted(&tx, case_id, kind)? {
            Err(b) => return Ok(Export::Exists(b)),
            Ok(false) => {
                return Err(StoreError::NotFound {
                    kind: "due pre-alert of case",
                    id: case_id.to_string(),
                });
            }
            Ok(true) => {}
        }
        let mut export = case_export(&mut self.st, &tx, case_id)?;
        let ev = AuditEvent::new(
            &Actor::system(),
            "case.export",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&export.territory)
        .details(serde_json::json!({ "readings": export.readings.len() }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        if kind == BundleKind::Bundle {
            // The bundle proves its case's trail: a checkpoint signed after the case's last
            // entry (the export just written), and the trail read up to it.
            audit::checkpoint_if_due(&tx, &self.st, now_ms(), true)?;
            let trail = audit::case_trail(&tx, case_id, export.patient_id.as_deref())?;
            export.audit = trail.entries;
            export.checkpoint = trail.checkpoint;
            export.audit_segment = trail.segment;
        }
        let slot = next_slot(&tx, kind)?;
        let stamp = stamp(&tx, case_id)?;
        tx.commit()?;
        Ok(Export::Ready(Box::new(BundleExport {
            export,
            slot,
            kind,
            stamp,
        })))
    }

    /// Step 3: stores `env`, sealed from `x` for `x.slot`, unless the case changed or the slot
    /// was taken since step 1 (see the module).
    pub fn queue_case_bundle(
        &mut self,
        actor: &Actor,
        x: &BundleExport,
        env: &[u8],
    ) -> Result<Queued> {
        let (case_id, kind, slot) = (x.export.case_id.as_str(), x.kind, &x.slot);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if stamp(&tx, case_id)? != x.stamp || wanted(&tx, case_id, kind)? != Ok(true) {
            return Ok(Queued::Changed);
        }
        let now_slot = next_slot(&tx, kind)?;
        if now_slot.seq != slot.seq {
            return Ok(Queued::Reslot(now_slot));
        }
        let bid = slot.bundle_id.to_string();
        insert_row(&tx, slot, Some(case_id), env)?;
        if let Some(cp) = &x.export.checkpoint {
            // Its receipt tells that the cloud holds this checkpoint (audit retention).
            tx.prepare_cached("UPDATE outbox SET checkpoint_seq = ?1 WHERE bundle_id = ?2")?
                .execute(params![cp.seq, bid])?;
        }
        let now = now_ms();
        if kind == BundleKind::Prealert {
            let esi = x
                .export
                .triage
                .as_ref()
                .map(|t| i64::from(t.record.final_esi));
            super::prealerts::mark_sent(&tx, case_id, &bid, esi, now)?;
        }
        let territory = &x.export.territory;
        for (action, details) in [
            (
                "bundle.create",
                serde_json::json!({ "case": case_id, "kind": kind.as_str(),
                    "reasons": x.export.prealert.reasons, "replaces": x.export.prealert.sent.last() }),
            ),
            (
                "bundle.seal",
                serde_json::json!({ "bytes": env.len(), "seq": slot.seq }),
            ),
            (
                "bundle.queue",
                serde_json::json!({ "priority": outbox_priority(kind) }),
            ),
        ] {
            let ev = AuditEvent::new(actor, action, format!("bundle/{bid}"), Outcome::Success)
                .territory(territory)
                .details(details);
            audit::append(&tx, &self.st, &ev, now)?;
        }
        tx.commit()?;
        Ok(Queued::Done(bid))
    }

    /// All three steps on this thread (tools and tests; the daemon's sealer seals off it):
    /// `seal` builds and seals the envelope of an export for its slot.
    pub fn enqueue_case_bundle<F>(
        &mut self,
        actor: &Actor,
        case_id: &str,
        kind: BundleKind,
        mut seal: F,
    ) -> Result<String>
    where
        F: FnMut(&CaseExport, &OutboxSlot, &SigningKey) -> Result<Vec<u8>, String>,
    {
        let signer = self.signer();
        loop {
            let mut x = match self.export_case_bundle(case_id, kind)? {
                Export::Exists(b) => return Ok(b),
                Export::Ready(x) => x,
            };
            loop {
                let env = seal(&x.export, &x.slot, &signer).map_err(|why| StoreError::Seal {
                    kind: kind.as_str(),
                    why,
                })?;
                match self.queue_case_bundle(actor, &x, &env)? {
                    Queued::Done(b) => return Ok(b),
                    Queued::Changed => break,
                    Queued::Reslot(s) => x.slot = s,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CaseDetails, Decider, TriageRecord};

    fn open(dir: &std::path::Path) -> Db {
        crate::storage::test_db(dir)
    }

    fn ready(e: Export) -> Box<BundleExport> {
        match e {
            Export::Ready(x) => x,
            Export::Exists(b) => panic!("already queued as {b}"),
        }
    }

    /// What a bundle "sealed" here says: its slot and how many readings it carried.
    fn env(x: &BundleExport) -> Vec<u8> {
        format!("{}:{}", x.slot.seq, x.export.readings.len()).into_bytes()
    }

    #[test]
    fn a_bundle_sealed_outside_the_lock_is_queued_only_if_its_case_and_slot_still_hold() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = open(dir.path());
        let a = Actor::cli();
        let case = db
            .create_case(&a, "default", None, &CaseDetails::default())
            .unwrap();
        let now = now_ms();
        db.add_manual_vitals(&a, &case, &[("heart_rate".into(), 88.0, now)], None)
            .unwrap();
        db.close_case(&a, &case).unwrap();

        // A triage result stored while the bundle was being sealed: refused, exported again.
        let x = ready(db.export_case_bundle(&case, BundleKind::Bundle).unwrap());
        let rec = TriageRecord {
            final_esi: 2,
            rules_esi: 2,
            model_esi: None,
            news2: Some(6),
            specialty: None,
            confidence: None,
            model_id: None,
            model_hash: None,
            decider: Decider::RulesOnly,
            abstained: None,
            reasons: vec!["NEWS2 6".into()],
        };
        db.record_triage(&a, &case, &rec).unwrap();
        assert!(matches!(
            db.queue_case_bundle(&a, &x, &env(&x)).unwrap(),
            Queued::Changed
        ));
        let mut x = ready(db.export_case_bundle(&case, BundleKind::Bundle).unwrap());
        assert_eq!(
            x.export.triage.as_ref().map(|t| t.record.news2),
            Some(Some(6))
        );

        // Telemetry took the slot meanwhile: sealed again for the next one, then queued.
        let taken = x.slot.seq;
        db.enqueue_telemetry(|_, _| Ok(b"telemetry".to_vec()))
            .unwrap();
        let Queued::Reslot(s) = db.queue_case_bundle(&a, &x, &env(&x)).unwrap() else {
            panic!("the slot was taken");
        };
        assert_eq!(s.seq, taken + 1);
        x.slot = s;
        let Queued::Done(bid) = db.queue_case_bundle(&a, &x, &env(&x)).unwrap() else {
            panic!("nothing changed since");
        };
        let (seq, stored): (i64, Vec<u8>) = db
            .conn
            .query_row(
                "SELECT o.seq, e.envelope FROM outbox o JOIN outbox_envelopes e USING (bundle_id) WHERE bundle_id = ?1",
                [&bid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(seq as u64, taken + 1);
        assert_eq!(stored, format!("{}:1", taken + 1).into_bytes());
        // Its audit entries were written with the row, once.
        let n: i64 = db
            .conn
            .query_row(
                "SELECT count(*) FROM audit_log WHERE resource = ?1 AND action IN ('bundle.create', 'bundle.seal', 'bundle.queue')",
                [format!("bundle/{bid}")],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 3);
        // The case has its bundle: a second export says so.
        assert!(matches!(
            db.export_case_bundle(&case, BundleKind::Bundle).unwrap(),
            Export::Exists(b) if b == bid
        ));

        // A case erased while sealed is never queued, and cannot be exported again.
        let c2 = db
            .create_case(&a, "default", None, &CaseDetails::default())
            .unwrap();
        db.close_case(&a, &c2).unwrap();
        let x = ready(db.export_case_bundle(&c2, BundleKind::Bundle).unwrap());
        db.erase_case(&a, &c2).unwrap();
        assert!(matches!(
            db.queue_case_bundle(&a, &x, &env(&x)).unwrap(),
            Queued::Changed
        ));
        assert!(db.export_case_bundle(&c2, BundleKind::Bundle).is_err());
        assert!(db.verify_audit().unwrap().ok());
    }
}
