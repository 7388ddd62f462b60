//! Device registry, vitals ingest (group commit, idempotent), dead letters, presence, binding,
//! attaching unbound readings, device-silent alarms, and reading vitals back.
//!
//! Readings are sealed under the bound case's data key, or under the device's holding key while
//! unbound. Idempotence: (device, vital, device time) is unique, so a redelivered message adds
//! nothing. One audit entry per case (or device) per batch.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Db, Result, State, StoreError, audit};
use crate::crypto::field::{DataKey, FieldLoc};
use crate::model::{Actor, AuditEvent, Outcome, Reading, Reject, RejectCode, now_ms};

/// One message for [`Db::ingest_batch`].
#[derive(Debug, Clone)]
pub enum IngestItem {
    /// A vitals publish, already parsed (or rejected) by the ingest pipeline.
    Vitals {
        device_id: String,
        topic: String,
        recv_ms: i64,
        parsed: std::result::Result<Vec<Reading>, Reject>,
        payload: Vec<u8>,
    },
    /// A retained `status` publish (`online` / `offline`).
    Presence {
        device_id: String,
        online: bool,
        recv_ms: i64,
    },
}

/// What happened to one [`IngestItem`], in the same order.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestOutcome {
    Stored {
        case_id: Option<String>,
        new: usize,
        duplicates: usize,
    },
    Rejected(Reject),
    Presence,
}

/// A registered device as listed by `devices list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub id: String,
    pub kind: String,
    pub territory: String,
    pub presence: String,
    pub bound_case: Option<String>,
    pub last_vitals_at: Option<i64>,
    pub unbound_readings: u64,
}

pub use crate::model::Observation;

/// An alarm row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    pub id: i64,
    pub kind: String,
    pub case_id: Option<String>,
    pub device_id: Option<String>,
    pub raised_at_ms: i64,
    pub acked_at_ms: Option<i64>,
}

/// Alarm kind raised when a bound device stops sending vitals.
pub const ALARM_DEVICE_SILENT: &str = "device_silent";
/// Alarm kind raised when the data directory runs short of space (nothing is dropped).
pub const ALARM_DISK_PRESSURE: &str = "disk_pressure";

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
type ObservationRow = (i64, Option<String>, String, Vec<u8>, i64, i64, String);

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
        .map_err(|_| StoreError::Refused(format!("observation {id} has a malformed value")))?;
    Ok(f64::from_be_bytes(bytes))
}

struct DeviceRow {
    territory: String,
    bound_case: Option<(String, i64)>,
    holding_dk: Option<i64>,
}

/// A refused device message, as the dead-letter table keeps it.
struct DeadLetter<'a> {
    device: &'a str,
    topic: &'a str,
    recv_ms: i64,
    reject: &'a Reject,
    /// The raw payload (sealed under the territory's dead-letter key unless refused for size or
    /// rate).
    payload: &'a [u8],
}

impl State {
    /// The shared data key for dead letters of unknown or invalid devices.
    fn dead_letter_key(&mut self, conn: &Connection, territory: &str) -> Result<Arc<DataKey>> {
        let id: Option<String> = conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'dead_letter_dk'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        if let Some(id) = id.and_then(|v| v.parse::<i64>().ok()) {
            return self.data_key(conn, id, "dead letters", "*");
        }
        let dk = self.new_data_key(conn, territory, "dead-letters")?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('dead_letter_dk', ?1)",
            [dk.id().to_string()],
        )?;
        Ok(dk)
    }

    fn device_row(&mut self, conn: &Connection, id: &str) -> Result<Option<DeviceRow>> {
        let row: Option<(String, Option<String>, Option<i64>)> = conn
            .prepare_cached("SELECT territory, bound_case, holding_dk_id FROM devices WHERE id = ?1 AND removed_at IS NULL")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((territory, bound, holding)) = row else {
            return Ok(None);
        };
        let bound_case = match bound {
            Some(c) => {
                let dk: Option<i64> = conn
                    .prepare_cached("SELECT dk_id FROM cases WHERE id = ?1 AND erased_at IS NULL")?
                    .query_row([&c], |r| r.get(0))
                    .optional()?;
                dk.map(|dk| (c, dk))
            }
            None => None,
        };
        Ok(Some(DeviceRow {
            territory,
            bound_case,
            holding_dk: holding,
        }))
    }

    /// Registers a device seen for the first time (only when registration is not required).
    fn auto_register(
        &mut self,
        conn: &Connection,
        id: &str,
        territory: &str,
        now: i64,
    ) -> Result<DeviceRow> {
        conn.execute(
            "INSERT INTO devices (id, kind, territory, registered_at) VALUES (?1, 'monitor', ?2, ?3) \
             ON CONFLICT (id) DO UPDATE SET removed_at = NULL",
            params![id, territory, now],
        )?;
        Ok(DeviceRow {
            territory: territory.into(),
            bound_case: None,
            holding_dk: None,
        })
    }

    fn holding_key(
        &mut self,
        conn: &Connection,
        device: &str,
        row: &mut DeviceRow,
    ) -> Result<Arc<DataKey>> {
        if let Some(id) = row.holding_dk {
            return self.data_key(conn, id, "device", device);
        }
        let dk = self.new_data_key(conn, &row.territory.clone(), &format!("device/{device}"))?;
        conn.execute(
            "UPDATE devices SET holding_dk_id = ?1 WHERE id = ?2",
            params![dk.id(), device],
        )?;
        row.holding_dk = Some(dk.id());
        Ok(dk)
    }

    fn dead_letter(
        &mut self,
        conn: &Connection,
        letter: DeadLetter<'_>,
        territory: &str,
    ) -> Result<()> {
        let DeadLetter {
            device,
            topic,
            recv_ms,
            reject: rej,
            payload,
        } = letter;
        let id: i64 = conn
            .prepare_cached("SELECT coalesce(max(id), 0) + 1 FROM dead_letters")?
            .query_row([], |r| r.get(0))?;
        // Oversized and rate-limited payloads are not kept (that is the point of the limit).
        let keep = !payload.is_empty()
            && !matches!(
                rej.code,
                RejectCode::PayloadTooLarge | RejectCode::RateLimited
            );
        let (dk_id, sealed) = if keep {
            let dk = self.dead_letter_key(conn, territory)?;
            let ct = dk.seal(
                FieldLoc {
                    table: "dead_letters",
                    column: "payload",
                    row_id: &id.to_string(),
                },
                payload,
            )?;
            self.count_invocations(conn, dk.id(), 1)?;
            (Some(dk.id()), Some(ct))
        } else {
            (None, None)
        };
        let device_col = crate::model::is_valid_ident(device).then_some(device);
        conn.prepare_cached(
            "INSERT INTO dead_letters (id, device_id, topic, received_at, code, message, record, payload_len, payload_sha256, dk_id, payload) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?
        .execute(params![
            id,
            device_col,
            topic.chars().take(256).collect::<String>(),
            recv_ms,
            rej.code.as_str(),
            rej.message,
            rej.record.map(|r| r as i64),
            payload.len() as i64,
            &crate::crypto::sha256(payload)[..],
            dk_id,
            sealed
        ])?;
        Ok(())
    }
}

impl Db {
    /// Commits a batch of device messages in one transaction and reports each one's outcome.
    /// Callers acknowledge the messages to the broker only after this returned `Ok`.
    pub fn ingest_batch(
        &mut self,
        items: &[IngestItem],
        require_registered: bool,
        default_territory: &str,
    ) -> Result<Vec<IngestOutcome>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let mut out = Vec::with_capacity(items.len());
        let mut devices: HashMap<String, Option<DeviceRow>> = HashMap::new();
        // (resource, territory) → (new, duplicates)
        let mut per_target: HashMap<(String, String), (usize, usize)> = HashMap::new();
        let mut next_id: i64 = tx
            .prepare_cached("SELECT coalesce(max(id), 0) + 1 FROM observations")?
            .query_row([], |r| r.get(0))?;
        let mut sealed_per_dk: HashMap<i64, u64> = HashMap::new();
        for item in items {
            match item {
                IngestItem::Presence {
                    device_id,
                    online,
                    recv_ms,
                } => {
                    tx.prepare_cached("UPDATE devices SET presence = ?1, last_seen_at = ?2 WHERE id = ?3 AND removed_at IS NULL")?
                        .execute(params![if *online { "online" } else { "offline" }, recv_ms, device_id])?;
                    out.push(IngestOutcome::Presence);
                }
                IngestItem::Vitals {
                    device_id,
                    topic,
                    recv_ms,
                    parsed,
                    payload,
                } => {
                    if !devices.contains_key(device_id) {
                        let row = if crate::model::is_valid_ident(device_id) {
                            self.st.device_row(&tx, device_id)?
                        } else {
                            None
                        };
                        devices.insert(device_id.clone(), row);
                    }
                    let mut reject = parsed.as_ref().err().cloned();
                    if reject.is_none() && devices[device_id].is_none() {
                        if require_registered {
                            reject = Some(Reject::new(
                                RejectCode::UnknownDevice,
                                format!("device `{device_id}` is not registered on this appliance"),
                                None,
                            ));
                        } else {
                            let row =
                                self.st
                                    .auto_register(&tx, device_id, default_territory, now)?;
                            devices.insert(device_id.clone(), Some(row));
                        }
                    }
                    if let Some(rej) = reject {
                        let territory = devices[device_id]
                            .as_ref()
                            .map(|d| d.territory.clone())
                            .unwrap_or_else(|| default_territory.to_string());
                        let letter = DeadLetter {
                            device: device_id,
                            topic,
                            recv_ms: *recv_ms,
                            reject: &rej,
                            payload,
                        };
                        self.st.dead_letter(&tx, letter, &territory)?;
                        let resource = if crate::model::is_valid_ident(device_id) {
                            format!("device/{device_id}")
                        } else {
                            "device/?".into()
                        };
                        let ev = AuditEvent::new(
                            &Actor::system(),
                            "vitals.reject",
                            resource,
                            Outcome::Denied,
                        )
                        .territory(&territory)
                        .details(
                            serde_json::json!({ "code": rej.code.as_str(), "record": rej.record }),
                        );
                        audit::append(&tx, &self.st, &ev, now)?;
                        out.push(IngestOutcome::Rejected(rej));
                        continue;
                    }
                    let readings = parsed.as_ref().expect("not rejected");
                    let mut row = devices
                        .get_mut(device_id)
                        .and_then(Option::take)
                        .expect("registered");
                    let (dk, case_id) = match &row.bound_case {
                        Some((c, dk)) => (self.st.data_key(&tx, *dk, "case", c)?, Some(c.clone())),
                        None => (self.st.holding_key(&tx, device_id, &mut row)?, None),
                    };
                    let (mut new, mut dups) = (0, 0);
                    for r in readings {
                        let id = next_id;
                        let ct = seal_value(&dk, id, r.value)?;
                        let n = tx
                            .prepare_cached(
                                "INSERT INTO observations (id, case_id, device_id, dk_id, code, value, device_time, recv_time, source) \
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'device') \
                                 ON CONFLICT (device_id, code, device_time) WHERE device_id IS NOT NULL DO NOTHING",
                            )?
                            .execute(params![id, case_id, device_id, dk.id(), r.code, ct, r.device_time_ms, recv_ms])?;
                        *sealed_per_dk.entry(dk.id()).or_default() += 1;
                        if n == 1 {
                            new += 1;
                            next_id += 1;
                        } else {
                            dups += 1;
                        }
                    }
                    tx.prepare_cached(
                        "UPDATE devices SET last_seen_at = ?1, last_vitals_at = ?1 WHERE id = ?2",
                    )?
                    .execute(params![recv_ms, device_id])?;
                    tx.prepare_cached(
                        "UPDATE alarms SET cleared_at = ?1 WHERE kind = 'device_silent' AND device_id = ?2 AND cleared_at IS NULL",
                    )?
                    .execute(params![now, device_id])?;
                    let target = match &case_id {
                        Some(c) => format!("case/{c}"),
                        None => format!("device/{device_id}"),
                    };
                    let e = per_target
                        .entry((target, row.territory.clone()))
                        .or_default();
                    e.0 += new;
                    e.1 += dups;
                    devices.insert(device_id.clone(), Some(row));
                    out.push(IngestOutcome::Stored {
                        case_id,
                        new,
                        duplicates: dups,
                    });
                }
            }
        }
        for (dk, n) in sealed_per_dk {
            self.st.count_invocations(&tx, dk, n)?;
        }
        let mut targets: Vec<_> = per_target.into_iter().collect();
        targets.sort();
        for ((resource, territory), (new, dups)) in targets {
            let ev = AuditEvent::new(
                &Actor::system(),
                "observation.ingest",
                resource,
                Outcome::Success,
            )
            .territory(&territory)
            .details(serde_json::json!({ "readings": new, "duplicates": dups }));
            audit::append(&tx, &self.st, &ev, now)?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Registers a device. `credential_hash` is its broker password hash (mosquitto format).
    pub fn register_device(
        &mut self,
        actor: &Actor,
        id: &str,
        kind: &str,
        territory: &str,
        credential_hash: Option<&str>,
    ) -> Result<()> {
        if !crate::model::is_valid_ident(id) {
            return Err(StoreError::Refused(format!(
                "`{id}` is not a valid device id ([A-Za-z0-9._-]{{1,64}})"
            )));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let live: Option<Option<i64>> = tx
            .query_row("SELECT removed_at FROM devices WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        match live {
            Some(None) => {
                return Err(StoreError::Refused(format!(
                    "device `{id}` is already registered"
                )));
            }
            Some(Some(_)) => {
                tx.execute(
                    "UPDATE devices SET removed_at = NULL, kind = ?2, territory = ?3, credential_hash = ?4, registered_at = ?5 WHERE id = ?1",
                    params![id, kind, territory, credential_hash, now_ms()],
                )?;
            }
            None => {
                tx.execute(
                    "INSERT INTO devices (id, kind, territory, registered_at, credential_hash) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, kind, territory, now_ms(), credential_hash],
                )?;
            }
        }
        let ev = AuditEvent::new(
            actor,
            "device.register",
            format!("device/{id}"),
            Outcome::Success,
        )
        .territory(territory);
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a device: it can no longer publish; it is unbound; its readings stay.
    pub fn remove_device(&mut self, actor: &Actor, id: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE devices SET removed_at = ?1, bound_case = NULL, bound_at = NULL, credential_hash = NULL WHERE id = ?2 AND removed_at IS NULL",
            params![now_ms(), id],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "device",
                id: id.into(),
            });
        }
        let ev = AuditEvent::new(
            actor,
            "device.remove",
            format!("device/{id}"),
            Outcome::Success,
        );
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// Registered devices.
    pub fn list_devices(&self) -> Result<Vec<DeviceInfo>> {
        let mut st = self.conn.prepare(
            "SELECT d.id, d.kind, d.territory, d.presence, d.bound_case, d.last_vitals_at, \
             (SELECT count(*) FROM observations o WHERE o.device_id = d.id AND o.case_id IS NULL) \
             FROM devices d WHERE d.removed_at IS NULL ORDER BY d.id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(DeviceInfo {
                id: r.get(0)?,
                kind: r.get(1)?,
                territory: r.get(2)?,
                presence: r.get(3)?,
                bound_case: r.get(4)?,
                last_vitals_at: r.get(5)?,
                unbound_readings: r.get::<_, i64>(6)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `(device id, credential hash)` of every registered device with a credential.
    pub fn device_credentials(&self) -> Result<Vec<(String, String)>> {
        let mut st = self.conn.prepare("SELECT id, credential_hash FROM devices WHERE removed_at IS NULL AND credential_hash IS NOT NULL ORDER BY id")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Binds a device to an open case of the same territory; new readings go to that case.
    /// With `attach_unbound`, readings kept while the device was unbound are moved to the case
    /// (re-encrypted under the case key). Returns how many were attached.
    pub fn bind_device(
        &mut self,
        actor: &Actor,
        device: &str,
        case_id: &str,
        attach_unbound: bool,
    ) -> Result<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (dterr, holding): (String, Option<i64>) = tx
            .query_row(
                "SELECT territory, holding_dk_id FROM devices WHERE id = ?1 AND removed_at IS NULL",
                [device],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "device",
                id: device.into(),
            })?;
        let (cterr, status, case_dk): (String, String, i64) = tx
            .query_row(
                "SELECT territory, status, dk_id FROM cases WHERE id = ?1 AND erased_at IS NULL",
                [case_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "case",
                id: case_id.into(),
            })?;
        if cterr != dterr {
            return Err(StoreError::Refused(format!(
                "device `{device}` belongs to territory `{dterr}`, the case to `{cterr}`"
            )));
        }
        if status == "closed" {
            return Err(StoreError::Refused(format!("case {case_id} is closed")));
        }
        tx.execute(
            "UPDATE devices SET bound_case = ?1, bound_at = ?2 WHERE id = ?3",
            params![case_id, now_ms(), device],
        )?;
        let mut attached = 0;
        if attach_unbound && let Some(h) = holding {
            let from = self.st.data_key(&tx, h, "device", device)?;
            let to = self.st.data_key(&tx, case_dk, "case", case_id)?;
            let rows: Vec<(i64, Vec<u8>)> = tx
                .prepare(
                    "SELECT id, value FROM observations WHERE device_id = ?1 AND case_id IS NULL",
                )?
                .query_map([device], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (id, ct) in &rows {
                let loc = FieldLoc {
                    table: "observations",
                    column: "value",
                    row_id: &id.to_string(),
                };
                let plain = from.open(loc, ct)?;
                let sealed = to.seal(loc, &plain)?;
                tx.execute(
                    "UPDATE observations SET case_id = ?1, dk_id = ?2, value = ?3 WHERE id = ?4",
                    params![case_id, case_dk, sealed, id],
                )?;
            }
            self.st.count_invocations(&tx, case_dk, rows.len() as u64)?;
            attached = rows.len();
        }
        let ev = AuditEvent::new(
            actor,
            "device.bind",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&cterr)
        .details(serde_json::json!({ "device": device, "attached_readings": attached }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(attached)
    }

    /// Unbinds a device; its later readings are held under its holding key.
    pub fn unbind_device(&mut self, actor: &Actor, device: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let bound: Option<Option<String>> = tx
            .query_row(
                "SELECT bound_case FROM devices WHERE id = ?1 AND removed_at IS NULL",
                [device],
                |r| r.get(0),
            )
            .optional()?;
        let case = bound.ok_or_else(|| StoreError::NotFound {
            kind: "device",
            id: device.into(),
        })?;
        let Some(case) = case else {
            return Err(StoreError::Refused(format!(
                "device `{device}` is not bound"
            )));
        };
        tx.execute(
            "UPDATE devices SET bound_case = NULL, bound_at = NULL WHERE id = ?1",
            [device],
        )?;
        tx.execute("UPDATE alarms SET cleared_at = ?1 WHERE kind = 'device_silent' AND device_id = ?2 AND cleared_at IS NULL", params![now_ms(), device])?;
        let ev = AuditEvent::new(
            actor,
            "device.unbind",
            format!("case/{case}"),
            Outcome::Success,
        )
        .details(serde_json::json!({ "device": device }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// Raises a device-silent alarm for every bound device without vitals for `gap_ms`
    /// (and without an open alarm). Returns the alarms raised now.
    pub fn raise_silent_device_alarms(&mut self, now: i64, gap_ms: i64) -> Result<Vec<Alarm>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let silent: Vec<(String, String)> = tx
            .prepare_cached(
                "SELECT d.id, d.bound_case FROM devices d WHERE d.bound_case IS NOT NULL AND d.removed_at IS NULL \
                 AND coalesce(d.last_vitals_at, d.bound_at) < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM alarms a WHERE a.kind = 'device_silent' AND a.device_id = d.id AND a.cleared_at IS NULL)",
            )?
            .query_map([now - gap_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut raised = Vec::new();
        for (device, case) in silent {
            tx.execute(
                "INSERT INTO alarms (kind, case_id, device_id, raised_at, detail) VALUES ('device_silent', ?1, ?2, ?3, ?4)",
                params![case, device, now, format!("no vitals for {} s", gap_ms / 1000)],
            )?;
            let id = tx.last_insert_rowid();
            let ev = AuditEvent::new(
                &Actor::system(),
                "alarm.raise",
                format!("case/{case}"),
                Outcome::Success,
            )
            .details(
                serde_json::json!({ "alarm": id, "kind": ALARM_DEVICE_SILENT, "device": device }),
            );
            audit::append(&tx, &self.st, &ev, now)?;
            raised.push(Alarm {
                id,
                kind: ALARM_DEVICE_SILENT.into(),
                case_id: Some(case),
                device_id: Some(device),
                raised_at_ms: now,
                acked_at_ms: None,
            });
        }
        tx.commit()?;
        Ok(raised)
    }

    /// Raises (when `active` and none is open) or clears (when not `active`) the appliance-wide
    /// alarm `kind`; audited. Returns whether the alarm state changed.
    pub fn set_appliance_alarm(&mut self, kind: &str, active: bool, detail: &str) -> Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let open: Option<i64> = tx
            .query_row(
                "SELECT id FROM alarms WHERE kind = ?1 AND device_id IS NULL AND case_id IS NULL AND cleared_at IS NULL",
                [kind],
                |r| r.get(0),
            )
            .optional()?;
        let action = match (active, open) {
            (true, None) => {
                tx.execute(
                    "INSERT INTO alarms (kind, raised_at, detail) VALUES (?1, ?2, ?3)",
                    params![kind, now, detail],
                )?;
                "alarm.raise"
            }
            (false, Some(id)) => {
                tx.execute(
                    "UPDATE alarms SET cleared_at = ?1 WHERE id = ?2",
                    params![now, id],
                )?;
                "alarm.clear"
            }
            _ => return Ok(false),
        };
        let ev = AuditEvent::new(&Actor::system(), action, "appliance", Outcome::Success)
            .details(serde_json::json!({ "kind": kind, "detail": detail }));
        audit::append(&tx, &self.st, &ev, now)?;
        tx.commit()?;
        Ok(true)
    }

    /// Open (not cleared) alarms.
    pub fn open_alarms(&self) -> Result<Vec<Alarm>> {
        let mut st = self.conn.prepare("SELECT id, kind, case_id, device_id, raised_at, acked_at FROM alarms WHERE cleared_at IS NULL ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok(Alarm {
                id: r.get(0)?,
                kind: r.get(1)?,
                case_id: r.get(2)?,
                device_id: r.get(3)?,
                raised_at_ms: r.get(4)?,
                acked_at_ms: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Acknowledges an open alarm (audited). False when it is not open or already acknowledged.
    pub fn acknowledge_alarm(&mut self, actor: &Actor, id: i64) -> Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE alarms SET acked_at = ?1, acked_by = ?2 WHERE id = ?3 AND cleared_at IS NULL AND acked_at IS NULL",
            params![now_ms(), actor.id, id],
        )?;
        if n == 1 {
            let ev = AuditEvent::new(actor, "alarm.ack", format!("alarm/{id}"), Outcome::Success);
            audit::append(&tx, &self.st, &ev, now_ms())?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Decrypted vitals of a case, oldest first (audited as one read).
    pub fn case_vitals(&mut self, actor: &Actor, case_id: &str) -> Result<Vec<Observation>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (territory, dk) = self.st.live_case(&tx, case_id)?;
        let out = read_case_observations(&tx, &dk, case_id)?;
        let ev = AuditEvent::new(
            actor,
            "observation.read",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&territory)
        .details(serde_json::json!({ "readings": out.len() }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(out)
    }

    /// Counts of dead letters per reject code (for metrics and tests).
    pub fn dead_letter_counts(&self) -> Result<Vec<(String, u64)>> {
        let mut st = self
            .conn
            .prepare("SELECT code, count(*) FROM dead_letters GROUP BY code ORDER BY code")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
