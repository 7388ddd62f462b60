//! Triage inputs and results: the case snapshot the triage reads (audited) and the results it
//! writes (reasons encrypted under the case key, audited).

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Db, Result, State, StoreError, audit};
use crate::crypto::field::FieldLoc;
use crate::model::{
    Actor, AuditEvent, CaseSnapshot, Decider, Outcome, StoredTriage, TriageRecord, now_ms,
};

impl State {
    /// Territory and unwrapped data key of a case that exists and is not erased.
    pub(super) fn live_case(
        &mut self,
        conn: &rusqlite::Connection,
        case_id: &str,
    ) -> Result<(String, std::sync::Arc<crate::crypto::field::DataKey>)> {
        let (territory, dk_id, erased): (String, i64, Option<i64>) = conn
            .prepare_cached("SELECT territory, dk_id, erased_at FROM cases WHERE id = ?1")?
            .query_row([case_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "case",
                id: case_id.into(),
            })?;
        if erased.is_some() {
            return Err(StoreError::Erased {
                kind: "case",
                id: case_id.into(),
            });
        }
        let dk = self.data_key(conn, dk_id, "case", case_id)?;
        Ok((territory, dk))
    }
}

impl Db {
    /// Latest reading per vital, age, sex and chief complaint of a case (one audited read).
    pub fn case_snapshot(&mut self, actor: &Actor, case_id: &str) -> Result<CaseSnapshot> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (territory, dk_id, patient_id, erased, cc): (String, i64, Option<String>, Option<i64>, Option<Vec<u8>>) = tx
            .query_row("SELECT territory, dk_id, patient_id, erased_at, chief_complaint FROM cases WHERE id = ?1", [case_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound { kind: "case", id: case_id.into() })?;
        if erased.is_some() {
            return Err(StoreError::Erased {
                kind: "case",
                id: case_id.into(),
            });
        }
        let dk = self.st.data_key(&tx, dk_id, "case", case_id)?;
        let rows: Vec<(i64, String, Vec<u8>, i64)> = tx
            .prepare_cached(
                // Latest by effective time (device time, capped at arrival; see
                // `Observation::effective_time_ms`), newest row first on ties.
                "SELECT id, code, value, device_time FROM (SELECT id, code, value, device_time, row_number() OVER \
                 (PARTITION BY code ORDER BY min(device_time, recv_time) DESC, id DESC) AS rn \
                 FROM observations WHERE case_id = ?1 AND voided_at IS NULL) WHERE rn = 1 ORDER BY code",
            )?
            .query_map([case_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        let mut snap = CaseSnapshot::default();
        for (id, code, ct, t) in rows {
            let v = super::readings::open_value(&dk, (id, &code, t), &ct)?;
            snap.latest.push((code, v));
        }
        if let Some(ct) = cc {
            let p = dk.open(
                FieldLoc {
                    table: "cases",
                    column: "chief_complaint",
                    row_id: case_id,
                },
                &ct,
            )?;
            snap.chief_complaint = String::from_utf8(p).ok();
        }
        if let Some(pid) = patient_id {
            match self.st.read_patient(&tx, &pid) {
                Ok(p) => {
                    let p = p.patient;
                    // A known birth date wins over the crew's estimate.
                    snap.age_years = p
                        .date_of_birth
                        .as_deref()
                        .and_then(|d| crate::model::age_years(d, now_ms()))
                        .or(p.estimated_age_years.map(f64::from));
                    snap.sex = p.sex;
                }
                Err(StoreError::Erased { .. } | StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let o2 = super::record::read_entries(
            &tx,
            &dk,
            case_id,
            super::record::Which::Kinds(&["oxygen", "spo2_scale"]),
        )?
        .oxygen_state(now_ms());
        snap.on_oxygen = o2.on_oxygen;
        snap.spo2_scale2 = o2.scale2;
        let ev = AuditEvent::new(
            actor,
            "case.triage_read",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&territory)
        .details(serde_json::json!({ "vitals": snap.latest.len() }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(snap)
    }

    /// Stores a triage result of a case. Returns its id.
    pub fn record_triage(&mut self, actor: &Actor, case_id: &str, t: &TriageRecord) -> Result<i64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (territory, dk) = self.st.live_case(&tx, case_id)?;
        let id: i64 = tx.query_row(
            "SELECT coalesce(max(id), 0) + 1 FROM triage_results",
            [],
            |r| r.get(0),
        )?;
        let row = super::readings::triage_row(
            id,
            (t.final_esi, t.rules_esi, t.model_esi, t.news2),
            t.specialty.as_deref(),
            t.decider.as_str(),
        );
        let reasons = dk.seal(
            FieldLoc {
                table: "triage_results",
                column: "reasons",
                row_id: &row,
            },
            &serde_json::to_vec(&t.reasons).expect("strings serialise"),
        )?;
        self.st.count_invocations(&tx, dk.id(), 1)?;
        tx.execute(
            "INSERT INTO triage_results (id, case_id, created_at, final_esi, rules_esi, model_esi, news2, specialty, confidence, \
             model_id, model_hash, decider, abstained, reasons) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                id, case_id, now_ms(), t.final_esi, t.rules_esi, t.model_esi, t.news2, t.specialty, t.confidence.map(f64::from),
                t.model_id, t.model_hash, t.decider.as_str(), t.abstained, reasons
            ],
        )?;
        let ev = AuditEvent::new(
            actor,
            "triage.record",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&territory)
        .details(
            serde_json::json!({ "triage": id, "decider": t.decider.as_str(), "model": t.model_id }),
        );
        audit::append(&tx, &self.st, &ev, now_ms())?;
        super::prealerts::on_triage(&tx, case_id, i64::from(t.final_esi), now_ms())?;
        tx.commit()?;
        Ok(id)
    }

    /// The most recent triage results of a case, newest first (audited read).
    pub fn triage_history(
        &mut self,
        actor: &Actor,
        case_id: &str,
        limit: usize,
    ) -> Result<Vec<StoredTriage>> {
        let a = self.read_triage_history(actor, case_id, limit);
        self.finish_audited(a)
    }

    /// [`Db::triage_history`] on a reader: the results and their audit entry, not yet written.
    pub fn read_triage_history(
        &mut self,
        actor: &Actor,
        case_id: &str,
        limit: usize,
    ) -> super::Audited<Vec<StoredTriage>> {
        super::Audited::of((|| {
            let tx = self.conn.transaction()?;
            let (territory, dk) = self.st.live_case(&tx, case_id)?;
            let out = read_triage(&tx, &dk, case_id, limit)?;
            tx.commit()?;
            let ev = AuditEvent::new(
                actor,
                "triage.read",
                format!("case/{case_id}"),
                Outcome::Success,
            )
            .territory(&territory);
            Ok((out, ev))
        })())
    }
}

/// Decrypted triage results of a case, newest first (no audit: callers audit their access).
pub(super) fn read_triage(
    tx: &rusqlite::Connection,
    dk: &crate::crypto::field::DataKey,
    case_id: &str,
    limit: usize,
) -> Result<Vec<StoredTriage>> {
    type Row = (
        i64,
        i64,
        u8,
        u8,
        Option<u8>,
        Option<u8>,
        Option<String>,
        Option<f64>,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        Vec<u8>,
    );
    let rows: Vec<Row> = tx
        .prepare(
            "SELECT id, created_at, final_esi, rules_esi, model_esi, news2, specialty, confidence, model_id, model_hash, decider, abstained, reasons \
             FROM triage_results WHERE case_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?
        .query_map(params![case_id, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, at, fin, rules, model, news2, spec, conf, mid, mh, decider, abst, ct) in rows {
        let row =
            super::readings::triage_row(id, (fin, rules, model, news2), spec.as_deref(), &decider);
        let plain = dk.open(
            FieldLoc {
                table: "triage_results",
                column: "reasons",
                row_id: &row,
            },
            &ct,
        )?;
        let reasons: Vec<String> = serde_json::from_slice(&plain).unwrap_or_default();
        let decider = Decider::parse(&decider).ok_or_else(|| StoreError::Undecodable {
            what: format!("the decider of triage {id}"),
        })?;
        out.push(StoredTriage {
            id,
            created_at_ms: at,
            record: TriageRecord {
                final_esi: fin,
                rules_esi: rules,
                model_esi: model,
                news2,
                specialty: spec,
                confidence: conf.map(|c| c as f32),
                model_id: mid,
                model_hash: mh,
                decider,
                abstained: abst,
                reasons,
            },
        });
    }
    Ok(out)
}

impl Db {
    /// Triage results stored (metrics).
    pub fn triage_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM triage_results", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }
}
