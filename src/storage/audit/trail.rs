//! A case's audit trail as its bundle carries it: the case's entries with their canonical bytes,
//! the latest checkpoint, and the segment linking them (`docs/bundle-format.md`, "Audit trail").

use rusqlite::{Connection, OptionalExtension, params};

use super::{EntryFields, canonical, leaf, text_fields};
use crate::model::{ExportAudit, ExportCheckpoint, ExportSegment};
use crate::storage::Result;

/// A case's audit trail as a bundle carries it.
#[derive(Debug, Clone, Default)]
pub struct CaseTrail {
    pub entries: Vec<ExportAudit>,
    pub checkpoint: Option<ExportCheckpoint>,
    pub segment: Option<ExportSegment>,
}

/// The entries about a case and its patient, the latest checkpoint and, when that checkpoint
/// follows the first of them, the segment linking them to it.
pub(crate) fn case_trail(
    conn: &Connection,
    case_id: &str,
    patient_id: Option<&str>,
) -> Result<CaseTrail> {
    let case = format!("case/{case_id}");
    let patient = patient_id.map(|p| format!("patient/{p}"));
    let resources: Vec<&str> = std::iter::once(case.as_str())
        .chain(patient.as_deref())
        .collect();
    let second = resources.get(1).unwrap_or(&resources[0]);
    let mut entries = Vec::new();
    {
        let mut st = conn.prepare_cached(
            "SELECT seq, ts, actor, role, action, resource, outcome, territory, details, hash, chain \
             FROM audit_log WHERE resource IN (?1, ?2) ORDER BY seq",
        )?;
        let mut rows = st.query(params![resources[0], second])?;
        while let Some(r) = rows.next()? {
            let (seq, ts, chain): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(10)?);
            let f = text_fields(r, 2)?;
            let canonical = canonical(chain, &EntryFields::of(seq, ts, &f));
            let [actor, role, action, resource, outcome, _, _] = f;
            entries.push(ExportAudit {
                seq,
                ts_ms: ts,
                actor,
                role,
                action,
                resource,
                outcome,
                hash: r.get::<_, Vec<u8>>(9)?.try_into().unwrap_or([0; 32]),
                canonical,
            });
        }
    }
    let checkpoint = conn
        .query_row(
            "SELECT seq, ts, hash, key_id, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                Ok(ExportCheckpoint {
                    seq: r.get(0)?,
                    ts_ms: r.get(1)?,
                    hash: r.get::<_, Vec<u8>>(2)?.try_into().unwrap_or([0; 32]),
                    key_id: r.get(3)?,
                    signature: r.get(4)?,
                })
            },
        )
        .optional()?;
    let segment = match (entries.first(), &checkpoint) {
        (Some(first), Some(cp)) if cp.seq >= first.seq => {
            Some(segment(conn, first.seq, cp.seq, &resources)?)
        }
        _ => None,
    };
    Ok(CaseTrail {
        entries,
        checkpoint,
        segment,
    })
}

/// The links of `from..=to` past the entries about `resources`.
fn segment(conn: &Connection, from: i64, to: i64, resources: &[&str]) -> Result<ExportSegment> {
    let prev_hash: Vec<u8> = conn.query_row(
        "SELECT prev_hash FROM audit_log WHERE seq = ?1",
        [from],
        |r| r.get(0),
    )?;
    let mut links = Vec::new();
    let mut st = conn.prepare_cached(
        "SELECT seq, ts, actor, role, action, resource, outcome, territory, details, chain \
         FROM audit_log WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
    )?;
    let mut rows = st.query(params![from, to])?;
    while let Some(r) = rows.next()? {
        let resource: String = r.get(5)?;
        if resources.contains(&resource.as_str()) {
            continue;
        }
        let f = text_fields(r, 2)?;
        let (seq, ts, chain): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(9)?);
        let e = EntryFields::of(seq, ts, &f);
        if chain == 1 {
            let c = canonical(1, &e);
            links.push(1);
            links.extend_from_slice(&(c.len() as u32).to_be_bytes());
            links.extend_from_slice(&c);
        } else {
            links.push(2);
            links.extend_from_slice(&leaf(&e));
        }
    }
    Ok(ExportSegment {
        from_seq: from,
        prev_hash: prev_hash.try_into().unwrap_or([0; 32]),
        links,
    })
}
