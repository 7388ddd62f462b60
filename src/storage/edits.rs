//! Edits beside the record entries: merge patches of a case's details and a patient's
//! demographics under their versions (`If-Match`), and vital-sign readings marked
//! entered-in-error (reason sealed; kept in the vitals history, left out of everything else),
//! the case export for disclosures, and the tablet's unsaved forms (drafts).

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde_json::Value;

use super::record::{changed_fields, open_case_only};
use super::{Db, Result, StoreError, audit};
use crate::crypto::field::{DataKey, FieldLoc};
use crate::model::record::{field_error, merge_patch};
use crate::model::{Actor, AuditEvent, Outcome, now_ms};

/// A vital-sign reading marked entered-in-error (kept in the vitals history).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VoidedReading {
    pub id: i64,
    pub name: String,
    pub value: f64,
    pub t_ms: i64,
    pub voided_at_ms: i64,
    pub voided_by: String,
    pub reason: String,
}

type VoidRow = (i64, String, Vec<u8>, i64, i64, String, Vec<u8>);

/// The case's readings marked entered-in-error, oldest first.
pub(super) fn voided_readings(
    conn: &Connection,
    dk: &DataKey,
    case_id: &str,
) -> Result<Vec<VoidedReading>> {
    let rows: Vec<VoidRow> = conn
        .prepare_cached(
            "SELECT id, code, value, device_time, voided_at, voided_by, void_reason FROM observations \
             WHERE case_id = ?1 AND voided_at IS NOT NULL ORDER BY device_time, id",
        )?
        .query_map([case_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, code, ct, t, at, by, reason) in rows {
        let row = format!("{id}|{by}|{at}");
        let reason = dk.open(
            FieldLoc {
                table: "observations",
                column: "void_reason",
                row_id: &row,
            },
            &reason,
        )?;
        out.push(VoidedReading {
            value: super::readings::open_value(dk, (id, &code, t), &ct)?,
            id,
            name: code,
            t_ms: t,
            voided_at_ms: at,
            voided_by: by,
            reason: String::from_utf8_lossy(&reason).into_owned(),
        });
    }
    Ok(out)
}

impl Db {
    /// Applies a merge patch to a case's details (chief complaint, mechanism, onset).
    /// Returns the new version.
    pub fn patch_case(
        &mut self,
        actor: &Actor,
        case_id: &str,
        patch: &Value,
        if_match: Option<i64>,
    ) -> Result<i64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (case, dk_id) = self.st.read_case(&tx, case_id)?;
        open_case_only(&tx, case_id)?;
        if let Some(m) = if_match
            && m != case.version
        {
            return Err(StoreError::Stale {
                what: format!("case {case_id}"),
                current: case.version,
            });
        }
        let before = serde_json::to_value(&case.details).expect("json");
        let mut after = before.clone();
        merge_patch(&mut after, patch);
        let d: crate::model::CaseDetails = serde_json::from_value(after.clone())
            .map_err(|e| StoreError::InvalidRecord(field_error(&e)))?;
        d.validate().map_err(StoreError::InvalidRecord)?;
        let dk = self.st.data_key(&tx, dk_id, "case", case_id)?;
        let mut n = 0;
        let sealed = super::cases::seal_details(&dk, case_id, &d, &mut n)?;
        self.st.count_invocations(&tx, dk.id(), n)?;
        tx.execute(
            "UPDATE cases SET chief_complaint = ?1, mechanism = ?2, onset = ?3, version = version + 1 WHERE id = ?4",
            params![sealed[0], sealed[1], sealed[2], case_id],
        )?;
        let ev = AuditEvent::new(actor, "case.update", format!("case/{case_id}"), Outcome::Success)
            .territory(&case.territory)
            .details(serde_json::json!({ "fields": changed_fields(&before, &after), "version": case.version + 1 }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(case.version + 1)
    }

    /// Applies a merge patch to a patient's demographics. Returns the new version.
    pub fn patch_patient(
        &mut self,
        actor: &Actor,
        patient_id: &str,
        patch: &Value,
        if_match: Option<i64>,
    ) -> Result<i64> {
        let (current, fields) = {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let p = self.st.read_patient(&tx, patient_id)?;
            if let Some(m) = if_match
                && m != p.version
            {
                return Err(StoreError::Stale {
                    what: format!("patient {patient_id}"),
                    current: p.version,
                });
            }
            let before = serde_json::to_value(&p.patient).expect("json");
            let mut after = before.clone();
            merge_patch(&mut after, patch);
            let fields = changed_fields(&before, &after);
            let new: crate::model::Patient = serde_json::from_value(after)
                .map_err(|e| StoreError::InvalidRecord(field_error(&e)))?;
            drop(tx);
            (new, (fields, p.version))
        };
        // The same checks and write as a full update, under the version read above.
        self.update_patient_checked(actor, patient_id, &current, Some(fields.1), &fields.0)?;
        Ok(fields.1 + 1)
    }

    /// Marks a vital-sign reading entered-in-error (reason sealed): it leaves triage, the
    /// handoff and exports and stays in the vitals history.
    pub fn void_observation(
        &mut self,
        actor: &Actor,
        case_id: &str,
        obs_id: i64,
        reason: &str,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (territory, dk) = self.st.live_case(&tx, case_id)?;
        open_case_only(&tx, case_id)?;
        let voided: Option<Option<i64>> = tx
            .query_row(
                "SELECT voided_at FROM observations WHERE id = ?1 AND case_id = ?2",
                params![obs_id, case_id],
                |r| r.get(0),
            )
            .optional()?;
        match voided {
            None => {
                return Err(StoreError::NotFound {
                    kind: "reading",
                    id: obs_id.to_string(),
                });
            }
            Some(Some(_)) => {
                return Err(StoreError::RecordFinal {
                    id: format!("reading {obs_id} (already entered-in-error)"),
                });
            }
            Some(None) => {}
        }
        let now = now_ms();
        let row = format!("{obs_id}|{}|{now}", actor.id);
        let sealed = dk.seal(
            FieldLoc {
                table: "observations",
                column: "void_reason",
                row_id: &row,
            },
            reason.as_bytes(),
        )?;
        self.st.count_invocations(&tx, dk.id(), 1)?;
        tx.execute(
            "UPDATE observations SET voided_at = ?1, voided_by = ?2, void_reason = ?3 WHERE id = ?4",
            params![now, actor.id, sealed, obs_id],
        )?;
        let ev = AuditEvent::new(
            actor,
            "observation.entered_in_error",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&territory)
        .details(serde_json::json!({ "reading": obs_id, "fields": ["state"] }));
        audit::append(&tx, &self.st, &ev, now)?;
        tx.commit()?;
        Ok(())
    }

    /// The kind of an entry of a case (its plaintext column: nothing is decrypted or audited),
    /// for permission checks before a change.
    pub fn entry_kind(&self, case_id: &str, entry_id: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT kind FROM record_entries WHERE case_id = ?1 AND entry_id = ?2 LIMIT 1",
            )?
            .query_row(params![case_id, entry_id], |r| r.get(0))
            .optional()?)
    }

    /// Everything a case holds, decrypted, for an export that leaves the appliance (NEMSIS, the
    /// handoff PDF): audited as a disclosure by `actor`, naming the format.
    pub fn disclose_case(
        &mut self,
        actor: &Actor,
        case_id: &str,
        format: &str,
    ) -> Result<crate::model::CaseExport> {
        self.gather_case(
            actor,
            case_id,
            "case.disclose",
            serde_json::json!({ "format": format, "purpose": "disclosure" }),
        )
    }

    /// Everything a case holds, decrypted, audited as `action` with `details`.
    pub(super) fn gather_case(
        &mut self,
        actor: &Actor,
        case_id: &str,
        action: &str,
        details: Value,
    ) -> Result<crate::model::CaseExport> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        self.st.live_case(&tx, case_id)?;
        let x = super::outbox::case_export(&mut self.st, &tx, case_id)?;
        let ev = AuditEvent::new(actor, action, format!("case/{case_id}"), Outcome::Success)
            .territory(&x.territory)
            .details(details);
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(x)
    }

    /// Keeps a user's unsaved form of a case (sealed; the form name and body are the tablet's).
    pub fn save_draft(
        &mut self,
        actor: &Actor,
        case_id: &str,
        form: &str,
        body: &Value,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (territory, dk) = self.st.live_case(&tx, case_id)?;
        open_case_only(&tx, case_id)?;
        let now = now_ms();
        let sealed = dk.seal(
            draft_loc(&draft_row(&actor.id, case_id, form)),
            &serde_json::to_vec(body).expect("json"),
        )?;
        self.st.count_invocations(&tx, dk.id(), 1)?;
        tx.execute(
            "INSERT OR REPLACE INTO drafts (user_id, case_id, form, updated_at, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![actor.id, case_id, form, now, sealed],
        )?;
        let ev = AuditEvent::new(
            actor,
            "draft.save",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&territory)
        .details(serde_json::json!({ "form": form }));
        audit::append(&tx, &self.st, &ev, now)?;
        tx.commit()?;
        Ok(())
    }

    /// The caller's own drafts of a case: `(form, saved at, body)` (audited read).
    pub fn drafts(&mut self, actor: &Actor, case_id: &str) -> Result<Vec<(String, i64, Value)>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (territory, dk) = self.st.live_case(&tx, case_id)?;
        let rows: Vec<(String, i64, Vec<u8>)> = tx
            .prepare_cached("SELECT form, updated_at, body FROM drafts WHERE user_id = ?1 AND case_id = ?2 ORDER BY form")?
            .query_map(params![actor.id, case_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (form, at, ct) in rows {
            let plain = dk.open(draft_loc(&draft_row(&actor.id, case_id, &form)), &ct)?;
            let v = serde_json::from_slice(&plain).map_err(|_| StoreError::Undecodable {
                what: format!("draft {form}"),
            })?;
            out.push((form, at, v));
        }
        let ev = AuditEvent::new(
            actor,
            "draft.read",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&territory)
        .details(serde_json::json!({ "drafts": out.len() }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(out)
    }

    /// Drops a user's draft of a form (after it was submitted, or discarded).
    pub fn drop_draft(&mut self, actor: &Actor, case_id: &str, form: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (territory, _) = self.st.live_case(&tx, case_id)?;
        let n = tx.execute(
            "DELETE FROM drafts WHERE user_id = ?1 AND case_id = ?2 AND form = ?3",
            params![actor.id, case_id, form],
        )?;
        let ev = AuditEvent::new(
            actor,
            "draft.drop",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&territory)
        .details(serde_json::json!({ "form": form, "dropped": n }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(())
    }
}

fn draft_row(user: &str, case_id: &str, form: &str) -> String {
    format!("{user}|{case_id}|{form}")
}

fn draft_loc(row: &str) -> FieldLoc<'_> {
    FieldLoc {
        table: "drafts",
        column: "body",
        row_id: row,
    }
}
