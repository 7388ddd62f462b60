//! Patients and cases: encrypted columns, blind-index search, audited reads and writes, and
//! crypto-erase of a case.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::keys::KeyMint;
use super::{Audited, Db, Result, State, StoreError, audit};
use crate::crypto::blind::BlindField;
use crate::crypto::field::{DataKey, FieldLoc};
use crate::model::{Actor, AuditEvent, Outcome, Patient, StoredPatient, now_ms};

/// Search terms; every given term must match (blind-index equality).
#[derive(Debug, Clone, Default)]
pub struct PatientQuery {
    pub last_name: Option<String>,
    pub date_of_birth: Option<String>,
    pub mrn: Option<String>,
}

const PATIENT_TEXT_COLUMNS: [&str; 7] = [
    "first_name",
    "last_name",
    "date_of_birth",
    "ssn",
    "email",
    "phone",
    "mrn",
];

/// The data key a patient row is sealed under: a new patient's, minted for it, or the key of
/// the existing row.
enum PatientKey<'m, 't> {
    New(&'m mut KeyMint<'t>, Box<DataKey>),
    Existing(&'m DataKey),
}

impl<'m, 't> PatientKey<'m, 't> {
    /// A key fresh from `mint` for a new patient (recorded when the row is written).
    fn fresh(mint: &'m mut KeyMint<'t>) -> Result<Self> {
        let dk = mint.mint()?;
        Ok(PatientKey::New(mint, Box::new(dk)))
    }
}

pub(super) fn seal_opt(
    dk: &DataKey,
    loc: FieldLoc<'_>,
    v: Option<&[u8]>,
    n: &mut u64,
) -> Result<Option<Vec<u8>>> {
    match v {
        None => Ok(None),
        Some(b) => {
            *n += 1;
            Ok(Some(dk.seal(loc, b)?))
        }
    }
}

pub(super) fn open_opt(
    dk: &DataKey,
    loc: FieldLoc<'_>,
    v: Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>> {
    v.map(|c| dk.open(loc, &c)).transpose().map_err(Into::into)
}

pub(super) fn utf8(
    table: &str,
    column: &'static str,
    v: Option<Vec<u8>>,
) -> Result<Option<String>> {
    v.map(|b| {
        String::from_utf8(b).map_err(|_| StoreError::Undecodable {
            what: format!("{table}.{column} (invalid UTF-8 after decryption)"),
        })
    })
    .transpose()
}

fn json_bytes<T: serde::Serialize>(v: &Option<T>) -> Option<Vec<u8>> {
    v.as_ref()
        .map(|x| serde_json::to_vec(x).expect("plain struct serialises"))
}

impl State {
    /// Seals and writes a patient's row: a new one under a key fresh from `key` (recorded with
    /// its seals counted, before the row that refers to it), or an existing one's update.
    fn write_patient(
        &mut self,
        conn: &Connection,
        id: &str,
        territory: &str,
        key: PatientKey<'_, '_>,
        p: &Patient,
    ) -> Result<()> {
        let dk = match &key {
            PatientKey::New(_, dk) => dk,
            PatientKey::Existing(dk) => *dk,
        };
        let mut n = 0u64;
        let loc = |column| FieldLoc {
            table: "patients",
            column,
            row_id: id,
        };
        let texts = [
            &p.first_name,
            &p.last_name,
            &p.date_of_birth,
            &p.ssn,
            &p.email,
            &p.phone,
            &p.mrn,
        ];
        let mut sealed: Vec<Option<Vec<u8>>> = Vec::with_capacity(11);
        for (col, v) in PATIENT_TEXT_COLUMNS.iter().zip(texts) {
            sealed.push(seal_opt(
                dk,
                loc(col),
                v.as_deref().map(str::as_bytes),
                &mut n,
            )?);
        }
        sealed.push(seal_opt(
            dk,
            loc("address"),
            json_bytes(&p.address).as_deref(),
            &mut n,
        )?);
        sealed.push(seal_opt(
            dk,
            loc("insurance"),
            json_bytes(&p.insurance).as_deref(),
            &mut n,
        )?);
        sealed.push(seal_opt(
            dk,
            loc("sex"),
            json_bytes(&p.sex).as_deref(),
            &mut n,
        )?);
        sealed.push(seal_opt(
            dk,
            loc("estimated_age"),
            json_bytes(&p.estimated_age_years).as_deref(),
            &mut n,
        )?);
        let bi = &self.keys.index;
        let bi_last = p
            .last_name
            .as_deref()
            .and_then(|v| bi.index(BlindField::LastName, territory, v));
        let bi_dob = p
            .date_of_birth
            .as_deref()
            .and_then(|v| bi.index(BlindField::DateOfBirth, territory, v));
        let bi_mrn = p
            .mrn
            .as_deref()
            .and_then(|v| bi.index(BlindField::Mrn, territory, v));
        let now = now_ms();
        if let PatientKey::New(mint, dk) = key {
            let dk = mint.record(self, conn, *dk, &format!("patient/{id}"), n)?;
            conn.prepare_cached(
                "INSERT INTO patients (id, territory, dk_id, created_at, updated_at, first_name, last_name, date_of_birth, ssn, \
                 email, phone, mrn, address, insurance, sex, bi_last_name, bi_dob, bi_mrn, estimated_age) \
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            )?
            .execute(params![
                id, territory, dk.id(), now, sealed[0], sealed[1], sealed[2], sealed[3], sealed[4], sealed[5], sealed[6],
                sealed[7], sealed[8], sealed[9], bi_last, bi_dob, bi_mrn, sealed[10]
            ])?;
        } else {
            conn.prepare_cached(
                "UPDATE patients SET updated_at = ?2, first_name = ?3, last_name = ?4, date_of_birth = ?5, ssn = ?6, email = ?7, \
                 phone = ?8, mrn = ?9, address = ?10, insurance = ?11, sex = ?12, bi_last_name = ?13, bi_dob = ?14, bi_mrn = ?15, \
                 estimated_age = ?16, version = version + 1 WHERE id = ?1",
            )?
            .execute(params![
                id, now, sealed[0], sealed[1], sealed[2], sealed[3], sealed[4], sealed[5], sealed[6], sealed[7], sealed[8],
                sealed[9], bi_last, bi_dob, bi_mrn, sealed[10]
            ])?;
            self.count_invocations(conn, dk.id(), n)?;
        }
        Ok(())
    }

    pub(super) fn read_patient(&mut self, conn: &Connection, id: &str) -> Result<StoredPatient> {
        type Row = (String, i64, i64, i64, [Option<Vec<u8>>; 11], i64);
        let row: Option<Row> = conn
            .prepare_cached(
                "SELECT territory, dk_id, created_at, updated_at, first_name, last_name, date_of_birth, ssn, email, phone, mrn, \
                 address, insurance, sex, estimated_age, version FROM patients WHERE id = ?1",
            )?
            .query_row([id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    [r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?, r.get(13)?, r.get(14)?],
                    r.get(15)?,
                ))
            })
            .optional()?;
        let (territory, dk_id, created, updated, cols, version) =
            row.ok_or_else(|| StoreError::NotFound {
                kind: "patient",
                id: id.into(),
            })?;
        let dk = self.data_key(conn, dk_id, "patient", id)?;
        let loc = |column| FieldLoc {
            table: "patients",
            column,
            row_id: id,
        };
        let [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10] = cols;
        let mut texts = Vec::with_capacity(7);
        for (col, v) in PATIENT_TEXT_COLUMNS
            .iter()
            .zip([c0, c1, c2, c3, c4, c5, c6])
        {
            texts.push(utf8("patients", col, open_opt(&dk, loc(col), v)?)?);
        }
        let json = |col: &'static str, v: Option<Vec<u8>>| -> Result<Option<serde_json::Value>> {
            open_opt(&dk, loc(col), v)?
                .map(|b| {
                    serde_json::from_slice(&b).map_err(|_| StoreError::Undecodable {
                        what: format!("patients.{col} (not JSON)"),
                    })
                })
                .transpose()
        };
        let (address, insurance, sex, estimated_age) = (
            json("address", c7)?,
            json("insurance", c8)?,
            json("sex", c9)?,
            json("estimated_age", c10)?,
        );
        let bad = |c: &str| StoreError::Undecodable {
            what: format!("patients.{c} (not the patient schema)"),
        };
        let mut t = texts.into_iter();
        let patient = Patient {
            first_name: t.next().flatten(),
            last_name: t.next().flatten(),
            date_of_birth: t.next().flatten(),
            ssn: t.next().flatten(),
            email: t.next().flatten(),
            phone: t.next().flatten(),
            mrn: t.next().flatten(),
            address: de(address).map_err(|_| bad("address"))?,
            insurance: de(insurance).map_err(|_| bad("insurance"))?,
            sex: de(sex).map_err(|_| bad("sex"))?,
            estimated_age_years: de(estimated_age).map_err(|_| bad("estimated_age"))?,
        };
        Ok(StoredPatient {
            id: id.into(),
            territory,
            created_at_ms: created,
            updated_at_ms: updated,
            version,
            patient,
        })
    }
}

fn de<T: serde::de::DeserializeOwned>(
    v: Option<serde_json::Value>,
) -> Result<Option<T>, serde_json::Error> {
    v.map(serde_json::from_value).transpose()
}

/// The audit entry of a failed PHI access (the access itself rolled back).
pub(super) fn failure_event(
    actor: &Actor,
    action: &str,
    resource: String,
    err: &StoreError,
) -> AuditEvent {
    let code = match err {
        StoreError::Crypto(_) => "decrypt_failed",
        StoreError::NotFound { .. } => "not_found",
        StoreError::Erased { .. } => "erased",
        StoreError::InvalidPhi(_) => "invalid_phi",
        _ => "error",
    };
    AuditEvent::new(actor, action, resource, Outcome::Failure)
        .details(serde_json::json!({ "error": code }))
}

pub(super) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Db {
    /// Audits a failed PHI access in its own transaction (the access itself rolled back).
    pub(super) fn audit_failure(
        &mut self,
        actor: &Actor,
        action: &str,
        resource: String,
        err: &StoreError,
    ) {
        if let Err(e) = self.audit(&failure_event(actor, action, resource, err)) {
            tracing::error!(error = %e, action, "cannot audit a failed access");
        }
    }

    /// Finishes an [`Audited`] read on this connection: writes its entry, then returns its
    /// result (a successful read whose entry cannot be written fails).
    pub(super) fn finish_audited<R>(&mut self, a: Audited<R>) -> Result<R> {
        if let Some(ev) = &a.event {
            match (&a.result, self.audit(ev)) {
                (Ok(_), Err(e)) => return Err(e),
                (Err(_), Err(e)) => {
                    tracing::error!(error = %e, action = %ev.action, "cannot audit a failed access")
                }
                _ => {}
            }
        }
        a.result
    }

    /// Registers a patient (partial data allowed). Returns its id.
    pub fn create_patient(
        &mut self,
        actor: &Actor,
        territory: &str,
        p: &Patient,
    ) -> Result<String> {
        p.validate()?;
        let id = new_id();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut mint = self.st.key_mint(&tx, territory)?;
        let key = PatientKey::fresh(&mut mint)?;
        self.st.write_patient(&tx, &id, territory, key, p)?;
        mint.finish(&tx)?;
        let ev = AuditEvent::new(
            actor,
            "patient.create",
            format!("patient/{id}"),
            Outcome::Success,
        )
        .territory(territory);
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(id)
    }

    /// Registers many patients in one transaction (bulk import; group commit). Each gets its own
    /// data key and its own audit entry. All or nothing.
    pub fn create_patients(
        &mut self,
        actor: &Actor,
        territory: &str,
        ps: &[Patient],
    ) -> Result<Vec<String>> {
        for p in ps {
            p.validate()?;
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut ids = Vec::with_capacity(ps.len());
        let now = now_ms();
        let mut mint = self.st.key_mint(&tx, territory)?;
        let mut trail = audit::Appender::start(&tx)?;
        for p in ps {
            let id = new_id();
            let key = PatientKey::fresh(&mut mint)?;
            self.st.write_patient(&tx, &id, territory, key, p)?;
            let ev = AuditEvent::new(
                actor,
                "patient.create",
                format!("patient/{id}"),
                Outcome::Success,
            )
            .territory(territory);
            trail.append(&tx, &self.st, &ev, now)?;
            ids.push(id);
        }
        mint.finish(&tx)?;
        trail.finish(&tx)?;
        tx.commit()?;
        Ok(ids)
    }

    /// Replaces a patient's demographics.
    pub fn update_patient(&mut self, actor: &Actor, id: &str, p: &Patient) -> Result<()> {
        self.update_patient_checked(actor, id, p, None, &[])
    }

    /// Replaces a patient's demographics if the stored version is still `expected` (when
    /// given); `fields` (names only) go into the audit entry.
    pub(super) fn update_patient_checked(
        &mut self,
        actor: &Actor,
        id: &str,
        p: &Patient,
        expected: Option<i64>,
        fields: &[String],
    ) -> Result<()> {
        p.validate()?;
        let r = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (territory, dk_id): (String, i64) = tx
                .query_row(
                    "SELECT territory, dk_id FROM patients WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "patient",
                    id: id.into(),
                })?;
            // Once every case of the patient is closed, its bundle is sealed and on its way: an
            // edit here would never reach the hospital (review #19). Corrections then belong to
            // the receiving record.
            let (cases, open): (i64, i64) = tx.query_row(
                "SELECT count(*), coalesce(sum(status = 'open'), 0) FROM cases WHERE patient_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if cases > 0 && open == 0 {
                return Err(StoreError::RecordFinal { id: id.into() });
            }
            let version: i64 =
                tx.query_row("SELECT version FROM patients WHERE id = ?1", [id], |r| {
                    r.get(0)
                })?;
            if let Some(e) = expected
                && e != version
            {
                return Err(StoreError::Stale {
                    what: format!("patient {id}"),
                    current: version,
                });
            }
            let dk = self.st.data_key(&tx, dk_id, "patient", id)?;
            self.st
                .write_patient(&tx, id, &territory, PatientKey::Existing(&dk), p)?;
            let mut ev = AuditEvent::new(
                actor,
                "patient.update",
                format!("patient/{id}"),
                Outcome::Success,
            )
            .territory(&territory);
            if expected.is_some() {
                ev = ev.details(serde_json::json!({ "fields": fields, "version": version + 1 }));
            }
            audit::append(&tx, &self.st, &ev, now_ms())?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = &r {
            self.audit_failure(actor, "patient.update", format!("patient/{id}"), e);
        }
        r
    }

    /// Reads and decrypts a patient; the read is audited in the same transaction.
    pub fn get_patient(&mut self, actor: &Actor, id: &str) -> Result<StoredPatient> {
        let a = self.read_patient_audited(actor, id);
        self.finish_audited(a)
    }

    /// [`Db::get_patient`] on a reader: the record and its audit entry (a failure's too), not
    /// yet written.
    pub fn read_patient_audited(&mut self, actor: &Actor, id: &str) -> Audited<StoredPatient> {
        let r = (|| {
            let tx = self.conn.transaction()?;
            let p = self.st.read_patient(&tx, id)?;
            tx.commit()?;
            let ev = AuditEvent::new(
                actor,
                "patient.read",
                format!("patient/{id}"),
                Outcome::Success,
            )
            .territory(&p.territory);
            Ok((p, ev))
        })();
        Audited::or_failure(r, |e| {
            Some(failure_event(
                actor,
                "patient.read",
                format!("patient/{id}"),
                e,
            ))
        })
    }

    /// Finds patients of `territory` by blind index; returns decrypted records (audited as a
    /// search plus one read per hit).
    pub fn search_patients(
        &mut self,
        actor: &Actor,
        territory: &str,
        q: &PatientQuery,
    ) -> Result<Vec<StoredPatient>> {
        let bi = &self.st.keys.index;
        let terms = [
            (
                "bi_last_name",
                q.last_name
                    .as_deref()
                    .map(|v| bi.index(BlindField::LastName, territory, v)),
            ),
            (
                "bi_dob",
                q.date_of_birth
                    .as_deref()
                    .map(|v| bi.index(BlindField::DateOfBirth, territory, v)),
            ),
            (
                "bi_mrn",
                q.mrn
                    .as_deref()
                    .map(|v| bi.index(BlindField::Mrn, territory, v)),
            ),
        ];
        let mut sql = String::from("SELECT id FROM patients WHERE territory = ?1");
        let mut args: Vec<Vec<u8>> = Vec::new();
        for (col, t) in &terms {
            match t {
                None => {}
                Some(None) => return Ok(Vec::new()), // a term that normalises to nothing matches nothing
                Some(Some(v)) => {
                    args.push(v.clone());
                    sql.push_str(&format!(" AND {col} = ?{}", args.len() + 1));
                }
            }
        }
        if args.is_empty() {
            return Err(StoreError::EmptySearch);
        }
        sql.push_str(" ORDER BY created_at DESC LIMIT 50");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids: Vec<String> = {
            let mut st = tx.prepare(&sql)?;
            let mut params: Vec<&dyn rusqlite::ToSql> = vec![&territory];
            for a in &args {
                params.push(a);
            }
            st.query_map(params.as_slice(), |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            match self.st.read_patient(&tx, id) {
                Ok(p) => out.push(p),
                Err(StoreError::Erased { .. }) => continue,
                Err(e) => return Err(e),
            }
            let ev = AuditEvent::new(
                actor,
                "patient.read",
                format!("patient/{id}"),
                Outcome::Success,
            )
            .territory(territory);
            audit::append(&tx, &self.st, &ev, now_ms())?;
        }
        let ev = AuditEvent::new(actor, "patient.search", "patient/*", Outcome::Success)
            .territory(territory)
            .details(serde_json::json!({ "hits": out.len() }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(out)
    }
}
