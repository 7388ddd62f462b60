//! Field devices: the `devices` table — registration, removal, listing, binding to a case
//! (with the readings kept while unbound), and the per-device rows ingest needs.

use super::{Db, Result, State, StoreError, audit};
use crate::crypto::field::{DataKey, FieldLoc};
use crate::model::{Actor, AuditEvent, Outcome, Presence, now_ms};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::sync::Arc;

/// A registered device as listed by `devices list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub id: String,
    pub kind: String,
    pub territory: String,
    pub presence: Presence,
    pub bound_case: Option<String>,
    pub last_vitals_at: Option<i64>,
    pub unbound_readings: u64,
}

pub(super) struct DeviceRow {
    pub(super) territory: String,
    /// The case it is bound to and that case's data key id.
    pub(super) bound_case: Option<(String, i64)>,
    /// The data key sealing its readings while unbound.
    pub(super) holding_dk: Option<i64>,
}

impl State {
    pub(super) fn device_row(&mut self, conn: &Connection, id: &str) -> Result<Option<DeviceRow>> {
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
    pub(super) fn auto_register(
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

    pub(super) fn holding_key(
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
}

/// How far back `attach_unbound` reaches when binding a device: readings taken while the crew
/// set up, not a previous patient's.
pub const ATTACH_WINDOW_MS: i64 = 15 * 60 * 1000;

impl Db {
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
            return Err(StoreError::InvalidId {
                kind: "device",
                id: id.into(),
            });
        }
        // A device whose readings could not be sealed is refused here, not at its first pack.
        if !self.st.keys.territories.contains_key(territory) {
            return Err(StoreError::NoTerritoryKey {
                territory: territory.into(),
            });
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
                return Err(StoreError::AlreadyExists {
                    kind: "device",
                    id: id.into(),
                });
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
        let (dterr, holding, bound): (String, Option<i64>, Option<String>) = tx
            .query_row(
                "SELECT territory, holding_dk_id, bound_case FROM devices WHERE id = ?1 AND removed_at IS NULL",
                [device],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
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
            return Err(StoreError::TerritoryMismatch {
                device: device.into(),
                device_territory: dterr,
                case_territory: cterr,
            });
        }
        if status == "closed" {
            return Err(StoreError::CaseClosed {
                case_id: case_id.into(),
            });
        }
        // Moving a monitor off another patient's open case must be an explicit unbind there.
        if let Some(other) = bound.filter(|b| b != case_id) {
            return Err(StoreError::AlreadyBound {
                device: device.into(),
                case_id: other,
            });
        }
        tx.execute(
            "UPDATE devices SET bound_case = ?1, bound_at = ?2 WHERE id = ?3",
            params![case_id, now_ms(), device],
        )?;
        let mut attached = 0;
        if attach_unbound && let Some(h) = holding {
            let from = self.st.data_key(&tx, h, "device", device)?;
            let to = self.st.data_key(&tx, case_dk, "case", case_id)?;
            // Only readings that can be this patient's: received after the device's last
            // reading on any case (a monitor left on the previous patient keeps sending as
            // unbound) and within the last `ATTACH_WINDOW_MS`.
            let since: i64 = tx.query_row(
                "SELECT coalesce(max(recv_time), 0) FROM observations WHERE device_id = ?1 AND case_id IS NOT NULL",
                [device],
                |r| r.get(0),
            )?;
            let since = since.max(now_ms() - ATTACH_WINDOW_MS);
            let rows: Vec<(i64, Vec<u8>, String, i64)> = tx
                .prepare(
                    "SELECT id, value, code, device_time FROM observations WHERE device_id = ?1 AND case_id IS NULL AND recv_time > ?2",
                )?
                .query_map(params![device, since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?;
            for (id, ct, code, t) in &rows {
                let row = super::readings::obs_row(*id, code, *t);
                let loc = FieldLoc {
                    table: "observations",
                    column: "value",
                    row_id: &row,
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
            return Err(StoreError::NotBound {
                device: device.into(),
            });
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
}
