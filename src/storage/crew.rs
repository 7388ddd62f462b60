//! What the crew tablet needs from the store: personal accounts and login back-off, persisted
//! sessions, break-glass grants and their review, medication orders, manual vitals, and
//! composite case reads that are audited once per request.
//!
//! Authorization is decided by `api`; these functions enforce data rules (territory of a case,
//! closed cases, vocabulary) and write the audit entry in the same transaction as the access.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::observations::{read_case_observations, read_case_observations_after, seal_value};
use super::triage::read_triage;
use super::{Db, Result, StoreError, audit};
use crate::crypto::field::FieldLoc;
use crate::model::{
    Actor, AuditEvent, Case, Observation, Outcome, Role, StoredPatient, StoredTriage, now_ms,
};

/// A personal account as listed by `users list` (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub id: String,
    pub display_name: String,
    pub role: Role,
    pub territory: String,
    pub created_at_ms: i64,
    pub disabled: bool,
}

/// Roles are stored by name; the `users.role` CHECK constraint holds the same closed set.
impl ToSql for Role {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Role {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        Role::parse(name)
            .ok_or_else(|| FromSqlError::Other(format!("unknown role `{name}`").into()))
    }
}

/// What login needs to know about an account.
#[derive(Debug, Clone)]
pub struct LoginUser {
    pub info: UserInfo,
    /// PHC string of the PIN/password hash.
    pub secret_hash: String,
    pub failed_count: u32,
    pub backoff_until_ms: Option<i64>,
}

/// A persisted session (the token itself is never stored, only its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub token_hash: [u8; 32],
    pub user_id: String,
    pub created_at_ms: i64,
    pub last_seen_ms: i64,
    pub expires_at_ms: i64,
    pub break_glass: Option<(i64, i64)>,
}

/// A break-glass use and its review state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakGlass {
    pub id: i64,
    pub user_id: String,
    pub territory: String,
    pub reason: String,
    pub started_at_ms: i64,
    pub until_ms: i64,
    pub reviewed_at_ms: Option<i64>,
    pub reviewed_by: Option<String>,
    pub review_note: Option<String>,
}

/// A medication given or ordered (PHI: sealed under the case key).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Medication {
    pub name: String,
    pub dose: String,
    pub route: String,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredMedication {
    pub id: i64,
    pub created_at_ms: i64,
    pub created_by: String,
    #[serde(flatten)]
    pub medication: Medication,
}

/// One line of the case list. `patient_name` and `esi` are only filled for callers allowed to see
/// them (`names` / `clinical`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseSummary {
    pub id: String,
    pub status: String,
    pub created_at_ms: i64,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub esi: Option<u8>,
    pub devices: Vec<String>,
}

/// Custody state of a case's bundles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleState {
    pub bundle_id: String,
    pub kind: String,
    pub state: String,
    pub attempts: i64,
    pub created_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub receipted_at_ms: Option<i64>,
}

/// An open alarm on a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseAlarm {
    pub id: i64,
    pub kind: String,
    pub device_id: Option<String>,
    pub raised_at_ms: i64,
    pub detail: String,
}

/// Everything the case screen shows, read in one audited transaction.
#[derive(Debug, Clone)]
pub struct CaseView {
    pub case: Case,
    pub patient: Option<StoredPatient>,
    pub devices: Vec<String>,
    pub alarms: Vec<CaseAlarm>,
    pub triage: Vec<StoredTriage>,
    pub medications: Vec<StoredMedication>,
    pub vitals: Vec<Observation>,
    pub bundles: Vec<BundleState>,
}

/// An audit-log row for the supervisor (details never hold PHI).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    pub seq: i64,
    pub ts_ms: i64,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub territory: String,
    pub details: serde_json::Value,
}

/// Which parts of a case read the caller may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaseParts {
    /// Clinical record: vitals, triage, medications, alarms, complaint.
    pub clinical: bool,
    /// Demographics of the case's patient.
    pub demographics: bool,
}

impl Db {
    /// Territory of a patient or case (`kind` is `patient` or `case`), without reading PHI.
    pub fn territory_of(&self, kind: &str, id: &str) -> Result<Option<String>> {
        let sql = match kind {
            "patient" => "SELECT territory FROM patients WHERE id = ?1",
            "case" => "SELECT territory FROM cases WHERE id = ?1",
            _ => return Err(StoreError::Refused(format!("unknown resource kind {kind}"))),
        };
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    /// Records a denied access (authorization, territory) in the audit log.
    pub fn audit_denied(
        &mut self,
        actor: &Actor,
        action: &str,
        resource: &str,
        territory: &str,
        reason: &str,
    ) -> Result<()> {
        let ev = AuditEvent::new(actor, action, resource, Outcome::Denied)
            .territory(territory)
            .details(serde_json::json!({ "reason": reason }));
        self.audit(&ev)?;
        Ok(())
    }

    /// Triage results stored (metrics).
    pub fn triage_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM triage_results", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    // ---- accounts -------------------------------------------------------------------------

    /// Adds a personal account; `secret_hash` is a PHC string from `crypto::password`.
    pub fn add_user(
        &mut self,
        actor: &Actor,
        id: &str,
        display_name: &str,
        role: Role,
        territory: &str,
        secret_hash: &str,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx
            .query_row("SELECT 1 FROM users WHERE id = ?1", [id], |_| Ok(true))
            .optional()?
            .unwrap_or(false);
        if exists {
            return Err(StoreError::Refused(format!("user `{id}` already exists")));
        }
        tx.execute(
            "INSERT INTO users (id, display_name, role, territory, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, display_name, role, territory, secret_hash, now_ms()],
        )?;
        let ev = AuditEvent::new(actor, "user.add", format!("user/{id}"), Outcome::Success)
            .territory(territory)
            .details(serde_json::json!({ "role": role }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// Disables (or re-enables) an account; a disabled account's sessions end at once.
    pub fn set_user_disabled(&mut self, actor: &Actor, id: &str, disabled: bool) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE users SET disabled_at = ?1, failed_count = 0, backoff_until = NULL WHERE id = ?2",
            params![disabled.then(now_ms), id],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "user",
                id: id.into(),
            });
        }
        if disabled {
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", [id])?;
        }
        let action = if disabled {
            "user.disable"
        } else {
            "user.enable"
        };
        let ev = AuditEvent::new(actor, action, format!("user/{id}"), Outcome::Success);
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces an account's PIN/password hash and clears its back-off.
    pub fn set_user_secret(&mut self, actor: &Actor, id: &str, secret_hash: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE users SET secret_hash = ?1, failed_count = 0, backoff_until = NULL WHERE id = ?2",
            params![secret_hash, id],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "user",
                id: id.into(),
            });
        }
        tx.execute("DELETE FROM sessions WHERE user_id = ?1", [id])?;
        let ev = AuditEvent::new(actor, "user.secret", format!("user/{id}"), Outcome::Success);
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    pub fn list_users(&self) -> Result<Vec<UserInfo>> {
        let mut st = self.conn.prepare(
            "SELECT id, display_name, role, territory, created_at, disabled_at IS NOT NULL FROM users ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(UserInfo {
                id: r.get(0)?,
                display_name: r.get(1)?,
                role: r.get(2)?,
                territory: r.get(3)?,
                created_at_ms: r.get(4)?,
                disabled: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn login_user(&self, id: &str) -> Result<Option<LoginUser>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, display_name, role, territory, created_at, disabled_at IS NOT NULL, secret_hash, failed_count, backoff_until \
                 FROM users WHERE id = ?1",
            )?
            .query_row([id], |r| {
                Ok(LoginUser {
                    info: UserInfo {
                        id: r.get(0)?,
                        display_name: r.get(1)?,
                        role: r.get(2)?,
                        territory: r.get(3)?,
                        created_at_ms: r.get(4)?,
                        disabled: r.get(5)?,
                    },
                    secret_hash: r.get(6)?,
                    failed_count: r.get::<_, i64>(7)? as u32,
                    backoff_until_ms: r.get(8)?,
                })
            })
            .optional()?)
    }

    /// Records a failed login: counts it, sets the back-off end, audits it (`reason` is a code,
    /// never the submitted secret). Unknown user ids are audited too.
    pub fn login_failed(
        &mut self,
        user_id: &str,
        reason: &str,
        backoff_until_ms: Option<i64>,
        now: i64,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let territory: Option<String> = tx
            .query_row(
                "UPDATE users SET failed_count = failed_count + 1, backoff_until = coalesce(?1, backoff_until) WHERE id = ?2 RETURNING territory",
                params![backoff_until_ms, user_id],
                |r| r.get(0),
            )
            .optional()?;
        let actor = Actor {
            id: user_id.into(),
            role: "unknown".into(),
        };
        let mut ev = AuditEvent::new(
            &actor,
            "login.failure",
            format!("user/{user_id}"),
            Outcome::Failure,
        )
        .details(serde_json::json!({ "reason": reason, "backoff_until": backoff_until_ms }));
        if let Some(t) = &territory {
            ev = ev.territory(t);
        }
        audit::append(&tx, &self.st, &ev, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Records a successful login and persists its session, in one transaction.
    pub fn login_succeeded(
        &mut self,
        actor: &Actor,
        territory: &str,
        s: &SessionRow,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE users SET failed_count = 0, backoff_until = NULL WHERE id = ?1",
            [&s.user_id],
        )?;
        tx.execute(
            "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![&s.token_hash[..], s.user_id, s.created_at_ms, s.last_seen_ms, s.expires_at_ms],
        )?;
        let ev = AuditEvent::new(
            actor,
            "login.success",
            format!("user/{}", s.user_id),
            Outcome::Success,
        )
        .territory(territory);
        audit::append(&tx, &self.st, &ev, s.created_at_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Ends sessions (logout, idle or absolute expiry); audited per session with `reason`.
    pub fn end_sessions(&mut self, ended: &[(SessionRow, &str)], now: i64) -> Result<()> {
        if ended.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (s, reason) in ended {
            tx.execute(
                "DELETE FROM sessions WHERE token_hash = ?1",
                [&s.token_hash[..]],
            )?;
            let actor = Actor {
                id: s.user_id.clone(),
                role: "session".into(),
            };
            let ev = AuditEvent::new(
                &actor,
                "logout",
                format!("user/{}", s.user_id),
                Outcome::Success,
            )
            .details(serde_json::json!({ "reason": reason }));
            audit::append(&tx, &self.st, &ev, now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Persists last-seen times of live sessions (batched by the session sweeper).
    pub fn touch_sessions(&mut self, seen: &[([u8; 32], i64)]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (h, t) in seen {
            tx.execute(
                "UPDATE sessions SET last_seen_at = max(last_seen_at, ?1) WHERE token_hash = ?2",
                params![t, &h[..]],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Sessions that survive a restart (of enabled users).
    pub fn load_sessions(&self) -> Result<Vec<(SessionRow, UserInfo)>> {
        let mut st = self.conn.prepare(
            "SELECT s.token_hash, s.user_id, s.created_at, s.last_seen_at, s.expires_at, s.break_glass_id, s.break_glass_until, \
             u.display_name, u.role, u.territory, u.created_at FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.disabled_at IS NULL",
        )?;
        let rows = st.query_map([], |r| {
            let h: Vec<u8> = r.get(0)?;
            let bg: Option<i64> = r.get(5)?;
            let bgu: Option<i64> = r.get(6)?;
            Ok((
                SessionRow {
                    token_hash: h.as_slice().try_into().unwrap_or([0; 32]),
                    user_id: r.get(1)?,
                    created_at_ms: r.get(2)?,
                    last_seen_ms: r.get(3)?,
                    expires_at_ms: r.get(4)?,
                    break_glass: bg.zip(bgu),
                },
                UserInfo {
                    id: r.get(1)?,
                    display_name: r.get(7)?,
                    role: r.get(8)?,
                    territory: r.get(9)?,
                    created_at_ms: r.get(10)?,
                    disabled: false,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- break-glass ----------------------------------------------------------------------

    /// Starts a break-glass grant for a session: a critical audit event and a review item.
    pub fn break_glass_start(
        &mut self,
        actor: &Actor,
        token_hash: &[u8; 32],
        territory: &str,
        reason: &str,
        now: i64,
        until: i64,
    ) -> Result<i64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO break_glass (user_id, territory, reason, started_at, until) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![actor.id, territory, reason, now, until],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "UPDATE sessions SET break_glass_id = ?1, break_glass_until = ?2 WHERE token_hash = ?3",
            params![id, until, &token_hash[..]],
        )?;
        let ev = AuditEvent::new(
            actor,
            "break_glass.start",
            format!("break_glass/{id}"),
            Outcome::Success,
        )
        .territory(territory)
        .details(serde_json::json!({ "severity": "critical", "until": until }));
        audit::append(&tx, &self.st, &ev, now)?;
        tx.commit()?;
        Ok(id)
    }

    /// Break-glass uses, newest first; only unreviewed ones with `pending`.
    pub fn break_glass_list(&self, pending: bool) -> Result<Vec<BreakGlass>> {
        let sql = format!(
            "SELECT id, user_id, territory, reason, started_at, until, reviewed_at, reviewed_by, review_note FROM break_glass {} ORDER BY id DESC LIMIT 500",
            if pending {
                "WHERE reviewed_at IS NULL"
            } else {
                ""
            }
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map([], |r| {
            Ok(BreakGlass {
                id: r.get(0)?,
                user_id: r.get(1)?,
                territory: r.get(2)?,
                reason: r.get(3)?,
                started_at_ms: r.get(4)?,
                until_ms: r.get(5)?,
                reviewed_at_ms: r.get(6)?,
                reviewed_by: r.get(7)?,
                review_note: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A supervisor closes a review item (audited). Reviewing one's own use is refused.
    pub fn break_glass_review(&mut self, actor: &Actor, id: i64, note: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(String, String, Option<i64>)> = tx
            .query_row(
                "SELECT user_id, territory, reviewed_at FROM break_glass WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (user, territory, reviewed) = row.ok_or_else(|| StoreError::NotFound {
            kind: "break-glass use",
            id: id.to_string(),
        })?;
        if user == actor.id {
            return Err(StoreError::Refused(
                "a break-glass use must be reviewed by another supervisor".into(),
            ));
        }
        if reviewed.is_some() {
            return Err(StoreError::Refused(format!(
                "break-glass use {id} is already reviewed"
            )));
        }
        tx.execute(
            "UPDATE break_glass SET reviewed_at = ?1, reviewed_by = ?2, review_note = ?3 WHERE id = ?4",
            params![now_ms(), actor.id, note, id],
        )?;
        let ev = AuditEvent::new(
            actor,
            "break_glass.review",
            format!("break_glass/{id}"),
            Outcome::Success,
        )
        .territory(&territory);
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    // ---- audit review ---------------------------------------------------------------------

    /// Audit entries, newest first, before `before_seq` (exclusive) when given. The read itself
    /// is audited.
    pub fn audit_entries(
        &mut self,
        actor: &Actor,
        limit: usize,
        before_seq: Option<i64>,
    ) -> Result<Vec<AuditRow>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows: Vec<AuditRow> = tx
            .prepare_cached(
                "SELECT seq, ts, actor, role, action, resource, outcome, territory, details FROM audit_log \
                 WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
            )?
            .query_map(params![before_seq.unwrap_or(i64::MAX), limit as i64], |r| {
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
                    details: serde_json::from_str(&d).unwrap_or(serde_json::Value::Null),
                })
            })?
            .collect::<Result<_, _>>()?;
        let ev = AuditEvent::new(actor, "audit.read", "audit_log", Outcome::Success)
            .details(serde_json::json!({ "entries": rows.len() }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(rows)
    }

    // ---- cases ----------------------------------------------------------------------------

    /// Open and recent cases of a territory, newest first (one audited read).
    pub fn list_cases(
        &mut self,
        actor: &Actor,
        territory: &str,
        parts: CaseParts,
        limit: usize,
    ) -> Result<Vec<CaseSummary>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows: Vec<(String, String, i64, Option<String>)> = tx
            .prepare_cached(
                "SELECT id, status, created_at, patient_id FROM cases WHERE territory = ?1 AND erased_at IS NULL \
                 ORDER BY (status = 'closed'), created_at DESC LIMIT ?2",
            )?
            .query_map(params![territory, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, status, created, patient_id) in rows {
            let patient_name = match (&patient_id, parts.demographics) {
                (Some(pid), true) => match self.st.read_patient(&tx, pid) {
                    Ok(p) => Some(
                        [p.patient.first_name, p.patient.last_name]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join(" "),
                    )
                    .filter(|s| !s.is_empty()),
                    Err(StoreError::Erased { .. }) => None,
                    Err(e) => return Err(e),
                },
                _ => None,
            };
            let esi: Option<u8> = if parts.clinical {
                tx.prepare_cached(
                    "SELECT final_esi FROM triage_results WHERE case_id = ?1 ORDER BY id DESC LIMIT 1",
                )?
                .query_row([&id], |r| r.get(0))
                .optional()?
            } else {
                None
            };
            let devices = case_devices(&tx, &id)?;
            out.push(CaseSummary {
                id,
                status,
                created_at_ms: created,
                patient_id,
                patient_name,
                esi,
                devices,
            });
        }
        let ev = AuditEvent::new(actor, "case.list", "case/*", Outcome::Success)
            .territory(territory)
            .details(serde_json::json!({ "cases": out.len(), "clinical": parts.clinical, "demographics": parts.demographics }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(out)
    }

    /// The case screen: case, patient, devices, alarms, triage, medications, vitals and bundle
    /// custody, in one transaction with one audit entry (`action`, e.g. `case.read` or
    /// `case.handoff`).
    pub fn case_view(
        &mut self,
        actor: &Actor,
        id: &str,
        parts: CaseParts,
        action: &str,
    ) -> Result<CaseView> {
        let r = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (mut case, dk_id) = self.st.read_case(&tx, id)?;
            let patient = match (&case.patient_id, parts.demographics) {
                (Some(pid), true) => Some(self.st.read_patient(&tx, pid)?),
                _ => None,
            };
            let devices = case_devices(&tx, id)?;
            let bundles = case_bundles(&tx, id)?;
            let (mut alarms, mut triage, mut medications, mut vitals) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            if parts.clinical {
                let dk = self.st.data_key(&tx, dk_id, "case", id)?;
                alarms = tx
                    .prepare_cached("SELECT id, kind, device_id, raised_at, detail FROM alarms WHERE case_id = ?1 AND cleared_at IS NULL ORDER BY id")?
                    .query_map([id], |r| {
                        Ok(CaseAlarm {
                            id: r.get(0)?,
                            kind: r.get(1)?,
                            device_id: r.get(2)?,
                            raised_at_ms: r.get(3)?,
                            detail: r.get(4)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                triage = read_triage(&tx, &dk, id, 20)?;
                vitals = read_case_observations(&tx, &dk, id)?;
                let meds: Vec<(i64, i64, String, Vec<u8>)> = tx
                    .prepare_cached("SELECT id, created_at, created_by, body FROM medications WHERE case_id = ?1 ORDER BY id")?
                    .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<Result<_, _>>()?;
                for (mid, at, by, ct) in meds {
                    let plain = dk.open(med_loc(&mid.to_string()), &ct)?;
                    let medication = serde_json::from_slice(&plain).map_err(|_| {
                        StoreError::Refused(format!("medication {mid} does not decode"))
                    })?;
                    medications.push(StoredMedication {
                        id: mid,
                        created_at_ms: at,
                        created_by: by,
                        medication,
                    });
                }
            } else {
                case.details = Default::default();
            }
            let ev = AuditEvent::new(actor, action, format!("case/{id}"), Outcome::Success)
                .territory(&case.territory)
                .details(serde_json::json!({ "clinical": parts.clinical, "demographics": parts.demographics }));
            audit::append(&tx, &self.st, &ev, now_ms())?;
            tx.commit()?;
            Ok(CaseView {
                case,
                patient,
                devices,
                alarms,
                triage,
                medications,
                vitals,
                bundles,
            })
        })();
        if let Err(e) = &r {
            self.audit_failure(actor, action, format!("case/{id}"), e);
        }
        r
    }

    /// Readings of a case after row `after_id`, for a live stream whose opening was audited
    /// (`case.stream`); not audited again per push.
    pub fn case_vitals_after(&mut self, case_id: &str, after_id: i64) -> Result<Vec<Observation>> {
        let (_, dk) = self.st.live_case(&self.conn, case_id)?;
        read_case_observations_after(&self.conn, &dk, case_id, after_id)
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

    /// Manual vitals entered by the crew: `(vital name, value, time)`; validated by the caller
    /// against the vocabulary. Returns the new row ids.
    pub fn add_manual_vitals(
        &mut self,
        actor: &Actor,
        case_id: &str,
        readings: &[(String, f64, i64)],
    ) -> Result<Vec<i64>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
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
            let ct = seal_value(&dk, id, *value)?;
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
        tx.commit()?;
        Ok(ids)
    }

    /// Records a medication order on an open case.
    pub fn add_medication(&mut self, actor: &Actor, case_id: &str, m: &Medication) -> Result<i64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (territory, dk) = self.st.live_case(&tx, case_id)?;
        open_case_only(&tx, case_id)?;
        let id: i64 = tx.query_row(
            "SELECT coalesce(max(id), 0) + 1 FROM medications",
            [],
            |r| r.get(0),
        )?;
        let body = dk.seal(
            med_loc(&id.to_string()),
            &serde_json::to_vec(m).expect("medication serialises"),
        )?;
        self.st.count_invocations(&tx, dk.id(), 1)?;
        tx.execute(
            "INSERT INTO medications (id, case_id, created_at, created_by, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, case_id, now_ms(), actor.id, body],
        )?;
        let ev = AuditEvent::new(
            actor,
            "medication.create",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&territory)
        .details(serde_json::json!({ "medication": id }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(id)
    }
}

fn med_loc(row_id: &str) -> FieldLoc<'_> {
    FieldLoc {
        table: "medications",
        column: "body",
        row_id,
    }
}

fn open_case_only(conn: &rusqlite::Connection, case_id: &str) -> Result<()> {
    let status: String =
        conn.query_row("SELECT status FROM cases WHERE id = ?1", [case_id], |r| {
            r.get(0)
        })?;
    if status == "closed" {
        return Err(StoreError::Refused(format!("case {case_id} is closed")));
    }
    Ok(())
}

fn case_devices(conn: &rusqlite::Connection, case_id: &str) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT id FROM devices WHERE bound_case = ?1 AND removed_at IS NULL ORDER BY id",
        )?
        .query_map([case_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

fn case_bundles(conn: &rusqlite::Connection, case_id: &str) -> Result<Vec<BundleState>> {
    Ok(conn
        .prepare_cached(
            "SELECT bundle_id, kind, state, attempts, created_at, sent_at, receipted_at FROM outbox WHERE case_id = ?1 ORDER BY seq",
        )?
        .query_map([case_id], |r| {
            Ok(BundleState {
                bundle_id: r.get(0)?,
                kind: r.get(1)?,
                state: r.get(2)?,
                attempts: r.get(3)?,
                created_at_ms: r.get(4)?,
                sent_at_ms: r.get(5)?,
                receipted_at_ms: r.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}
