//! The observations row codec, shared by the aggregates that read readings (cases, triage,
//! outbox export) and the one that writes them (observations): a value sealed per row under
//! the case's data key, and a case's readings read back in time order.

use rusqlite::Connection;

use super::{Result, StoreError};
use crate::crypto::field::{DataKey, FieldLoc};
use crate::model::Observation;

/// Decrypted readings of a case, oldest first (no audit: callers audit their access).
pub(super) fn read_case_observations(
    conn: &Connection,
    dk: &DataKey,
    case_id: &str,
) -> Result<Vec<Observation>> {
    read_case_observations_after(conn, dk, case_id, 0)
}

/// An observations row before its value is opened: id, device, code, sealed value, device time,
/// receive time, source.
pub(super) type ObservationRow = (i64, Option<String>, String, Vec<u8>, i64, i64, String);

/// Like [`read_case_observations`], only rows with an id above `after_id` (live streams: only
/// the new readings are read and decrypted).
pub(super) fn read_case_observations_after(
    conn: &Connection,
    dk: &DataKey,
    case_id: &str,
    after_id: i64,
) -> Result<Vec<Observation>> {
    let rows: Vec<ObservationRow> = conn
        .prepare_cached("SELECT id, device_id, code, value, device_time, recv_time, source FROM observations WHERE case_id = ?1 AND id > ?2 AND voided_at IS NULL ORDER BY device_time, id")?
        .query_map(rusqlite::params![case_id, after_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, device_id, code, ct, dt, rt, source) in rows {
        out.push(Observation {
            value: open_value(dk, (id, &code, dt), &ct)?,
            id,
            device_id,
            code,
            device_time_ms: dt,
            recv_time_ms: rt,
            source,
        });
    }
    Ok(out)
}

/// Seals an observation value (8 bytes, f64 big-endian) for row `id`.
/// The associated data's row part of an observation value: its id *and* the plaintext columns
/// that give the value its meaning (vital code, device time). Swapping `heart_rate` for
/// `resp_rate` or moving a reading in time with the database key alone makes the value fail
/// to open instead of silently changing the record (review 2026-11-30 #23).
pub(super) fn obs_row(id: i64, code: &str, device_time: i64) -> String {
    format!("{id}|{code}|{device_time}")
}

/// The associated data's row part of a triage result's sealed reasons: its id and the plaintext
/// levels beside it (final, rules and model ESI, NEWS2, specialty, decider), so that lowering
/// an ESI with the database key alone makes the result fail to open (review 2026-11-30 #23).
pub(super) fn triage_row(
    id: i64,
    (final_esi, rules_esi, model_esi, news2): (u8, u8, Option<u8>, Option<u8>),
    specialty: Option<&str>,
    decider: &str,
) -> String {
    format!(
        "{id}|{final_esi}|{rules_esi}|{}|{}|{}|{decider}",
        model_esi.map_or(String::new(), |v| v.to_string()),
        news2.map_or(String::new(), |v| v.to_string()),
        specialty.unwrap_or("")
    )
}

/// The row part of a medication's associated data: id and who ordered it (review #23).
pub(super) fn med_row(id: i64, created_by: &str) -> String {
    format!("{id}|{created_by}")
}

pub(super) fn seal_value(
    dk: &DataKey,
    (id, code, device_time): (i64, &str, i64),
    value: f64,
) -> Result<Vec<u8>> {
    let row = obs_row(id, code, device_time);
    let loc = FieldLoc {
        table: "observations",
        column: "value",
        row_id: &row,
    };
    Ok(dk.seal(loc, &value.to_be_bytes())?)
}

/// Opens an observation value sealed by [`seal_value`].
pub(super) fn open_value(
    dk: &DataKey,
    (id, code, device_time): (i64, &str, i64),
    ct: &[u8],
) -> Result<f64> {
    let row = obs_row(id, code, device_time);
    let loc = FieldLoc {
        table: "observations",
        column: "value",
        row_id: &row,
    };
    let plain = dk.open(loc, ct)?;
    let bytes: [u8; 8] = plain
        .as_slice()
        .try_into()
        .map_err(|_| StoreError::Undecodable {
            what: format!("the value of observation {id}"),
        })?;
    Ok(f64::from_be_bytes(bytes))
}

/// Migration v7: re-seals every value whose associated data now binds its semantic columns
/// (observation code and device time; triage levels; medication orderer), from the old form
/// (row id only). Rows under destroyed (crypto-erased) keys stay as they are: nobody can open
/// them either way. Returns how many values were re-sealed.
pub(super) fn bind_semantic_columns(st: &mut super::State, conn: &Connection) -> Result<usize> {
    type Reseal = (&'static str, &'static str, i64, i64, Vec<u8>, String);
    let mut todo: Vec<Reseal> = Vec::new();
    let mut q = conn.prepare("SELECT id, dk_id, value, code, device_time FROM observations")?;
    let mut rows = q.query([])?;
    while let Some(r) = rows.next()? {
        let (id, dk, ct, code, t): (i64, i64, Vec<u8>, String, i64) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        todo.push(("observations", "value", id, dk, ct, obs_row(id, &code, t)));
    }
    drop(rows);
    let mut q = conn.prepare(
        "SELECT t.id, c.dk_id, t.reasons, t.final_esi, t.rules_esi, t.model_esi, t.news2, t.specialty, t.decider \
         FROM triage_results t JOIN cases c ON c.id = t.case_id",
    )?;
    let mut rows = q.query([])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let spec: Option<String> = r.get(7)?;
        let decider: String = r.get(8)?;
        let row = triage_row(
            id,
            (r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?),
            spec.as_deref(),
            &decider,
        );
        todo.push(("triage_results", "reasons", id, r.get(1)?, r.get(2)?, row));
    }
    drop(rows);
    let mut q = conn.prepare(
        "SELECT m.id, c.dk_id, m.body, m.created_by FROM medications m JOIN cases c ON c.id = m.case_id",
    )?;
    let mut rows = q.query([])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let by: String = r.get(3)?;
        todo.push((
            "medications",
            "body",
            id,
            r.get(1)?,
            r.get(2)?,
            med_row(id, &by),
        ));
    }
    drop(rows);
    let mut n = 0;
    for (table, column, id, dk_id, ct, row) in todo {
        let dk = match st.data_key(conn, dk_id, table, &id.to_string()) {
            Ok(dk) => dk,
            Err(e) if e.is_systemic() => return Err(e),
            Err(_) => continue, // destroyed by crypto-erase: unreadable already
        };
        let old = id.to_string();
        let plain = dk.open(
            FieldLoc {
                table,
                column,
                row_id: &old,
            },
            &ct,
        )?;
        let new = dk.seal(
            FieldLoc {
                table,
                column,
                row_id: &row,
            },
            &plain,
        )?;
        st.count_invocations(conn, dk.id(), 1)?;
        conn.execute(
            &format!("UPDATE {table} SET {column} = ?1 WHERE id = ?2"),
            rusqlite::params![new, id],
        )?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, CaseDetails, Decider, TriageRecord};
    use crate::storage::{CaseParts, Db};

    fn open(dir: &std::path::Path) -> Db {
        crate::storage::test_db(dir)
    }

    /// Re-seals one value with the associated data of schema ≤ 6 (the row id only), as an
    /// older build wrote it.
    fn to_old_form(
        db: &mut Db,
        (table, column, id, dk_id): (&'static str, &'static str, i64, i64),
        row: &str,
    ) {
        let ct: Vec<u8> = db
            .conn
            .query_row(
                &format!("SELECT {column} FROM {table} WHERE id = ?1"),
                [id],
                |r| r.get(0),
            )
            .unwrap();
        let dk = db.st.data_key(&db.conn, dk_id, table, "test").unwrap();
        let plain = dk
            .open(
                FieldLoc {
                    table,
                    column,
                    row_id: row,
                },
                &ct,
            )
            .unwrap();
        let old = dk
            .seal(
                FieldLoc {
                    table,
                    column,
                    row_id: &id.to_string(),
                },
                &plain,
            )
            .unwrap();
        db.conn
            .execute(
                &format!("UPDATE {table} SET {column} = ?1 WHERE id = ?2"),
                rusqlite::params![old, id],
            )
            .unwrap();
    }

    #[test]
    fn migration_v7_re_seals_values_written_by_older_builds() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = open(dir.path());
        let a = Actor::cli();
        let case = db
            .create_case(&a, "default", None, &CaseDetails::default())
            .unwrap();
        let now = crate::model::now_ms();
        let obs = db
            .add_manual_vitals(&a, &case, &[("heart_rate".into(), 88.0, now)], None)
            .unwrap()[0];
        let rec = TriageRecord {
            final_esi: 2,
            rules_esi: 2,
            model_esi: None,
            news2: Some(6),
            specialty: Some("cardiology".into()),
            confidence: None,
            model_id: None,
            model_hash: None,
            decider: Decider::RulesOnly,
            abstained: None,
            reasons: vec!["NEWS2 6".into()],
        };
        let tri = db.record_triage(&a, &case, &rec).unwrap();
        let dk: i64 = db
            .conn
            .query_row("SELECT dk_id FROM cases WHERE id = ?1", [&case], |r| {
                r.get(0)
            })
            .unwrap();
        // A free-text medication as schema ≤ 7 stored it (its table stays for the migration).
        let mid = 1;
        let key = db.st.data_key(&db.conn, dk, "case", &case).unwrap();
        let body = key
            .seal(
                FieldLoc {
                    table: "medications",
                    column: "body",
                    row_id: &med_row(mid, &a.id),
                },
                br#"{"name":"aspirin","dose":"300 mg","route":"PO","note":null}"#,
            )
            .unwrap();
        db.conn
            .execute(
                "INSERT INTO medications (id, case_id, created_at, created_by, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![mid, case, now, a.id, body],
            )
            .unwrap();
        // Back to the form an older build wrote: the current reads now fail…
        to_old_form(
            &mut db,
            ("observations", "value", obs, dk),
            &obs_row(obs, "heart_rate", now),
        );
        to_old_form(
            &mut db,
            ("triage_results", "reasons", tri, dk),
            &triage_row(tri, (2, 2, None, Some(6)), Some("cardiology"), "rules_only"),
        );
        to_old_form(
            &mut db,
            ("medications", "body", mid, dk),
            &med_row(mid, &a.id),
        );
        let parts = CaseParts {
            clinical: true,
            demographics: false,
        };
        assert!(db.case_view(&a, &case, parts, "case.read").is_err());
        // …and the migration makes every one readable again, under the new binding.
        let n = bind_semantic_columns(&mut db.st, &db.conn).unwrap();
        assert_eq!(n, 3);
        let v = db.case_view(&a, &case, parts, "case.read").unwrap();
        assert_eq!(v.vitals.len(), 1);
        assert_eq!(v.vitals[0].value, 88.0);
        assert_eq!(v.triage[0].record.reasons, vec!["NEWS2 6".to_string()]);
        // v8 then carries the free-text medication into the care record, text and time kept.
        let n = super::super::record::legacy_medications_to_record(&mut db.st, &db.conn).unwrap();
        assert_eq!(n, 1);
        let v = db.case_view(&a, &case, parts, "case.read").unwrap();
        let meds = v.record.current("medication");
        assert_eq!(meds.len(), 1);
        assert_eq!(meds[0].content["note"], "aspirin 300 mg PO");
        assert_eq!(meds[0].content["at_ms"], now);
        assert_eq!(meds[0].recorded_by, a.id);
        let left: i64 = db
            .conn
            .query_row("SELECT count(*) FROM medications", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }
}
