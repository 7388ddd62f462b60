//! Finding entries: by patient, case, user and time, scoped to a territory (`audit query`,
//! `GET /api/v1/audit`), and a patient's accounting of disclosures.
//!
//! An entry concerns the patient or case its resource names (found through `audit_by_resource`)
//! and those its hashed details name ([`crate::model::access::subjects`]); `audit_subjects`
//! indexes the latter ([`index_rows`]). When an entry is written, [`enrich`] first adds to its
//! details the case and patient its resource belongs to (an attachment's case, a case's
//! patient), so the entry names them even after the rows are erased or purged. `audit verify`
//! checks that no derivable index row is missing.

use rusqlite::{Connection, OptionalExtension, ToSql, TransactionBehavior, params};
use serde_json::{Map, Value};

use super::AuditRow;
use crate::model::access::{self, AccessKind, Subject};
use crate::model::{Actor, AuditEvent, Outcome, now_ms};
use crate::storage::Result;

/// The most rows one query returns (the API pages with `before`).
pub const MAX_ROWS: usize = 10_000;

/// What to look for; every field narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Entries about this patient: its own, its cases', lists that showed it.
    pub patient: Option<String>,
    pub case: Option<String>,
    /// Entries by this user id.
    pub user: Option<String>,
    /// `ts >= since_ms`.
    pub since_ms: Option<i64>,
    /// `ts < until_ms`.
    pub until_ms: Option<i64>,
    /// Only entries of this territory (a supervisor's scope).
    pub territory: Option<String>,
    /// Entries before this sequence number (paging, newest first).
    pub before_seq: Option<i64>,
    /// At most this many, newest first (capped at [`MAX_ROWS`]).
    pub limit: usize,
}

impl AuditFilter {
    /// The filter as recorded in the audit entry of the query itself (ids, never PHI).
    fn details(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        put("patient", self.patient.clone().map(Value::from));
        put("case", self.case.clone().map(Value::from));
        put("user", self.user.clone().map(Value::from));
        put("since", self.since_ms.map(Value::from));
        put("until", self.until_ms.map(Value::from));
        m
    }
}

/// Adds to an entry's details the case and patient its resource belongs to, when they are not
/// named already: `case/Y` → Y's patient; `attachment/Z`, `bundle/B` → their case and its
/// patient.
pub(super) fn enrich(
    conn: &Connection,
    resource: &str,
    details: &mut Map<String, Value>,
) -> Result<()> {
    let Some((kind, id)) = resource.split_once('/') else {
        return Ok(());
    };
    if id == "*" || !matches!(kind, "case" | "attachment" | "bundle") {
        return Ok(());
    }
    let mut case = details
        .get("case")
        .and_then(Value::as_str)
        .map(str::to_string);
    if case.is_none() {
        let sql = match kind {
            "case" => None,
            "attachment" => Some("SELECT case_id FROM attachments WHERE id = ?1"),
            _ => Some("SELECT case_id FROM outbox WHERE bundle_id = ?1"),
        };
        case = match sql {
            None => Some(id.to_string()),
            Some(sql) => {
                let c: Option<Option<String>> = conn
                    .prepare_cached(sql)?
                    .query_row([id], |r| r.get(0))
                    .optional()?;
                let c = c.flatten();
                if let Some(c) = &c {
                    details.insert("case".into(), Value::from(c.as_str()));
                }
                c
            }
        };
    }
    if let Some(case) = case
        && !details.contains_key("patient")
    {
        let p: Option<Option<String>> = conn
            .prepare_cached("SELECT patient_id FROM cases WHERE id = ?1")?
            .query_row([&case], |r| r.get(0))
            .optional()?;
        if let Some(p) = p.flatten() {
            details.insert("patient".into(), Value::from(p));
        }
    }
    Ok(())
}

/// Records the subjects of entry `seq`.
pub(super) fn index(conn: &Connection, seq: i64, subjects: &[Subject]) -> Result<()> {
    let mut st = conn.prepare_cached(
        "INSERT OR IGNORE INTO audit_subjects (kind, id, seq) VALUES (?1, ?2, ?3)",
    )?;
    for s in subjects {
        st.execute(params![s.kind, s.id, seq])?;
    }
    Ok(())
}

/// Fills `audit_subjects` for the entries written before it existed: what their resource and
/// details say, plus the patient of a case entry and the case of an attachment entry as the
/// rows say now (those entries could not name them). Returns the rows added.
pub(crate) fn backfill(conn: &Connection) -> Result<u64> {
    let mut n = 0u64;
    let mut st = conn.prepare("SELECT seq, resource, details FROM audit_log ORDER BY seq")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let (seq, resource, details): (i64, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let mut d = match serde_json::from_str::<Value>(&details) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        enrich(conn, &resource, &mut d)?;
        let subjects = index_rows(&resource, &Value::Object(d));
        index(conn, seq, &subjects)?;
        n += subjects.len() as u64;
    }
    Ok(n)
}

/// The rows `audit_subjects` holds for an entry: its subjects other than its own resource
/// (`audit_by_resource` finds those).
pub(super) fn index_rows(resource: &str, details: &Value) -> Vec<Subject> {
    access::subjects(resource, details)
        .into_iter()
        .filter(|s| {
            resource
                .strip_prefix(s.kind)
                .and_then(|r| r.strip_prefix('/'))
                != Some(s.id.as_str())
        })
        .collect()
}

/// [`index_rows`] of an entry as stored (its details as text); the details are parsed only
/// when they name a patient or case (`audit verify` runs this for every entry).
pub(super) fn stored_index_rows(resource: &str, details: &str) -> Vec<Subject> {
    if !details.contains("\"patient") && !details.contains("\"case\"") {
        return Vec::new();
    }
    let d: Value = serde_json::from_str(details).unwrap_or(Value::Null);
    index_rows(resource, &d)
}

/// The entries matching `f`, newest first.
pub(crate) fn query(conn: &Connection, f: &AuditFilter) -> Result<Vec<AuditRow>> {
    let mut sql = String::from(
        "SELECT seq, ts, actor, role, action, resource, outcome, territory, details FROM audit_log WHERE seq < ?1",
    );
    let before = f.before_seq.unwrap_or(i64::MAX);
    let mut args: Vec<&dyn ToSql> = vec![&before];
    if let Some(p) = &f.patient {
        args.push(p);
        let n = args.len();
        // Entries on the patient, naming it, on its cases or naming them (a case entry written
        // before the patient was linked names only the case).
        sql.push_str(&format!(
            " AND seq IN (SELECT seq FROM audit_log WHERE resource = 'patient/' || ?{n} \
             UNION SELECT seq FROM audit_subjects WHERE kind = 'patient' AND id = ?{n} \
             UNION SELECT a.seq FROM cases c JOIN audit_log a ON a.resource = 'case/' || c.id \
             WHERE c.patient_id = ?{n} \
             UNION SELECT s.seq FROM cases c JOIN audit_subjects s ON s.kind = 'case' AND s.id = c.id \
             WHERE c.patient_id = ?{n})"
        ));
    }
    if let Some(c) = &f.case {
        args.push(c);
        let n = args.len();
        sql.push_str(&format!(
            " AND seq IN (SELECT seq FROM audit_log WHERE resource = 'case/' || ?{n} \
             UNION SELECT seq FROM audit_subjects WHERE kind = 'case' AND id = ?{n})"
        ));
    }
    if let Some(u) = &f.user {
        args.push(u);
        sql.push_str(&format!(" AND actor = ?{}", args.len()));
    }
    if let Some(t) = &f.since_ms {
        args.push(t);
        sql.push_str(&format!(" AND ts >= ?{}", args.len()));
    }
    if let Some(t) = &f.until_ms {
        args.push(t);
        sql.push_str(&format!(" AND ts < ?{}", args.len()));
    }
    if let Some(t) = &f.territory {
        args.push(t);
        sql.push_str(&format!(" AND territory = ?{}", args.len()));
    }
    let limit = f.limit.clamp(1, MAX_ROWS) as i64;
    args.push(&limit);
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT ?{}", args.len()));
    let mut st = conn.prepare_cached(&sql)?;
    let rows = st
        .query_map(args.as_slice(), |r| {
            let d: String = r.get(8)?;
            Ok(AuditRow {
                seq: r.get(0)?,
                ts_ms: r.get(1)?,
                actor: r.get(2)?,
                role: r.get(3)?,
                action: r.get(4)?,
                resource: r.get(5)?,
                outcome: r.get(6)?,
                territory: r.get(7)?,
                details: serde_json::from_str(&d).unwrap_or(Value::Null),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

impl crate::storage::Db {
    /// The entries matching `f`, newest first; the query itself is audited (`audit.query`,
    /// naming the filter).
    pub fn audit_query(&mut self, actor: &Actor, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows = query(&tx, f)?;
        let mut d = f.details();
        d.insert("entries".into(), Value::from(rows.len()));
        let mut ev = AuditEvent::new(actor, "audit.query", "audit_log", Outcome::Success)
            .details(Value::Object(d));
        ev.territory = f.territory.clone();
        super::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(rows)
    }

    /// A patient's accounting of disclosures: every successful read and disclosure of the
    /// patient's data (`model::access::access_kind`), oldest first, within `territory` when
    /// given. Audited (`audit.disclosures` on the patient, with the export `format`).
    pub fn audit_disclosures(
        &mut self,
        actor: &Actor,
        patient: &str,
        territory: Option<&str>,
        format: &str,
    ) -> Result<Vec<AuditRow>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let f = AuditFilter {
            patient: Some(patient.to_string()),
            territory: territory.map(str::to_string),
            limit: MAX_ROWS,
            ..Default::default()
        };
        let mut rows: Vec<AuditRow> = query(&tx, &f)?
            .into_iter()
            .filter(|r| {
                r.outcome == Outcome::Success.as_str()
                    && access::access_kind(&r.action) != AccessKind::Other
            })
            .collect();
        rows.reverse();
        let mut ev = AuditEvent::new(
            actor,
            "audit.disclosures",
            format!("patient/{patient}"),
            Outcome::Success,
        )
        .details(serde_json::json!({ "format": format, "entries": rows.len() }));
        ev.territory = territory.map(str::to_string);
        super::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(rows)
    }
}
