//! Cases: the `cases` table — open, list, read (the audited composite view
//! the tablet shows), close, crypto-erase; the territory a patient or case belongs to.

use super::patients::{failure_event, new_id, open_opt, seal_opt, utf8};
use super::readings::read_case_observations;
use super::{Audited, Db, Result, State, StoreError, audit, triage::read_triage};
use crate::crypto::field::FieldLoc;
use crate::model::record::CaseRecord;
use crate::model::{
    Actor, AlarmKind, AuditEvent, Case, CaseDetails, CaseStatus, Observation, OutboxState, Outcome,
    StoredPatient, StoredTriage, now_ms,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// One line of the case list. `patient_name` and `esi` are only filled for callers allowed to see
/// them (`names` / `clinical`).
#[derive(Debug, Clone, PartialEq)]
pub struct CaseSummary {
    pub id: String,
    pub status: String,
    pub created_at_ms: i64,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub esi: Option<u8>,
    pub devices: Vec<String>,
}

/// Custody state of a case's bundles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleState {
    pub bundle_id: String,
    pub kind: String,
    pub state: OutboxState,
    pub attempts: i64,
    pub created_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub receipted_at_ms: Option<i64>,
}

/// An open alarm on a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseAlarm {
    pub id: i64,
    pub kind: AlarmKind,
    pub device_id: Option<String>,
    pub raised_at_ms: i64,
    pub detail: String,
}

/// Everything the case screen shows, read in one audited transaction.
#[derive(Debug, Clone)]
pub struct CaseView {
    pub case: Case,
    pub patient: Option<StoredPatient>,
    pub devices: Vec<String>,
    pub alarms: Vec<CaseAlarm>,
    pub triage: Vec<StoredTriage>,
    /// The care record (sections and events, every version).
    pub record: CaseRecord,
    pub vitals: Vec<Observation>,
    pub bundles: Vec<BundleState>,
}

/// Which parts of a case read the caller may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaseParts {
    /// Clinical record: vitals, triage, the care record, alarms, complaint.
    pub clinical: bool,
    /// Demographics of the case's patient.
    pub demographics: bool,
}

/// Seals a case's details (chief complaint, mechanism, onset) for its row, counting the
/// sealings in `n`: the one place both opening and editing a case write them.
pub(super) fn seal_details(
    dk: &crate::crypto::field::DataKey,
    case_id: &str,
    d: &CaseDetails,
    n: &mut u64,
) -> Result<[Option<Vec<u8>>; 3]> {
    let mut sealed = [None, None, None];
    for (out, (column, value)) in sealed.iter_mut().zip([
        ("chief_complaint", &d.chief_complaint),
        ("mechanism", &d.mechanism),
        ("onset", &d.onset),
    ]) {
        let loc = FieldLoc {
            table: "cases",
            column,
            row_id: case_id,
        };
        *out = seal_opt(dk, loc, value.as_deref().map(str::as_bytes), n)?;
    }
    Ok(sealed)
}

pub(super) fn case_devices(conn: &rusqlite::Connection, case_id: &str) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT id FROM devices WHERE bound_case = ?1 AND removed_at IS NULL ORDER BY id",
        )?
        .query_map([case_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

pub(super) fn case_bundles(conn: &rusqlite::Connection, case_id: &str) -> Result<Vec<BundleState>> {
    Ok(conn
        .prepare_cached(
            "SELECT bundle_id, kind, state, attempts, created_at, sent_at, receipted_at FROM outbox WHERE case_id = ?1 ORDER BY seq",
        )?
        .query_map([case_id], |r| {
            Ok(BundleState {
                bundle_id: r.get(0)?,
                kind: r.get(1)?,
                state: r.get(2)?,
                attempts: r.get(3)?,
                created_at_ms: r.get(4)?,
                sent_at_ms: r.get(5)?,
                receipted_at_ms: r.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

impl State {
    pub(super) fn read_case(&mut self, conn: &Connection, id: &str) -> Result<(Case, i64)> {
        type Row = (
            String,
            Option<String>,
            i64,
            String,
            i64,
            Option<i64>,
            Option<i64>,
            [Option<Vec<u8>>; 3],
            i64,
        );
        let row: Option<Row> = conn
            .prepare_cached(
                "SELECT territory, patient_id, dk_id, status, created_at, closed_at, erased_at, chief_complaint, mechanism, onset, \
                 version FROM cases WHERE id = ?1",
            )?
            .query_row([id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, [r.get(7)?, r.get(8)?, r.get(9)?], r.get(10)?))
            })
            .optional()?;
        let (territory, patient_id, dk_id, status, created, closed, erased, cols, version) = row
            .ok_or_else(|| StoreError::NotFound {
                kind: "case",
                id: id.into(),
            })?;
        if erased.is_some() {
            return Err(StoreError::Erased {
                kind: "case",
                id: id.into(),
            });
        }
        let dk = self.data_key(conn, dk_id, "case", id)?;
        let loc = |column| FieldLoc {
            table: "cases",
            column,
            row_id: id,
        };
        let [a, b, c] = cols;
        let details = CaseDetails {
            chief_complaint: utf8(
                "cases",
                "chief_complaint",
                open_opt(&dk, loc("chief_complaint"), a)?,
            )?,
            mechanism: utf8("cases", "mechanism", open_opt(&dk, loc("mechanism"), b)?)?,
            onset: utf8("cases", "onset", open_opt(&dk, loc("onset"), c)?)?,
        };
        let status = CaseStatus::parse(&status).ok_or_else(|| StoreError::Undecodable {
            what: format!("the status of case {id}"),
        })?;
        Ok((
            Case {
                id: id.into(),
                territory,
                patient_id,
                status,
                created_at_ms: created,
                closed_at_ms: closed,
                details,
                version,
            },
            dk_id,
        ))
    }
}

impl Db {
    /// Territory of a patient or case (`kind` is `patient` or `case`), without reading PHI.
    pub fn territory_of(&self, kind: &str, id: &str) -> Result<Option<String>> {
        let sql = match kind {
            "patient" => "SELECT territory FROM patients WHERE id = ?1",
            "case" => "SELECT territory FROM cases WHERE id = ?1",
            _ => {
                return Err(StoreError::InvalidId {
                    kind: "resource kind",
                    id: kind.into(),
                });
            }
        };
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    /// Opens a case, optionally for an existing patient of the same territory.
    pub fn create_case(
        &mut self,
        actor: &Actor,
        territory: &str,
        patient_id: Option<&str>,
        d: &CaseDetails,
    ) -> Result<String> {
        let id = new_id();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(pid) = patient_id {
            let t: Option<String> = tx
                .query_row("SELECT territory FROM patients WHERE id = ?1", [pid], |r| {
                    r.get(0)
                })
                .optional()?;
            match t {
                None => {
                    return Err(StoreError::NotFound {
                        kind: "patient",
                        id: pid.into(),
                    });
                }
                Some(t) if t != territory => {
                    return Err(StoreError::NotFound {
                        kind: "patient",
                        id: pid.into(),
                    });
                }
                Some(_) => {}
            }
            // A patient whose key was destroyed (crypto-erased after custody) cannot start a
            // case: it could never be sealed (review #19).
            let pdk: i64 =
                tx.query_row("SELECT dk_id FROM patients WHERE id = ?1", [pid], |r| {
                    r.get(0)
                })?;
            self.st.data_key(&tx, pdk, "patient", pid)?;
        }
        let dk = self
            .st
            .new_data_key(&tx, territory, &format!("case/{id}"))?;
        let mut n = 0;
        let [cc, me, on] = seal_details(&dk, &id, d, &mut n)?;
        tx.execute(
            "INSERT INTO cases (id, territory, patient_id, dk_id, status, created_at, created_by, chief_complaint, mechanism, onset) \
             VALUES (?1, ?2, ?3, ?4, 'open', ?5, ?6, ?7, ?8, ?9)",
            params![id, territory, patient_id, dk.id(), now_ms(), actor.id, cc, me, on],
        )?;
        self.st.count_invocations(&tx, dk.id(), n)?;
        let ev = AuditEvent::new(actor, "case.create", format!("case/{id}"), Outcome::Success)
            .territory(territory);
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(id)
    }

    /// Reads and decrypts a case (audited).
    pub fn get_case(&mut self, actor: &Actor, id: &str) -> Result<Case> {
        let r = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (c, _) = self.st.read_case(&tx, id)?;
            let ev = AuditEvent::new(actor, "case.read", format!("case/{id}"), Outcome::Success)
                .territory(&c.territory);
            audit::append(&tx, &self.st, &ev, now_ms())?;
            tx.commit()?;
            Ok(c)
        })();
        if let Err(e) = &r {
            self.audit_failure(actor, "case.read", format!("case/{id}"), e);
        }
        r
    }

    /// Open and recent cases of a territory, newest first (one audited read).
    pub fn list_cases(
        &mut self,
        actor: &Actor,
        territory: &str,
        parts: CaseParts,
        limit: usize,
    ) -> Result<Vec<CaseSummary>> {
        let a = self.read_case_list(actor, territory, parts, limit);
        self.finish_audited(a)
    }

    /// [`Db::list_cases`] on a reader: the list and its audit entry, not yet written.
    pub fn read_case_list(
        &mut self,
        actor: &Actor,
        territory: &str,
        parts: CaseParts,
        limit: usize,
    ) -> Audited<Vec<CaseSummary>> {
        // A list that failed showed nothing; the failure is the error itself.
        Audited::of(self.case_list_tx(actor, territory, parts, limit))
    }

    fn case_list_tx(
        &mut self,
        actor: &Actor,
        territory: &str,
        parts: CaseParts,
        limit: usize,
    ) -> Result<(Vec<CaseSummary>, AuditEvent)> {
        let tx = self.conn.transaction()?;
        let rows: Vec<(String, String, i64, Option<String>)> = tx
            .prepare_cached(
                "SELECT id, status, created_at, patient_id FROM cases WHERE territory = ?1 AND erased_at IS NULL \
                 ORDER BY (status = 'closed'), created_at DESC LIMIT ?2",
            )?
            .query_map(params![territory, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, status, created, patient_id) in rows {
            let patient_name = match (&patient_id, parts.demographics) {
                (Some(pid), true) => match self.st.read_patient(&tx, pid) {
                    Ok(p) => Some(
                        [p.patient.first_name, p.patient.last_name]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join(" "),
                    )
                    .filter(|s| !s.is_empty()),
                    Err(StoreError::Erased { .. }) => None,
                    Err(e) => return Err(e),
                },
                _ => None,
            };
            let esi: Option<u8> = if parts.clinical {
                tx.prepare_cached(
                    "SELECT final_esi FROM triage_results WHERE case_id = ?1 ORDER BY id DESC LIMIT 1",
                )?
                .query_row([&id], |r| r.get(0))
                .optional()?
            } else {
                None
            };
            let devices = case_devices(&tx, &id)?;
            out.push(CaseSummary {
                id,
                status,
                created_at_ms: created,
                patient_id,
                patient_name,
                esi,
                devices,
            });
        }
        let ev = AuditEvent::new(actor, "case.list", "case/*", Outcome::Success)
            .territory(territory)
            .details(serde_json::json!({
                "cases": out.len(), "clinical": parts.clinical, "demographics": parts.demographics,
                // Accounting of disclosures: whose names this list showed (review #27).
                "patients_shown": if parts.demographics {
                    out.iter().filter_map(|c| c.patient_id.as_deref()).collect::<Vec<_>>()
                } else {
                    Vec::new()
                },
            }));
        tx.commit()?;
        Ok((out, ev))
    }

    /// The case screen: case, patient, devices, alarms, triage, medications, vitals and bundle
    /// custody, read in one snapshot with one audit entry (`action`, e.g. `case.read` or
    /// `case.handoff`).
    pub fn case_view(
        &mut self,
        actor: &Actor,
        id: &str,
        parts: CaseParts,
        action: &str,
    ) -> Result<CaseView> {
        let a = self.read_case_view(actor, id, parts, action);
        self.finish_audited(a)
    }

    /// [`Db::case_view`] on a reader: the view and its audit entry (a failure's too), not yet
    /// written.
    pub fn read_case_view(
        &mut self,
        actor: &Actor,
        id: &str,
        parts: CaseParts,
        action: &str,
    ) -> Audited<CaseView> {
        Audited::or_failure(self.case_view_tx(actor, id, parts, action), |e| {
            Some(failure_event(actor, action, format!("case/{id}"), e))
        })
    }

    fn case_view_tx(
        &mut self,
        actor: &Actor,
        id: &str,
        parts: CaseParts,
        action: &str,
    ) -> Result<(CaseView, AuditEvent)> {
        let tx = self.conn.transaction()?;
        let (mut case, dk_id) = self.st.read_case(&tx, id)?;
        let patient = match (&case.patient_id, parts.demographics) {
            (Some(pid), true) => Some(self.st.read_patient(&tx, pid)?),
            _ => None,
        };
        let devices = case_devices(&tx, id)?;
        let bundles = case_bundles(&tx, id)?;
        let (mut alarms, mut triage, mut record, mut vitals) =
            (Vec::new(), Vec::new(), CaseRecord::default(), Vec::new());
        if parts.clinical {
            let dk = self.st.data_key(&tx, dk_id, "case", id)?;
            alarms = tx
                .prepare_cached("SELECT id, kind, device_id, raised_at, detail FROM alarms WHERE case_id = ?1 AND cleared_at IS NULL ORDER BY id")?
                .query_map([id], |r| {
                    Ok(CaseAlarm {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        device_id: r.get(2)?,
                        raised_at_ms: r.get(3)?,
                        detail: r.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            triage = read_triage(&tx, &dk, id, 20)?;
            vitals = read_case_observations(&tx, &dk, id)?;
            record = super::record::read_entries(&tx, &dk, id, super::record::Which::All)?;
        } else {
            case.details = Default::default();
        }
        let ev = AuditEvent::new(actor, action, format!("case/{id}"), Outcome::Success)
            .territory(&case.territory)
            .details(serde_json::json!({ "clinical": parts.clinical, "demographics": parts.demographics }));
        tx.commit()?;
        Ok((
            CaseView {
                case,
                patient,
                devices,
                alarms,
                triage,
                record,
                vitals,
                bundles,
            },
            ev,
        ))
    }

    /// Closes a case (audited). Its bundle is sealed and queued by the sync task.
    pub fn close_case(&mut self, actor: &Actor, case_id: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (territory, _) = self.st.live_case(&tx, case_id)?;
        let n = tx.execute(
            "UPDATE cases SET status = 'closed', closed_at = ?1 WHERE id = ?2 AND status != 'closed'",
            params![now_ms(), case_id],
        )?;
        if n == 0 {
            return Err(StoreError::CaseClosed {
                case_id: case_id.into(),
            });
        }
        tx.execute(
            "UPDATE devices SET bound_case = NULL, bound_at = NULL WHERE bound_case = ?1",
            [case_id],
        )?;
        let ev = AuditEvent::new(
            actor,
            "case.close",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&territory);
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// Crypto-erases a case: destroys its data key (and its patient's, when no other live case
    /// refers to that patient), then truncates the WAL so no old page survives in it.
    pub fn erase_case(&mut self, actor: &Actor, id: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (territory, dk_id, patient_id, erased): (String, i64, Option<String>, Option<i64>) = tx
            .query_row(
                "SELECT territory, dk_id, patient_id, erased_at FROM cases WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "case",
                id: id.into(),
            })?;
        if erased.is_some() {
            return Err(StoreError::Erased {
                kind: "case",
                id: id.into(),
            });
        }
        Db::destroy_data_key(&mut self.st, &tx, dk_id)?;
        tx.execute("UPDATE cases SET erased_at = ?1, chief_complaint = NULL, mechanism = NULL, onset = NULL WHERE id = ?2", params![now_ms(), id])?;
        // What the case's key protected is gone; so is what it left in plaintext beside it
        // (vital codes and times, ESI, NEWS2, specialty, medication metadata, alarms,
        // attachment kinds and sizes), and the sealed attachment chunks with it.
        tx.execute(
            "DELETE FROM attachment_chunks WHERE attachment_id IN (SELECT id FROM attachments WHERE case_id = ?1)",
            [id],
        )?;
        for table in [
            "attachments",
            "observations",
            "triage_results",
            "medications",
            "alarms",
            "record_entries",
            "request_keys",
            "drafts",
        ] {
            tx.execute(&format!("DELETE FROM {table} WHERE case_id = ?1"), [id])?;
        }
        tx.execute(
            "UPDATE devices SET bound_case = NULL WHERE bound_case = ?1",
            [id],
        )?;
        let mut erased_patient = false;
        if let Some(pid) = &patient_id {
            let others: i64 = tx.query_row(
                "SELECT count(*) FROM cases WHERE patient_id = ?1 AND id != ?2 AND erased_at IS NULL",
                params![pid, id],
                |r| r.get(0),
            )?;
            if others == 0 {
                let pdk: i64 =
                    tx.query_row("SELECT dk_id FROM patients WHERE id = ?1", [pid], |r| {
                        r.get(0)
                    })?;
                Db::destroy_data_key(&mut self.st, &tx, pdk)?;
                erased_patient = true;
            }
        }
        let ev = AuditEvent::new(actor, "case.erase", format!("case/{id}"), Outcome::Success)
            .territory(&territory)
            .details(serde_json::json!({ "patient_erased": erased_patient }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        self.wal_checkpoint()?;
        Ok(())
    }
}
