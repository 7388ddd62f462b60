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
        .prepare_cached("SELECT id, device_id, code, value, device_time, recv_time, source FROM observations WHERE case_id = ?1 AND id > ?2 ORDER BY device_time, id")?
        .query_map(rusqlite::params![case_id, after_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, device_id, code, ct, dt, rt, source) in rows {
        out.push(Observation {
            value: open_value(dk, id, &ct)?,
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
pub(super) fn seal_value(dk: &DataKey, id: i64, value: f64) -> Result<Vec<u8>> {
    let loc = FieldLoc {
        table: "observations",
        column: "value",
        row_id: &id.to_string(),
    };
    Ok(dk.seal(loc, &value.to_be_bytes())?)
}

/// Opens an observation value sealed by [`seal_value`].
pub(super) fn open_value(dk: &DataKey, id: i64, ct: &[u8]) -> Result<f64> {
    let loc = FieldLoc {
        table: "observations",
        column: "value",
        row_id: &id.to_string(),
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
