//! Observations: vitals readings (device and manual, sealed per case), the ingest batch
//! transaction (readings, presence, dead letters in one commit), the case vitals reads.

use super::devices::DeviceRow;
use super::readings::{read_case_observations, read_case_observations_after, seal_value};
use super::record::open_case_only;
use super::{Db, Result, State, audit};
use crate::crypto::field::{DataKey, FieldLoc};
use crate::model::{Actor, AuditEvent, Outcome, Reading, Reject, RejectCode, now_ms};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::model::Observation;

/// One message for [`Db::ingest_batch`].
#[derive(Debug, Clone)]
pub enum IngestItem {
    /// A vitals publish, already parsed (or rejected) by the ingest pipeline. `payload` is the
    /// raw message (empty when over the size limit), kept sealed if the message is refused.
    Vitals {
        device_id: String,
        topic: String,
        recv_ms: i64,
        parsed: std::result::Result<Vec<Reading>, Reject>,
        payload: bytes::Bytes,
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

/// A refused device message, as the dead-letter table keeps it.
pub(super) struct DeadLetter<'a> {
    device: &'a str,
    topic: &'a str,
    recv_ms: i64,
    reject: &'a Reject,
    /// The raw payload (sealed under the territory's dead-letter key unless refused for size).
    payload: &'a [u8],
}

impl State {
    /// The shared data key for dead letters of unknown or invalid devices.
    pub(super) fn dead_letter_key(
        &mut self,
        conn: &Connection,
        territory: &str,
    ) -> Result<Arc<DataKey>> {
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

    pub(super) fn dead_letter(
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
        // Oversized payloads are not kept (that is the point of the limit); everything else is,
        // sealed, so that a refused message can be inspected and, if it was valid, re-ingested.
        let keep = !payload.is_empty() && rej.code != RejectCode::PayloadTooLarge;
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

/// One accepted pack for [`State::store_readings`].
struct StoreReadings<'a> {
    device_id: &'a str,
    row: &'a mut DeviceRow,
    readings: &'a [Reading],
    recv_ms: i64,
    now: i64,
    next_id: &'a mut i64,
    sealed_per_dk: &'a mut HashMap<i64, u64>,
}

impl State {
    /// Dead-letters a refused message and audits the refusal.
    fn refuse(
        &mut self,
        conn: &Connection,
        letter: DeadLetter<'_>,
        territory: &str,
        now: i64,
    ) -> Result<()> {
        let (device_id, code, record) = (letter.device, letter.reject.code, letter.reject.record);
        self.dead_letter(conn, letter, territory)?;
        let resource = if crate::model::is_valid_ident(device_id) {
            format!("device/{device_id}")
        } else {
            "device/?".into()
        };
        let ev = AuditEvent::new(&Actor::system(), "vitals.reject", resource, Outcome::Denied)
            .territory(territory)
            .details(serde_json::json!({ "code": code.as_str(), "record": record }));
        audit::append(conn, self, &ev, now)?;
        Ok(())
    }

    /// Seals and inserts one accepted pack's readings under the bound case's key or the
    /// device's holding key. Returns `(case, new, duplicates)`.
    fn store_readings(
        &mut self,
        conn: &Connection,
        p: StoreReadings<'_>,
    ) -> Result<(Option<String>, usize, usize)> {
        let StoreReadings {
            device_id,
            row,
            readings,
            recv_ms,
            now,
            next_id,
            sealed_per_dk,
        } = p;
        let (dk, case_id) = match &row.bound_case {
            Some((c, dk)) => (self.data_key(conn, *dk, "case", c)?, Some(c.clone())),
            None => (self.holding_key(conn, device_id, row)?, None),
        };
        let (mut new, mut dups) = (0, 0);
        for r in readings {
            let id = *next_id;
            let ct = seal_value(&dk, (id, r.code, r.device_time_ms), r.value)?;
            let n = conn
                .prepare_cached(
                    "INSERT INTO observations (id, case_id, device_id, dk_id, code, value, device_time, recv_time, source) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'device') \
                     ON CONFLICT (device_id, code, device_time) WHERE device_id IS NOT NULL DO NOTHING",
                )?
                .execute(params![id, case_id, device_id, dk.id(), r.code, ct, r.device_time_ms, recv_ms])?;
            // Counted even if this pack is later undone: over-counting nonces is safe.
            *sealed_per_dk.entry(dk.id()).or_default() += 1;
            if n == 1 {
                new += 1;
                *next_id += 1;
            } else {
                dups += 1;
            }
        }
        conn.prepare_cached(
            "UPDATE devices SET last_seen_at = ?1, last_vitals_at = ?1 WHERE id = ?2",
        )?
        .execute(params![recv_ms, device_id])?;
        conn.prepare_cached(
            "UPDATE alarms SET cleared_at = ?1 WHERE kind = 'device_silent' AND device_id = ?2 AND cleared_at IS NULL",
        )?
        .execute(params![now, device_id])?;
        Ok((case_id, new, dups))
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
                    let (rej, territory) = match reject {
                        Some(rej) => {
                            let territory = devices[device_id]
                                .as_ref()
                                .map_or(default_territory, |d| d.territory.as_str())
                                .to_string();
                            (rej, territory)
                        }
                        None => {
                            let readings = parsed.as_ref().expect("not rejected");
                            let mut row = devices
                                .get_mut(device_id)
                                .and_then(Option::take)
                                .expect("registered");
                            // One pack's data-dependent failure (its territory has no key, say)
                            // must not stop the batch for every other device: it is undone and
                            // dead-lettered.
                            tx.execute_batch("SAVEPOINT ingest_item")?;
                            let first_id = next_id;
                            let stored = self.st.store_readings(
                                &tx,
                                StoreReadings {
                                    device_id,
                                    row: &mut row,
                                    readings,
                                    recv_ms: *recv_ms,
                                    now,
                                    next_id: &mut next_id,
                                    sealed_per_dk: &mut sealed_per_dk,
                                },
                            );
                            match stored {
                                Ok((case_id, new, dups)) => {
                                    tx.execute_batch("RELEASE ingest_item")?;
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
                                    continue;
                                }
                                Err(e) if e.is_systemic() => return Err(e),
                                Err(e) => {
                                    tx.execute_batch(
                                        "ROLLBACK TO ingest_item; RELEASE ingest_item",
                                    )?;
                                    next_id = first_id;
                                    let fresh = self.st.device_row(&tx, device_id)?;
                                    devices.insert(device_id.clone(), fresh);
                                    tracing::warn!(device = %device_id, error = %e, "vitals pack refused by the store");
                                    // The device's territory may be the cause (no key): the
                                    // letter is kept under the default territory's key.
                                    let rej =
                                        Reject::new(RejectCode::StoreRefused, e.to_string(), None);
                                    (rej, default_territory.to_string())
                                }
                            }
                        }
                    };
                    let letter = DeadLetter {
                        device: device_id,
                        topic,
                        recv_ms: *recv_ms,
                        reject: &rej,
                        payload,
                    };
                    self.st.refuse(&tx, letter, &territory, now)?;
                    out.push(IngestOutcome::Rejected(rej));
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

    /// Decrypted vitals of a case, oldest first (audited as one read).
    pub fn case_vitals(
        &mut self,
        actor: &Actor,
        case_id: &str,
    ) -> Result<(Vec<Observation>, Vec<super::edits::VoidedReading>)> {
        let a = self.read_case_vitals(actor, case_id);
        self.finish_audited(a)
    }

    /// [`Db::case_vitals`] on a reader: the readings and their audit entry, not yet written.
    pub fn read_case_vitals(
        &mut self,
        actor: &Actor,
        case_id: &str,
    ) -> super::Audited<(Vec<Observation>, Vec<super::edits::VoidedReading>)> {
        let r = (|| {
            let tx = self.conn.transaction()?;
            let (territory, dk) = self.st.live_case(&tx, case_id)?;
            let out = read_case_observations(&tx, &dk, case_id)?;
            let voided = super::edits::voided_readings(&tx, &dk, case_id)?;
            tx.commit()?;
            let ev = AuditEvent::new(
                actor,
                "observation.read",
                format!("case/{case_id}"),
                Outcome::Success,
            )
            .territory(&territory)
            .details(serde_json::json!({ "readings": out.len() + voided.len() }));
            Ok(((out, voided), ev))
        })();
        super::Audited::of(r)
    }

    /// Readings of a case after row `after_id`, for a live stream whose opening was audited
    /// (`case.stream`); not audited again per push.
    pub fn case_vitals_after(&mut self, case_id: &str, after_id: i64) -> Result<Vec<Observation>> {
        let (_, dk) = self.st.live_case(&self.conn, case_id)?;
        read_case_observations_after(&self.conn, &dk, case_id, after_id)
    }

    /// Manual vitals entered by the crew: `(vital name, value, time)`; validated by the caller
    /// against the vocabulary. Returns the new row ids.
    pub fn add_manual_vitals(
        &mut self,
        actor: &Actor,
        case_id: &str,
        readings: &[(String, f64, i64)],
        request_key: Option<&str>,
    ) -> Result<Vec<i64>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // A repeated submit (same client request key) stores nothing and answers as before.
        if let Some(r) = super::record::replay(&tx, &actor.id, request_key)? {
            return serde_json::from_value(r).map_err(|_| super::record::key_reused());
        }
        let (territory, dk) = self.st.live_case(&tx, case_id)?;
        open_case_only(&tx, case_id)?;
        let now = now_ms();
        let mut ids = Vec::with_capacity(readings.len());
        for (code, value, at) in readings {
            let id: i64 = tx.query_row(
                "SELECT coalesce(max(id), 0) + 1 FROM observations",
                [],
                |r| r.get(0),
            )?;
            let ct = seal_value(&dk, (id, code, *at), *value)?;
            tx.execute(
                "INSERT INTO observations (id, case_id, device_id, dk_id, code, value, device_time, recv_time, source) \
                 VALUES (?1, ?2, NULL, ?3, ?4, ?5, ?6, ?7, 'manual')",
                params![id, case_id, dk.id(), code, ct, at, now],
            )?;
            ids.push(id);
        }
        self.st.count_invocations(&tx, dk.id(), ids.len() as u64)?;
        let ev = AuditEvent::new(
            actor,
            "observation.create",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&territory)
        .details(serde_json::json!({ "readings": ids.len(), "source": "manual" }));
        audit::append(&tx, &self.st, &ev, now)?;
        super::record::remember(
            &tx,
            &actor.id,
            request_key,
            case_id,
            &serde_json::json!(ids),
        )?;
        tx.commit()?;
        Ok(ids)
    }

    /// Audits the opening of a live stream on a case.
    pub fn audit_stream_open(&mut self, actor: &Actor, case_id: &str) -> Result<()> {
        let territory = self.territory_of("case", case_id)?.unwrap_or_default();
        let ev = AuditEvent::new(
            actor,
            "case.stream",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&territory);
        self.audit(&ev)?;
        Ok(())
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
