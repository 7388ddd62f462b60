//! Alarms: the `alarms` table — device-silent alarms on bound cases, appliance alarms (disk
//! pressure), listing and acknowledgement.

use super::{Db, Result, audit};
use crate::model::{Actor, AlarmKind, AuditEvent, Outcome, now_ms};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

/// An alarm row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    pub id: i64,
    pub kind: AlarmKind,
    pub case_id: Option<String>,
    pub device_id: Option<String>,
    pub raised_at_ms: i64,
    pub acked_at_ms: Option<i64>,
}

impl Db {
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
                "INSERT INTO alarms (kind, case_id, device_id, raised_at, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    AlarmKind::DeviceSilent,
                    case,
                    device,
                    now,
                    format!("no vitals for {} s", gap_ms / 1000)
                ],
            )?;
            let id = tx.last_insert_rowid();
            let ev = AuditEvent::new(
                &Actor::system(),
                "alarm.raise",
                format!("case/{case}"),
                Outcome::Success,
            )
            .details(
                serde_json::json!({ "alarm": id, "kind": AlarmKind::DeviceSilent, "device": device }),
            );
            audit::append(&tx, &self.st, &ev, now)?;
            raised.push(Alarm {
                id,
                kind: AlarmKind::DeviceSilent,
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
    pub fn set_appliance_alarm(
        &mut self,
        kind: AlarmKind,
        active: bool,
        detail: &str,
    ) -> Result<bool> {
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
}
