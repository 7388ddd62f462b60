//! Handing a patient over: the transfer of care (who took over and when) recorded in the
//! disposition and times sections and the case moved to `handed_off`, all in one transaction;
//! and the case as the handoff screen reads it (audited as `case.handoff`).

use rusqlite::{OptionalExtension, TransactionBehavior};
use serde_json::json;

use super::record::{EntryWritten, section_change, write_in};
use super::{Db, Result, StoreError, audit};
use crate::model::record::Section;
use crate::model::{Actor, AuditEvent, CaseExport, Outcome, now_ms};

/// A transfer of care as the crew records it.
#[derive(Debug, Clone)]
pub struct TransferOfCare<'a> {
    /// The receiving clinician's name.
    pub to: &'a str,
    /// Their role or unit (`ED charge nurse`).
    pub role: Option<&'a str>,
    /// When care was transferred; now when `None`.
    pub at_ms: Option<i64>,
}

impl Db {
    /// Records the transfer of care and moves an open case to `handed_off` (a case already
    /// handed off may have its transfer corrected). Returns the new disposition and times
    /// versions. The record stays editable until the case is closed.
    pub fn transfer_care(
        &mut self,
        actor: &Actor,
        case_id: &str,
        t: &TransferOfCare<'_>,
    ) -> Result<(EntryWritten, EntryWritten)> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let disposition = json!({ "transfer_to": t.to, "transfer_to_role": t.role });
        let d = write_in(
            &mut self.st,
            &tx,
            actor,
            case_id,
            None,
            Section::Disposition.as_str(),
            section_change(Section::Disposition, &disposition),
        )?;
        let at_ms = t.at_ms.unwrap_or_else(now_ms);
        let times = json!({ "transfer_of_care_ms": at_ms });
        let tm = write_in(
            &mut self.st,
            &tx,
            actor,
            case_id,
            None,
            Section::Times.as_str(),
            section_change(Section::Times, &times),
        )?;
        // The writes above checked the case is live and not closed.
        let territory: String = tx
            .query_row(
                "UPDATE cases SET status = 'handed_off', version = version + 1 \
                 WHERE id = ?1 AND status IN ('open', 'handed_off') RETURNING territory",
                [case_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::CaseClosed {
                case_id: case_id.into(),
            })?;
        let ev = AuditEvent::new(
            actor,
            "case.transfer",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&territory)
        .details(json!({ "transfer_of_care_ms": at_ms, "purpose": "treatment" }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok((d, tm))
    }

    /// The case as the handoff screen and its PDF preview read it: one audited read
    /// (`case.handoff`, purpose treatment).
    pub fn handoff_case(&mut self, actor: &Actor, case_id: &str) -> Result<CaseExport> {
        self.gather_case(
            actor,
            case_id,
            "case.handoff",
            json!({ "purpose": "treatment" }),
        )
    }
}
