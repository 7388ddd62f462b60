//! Personal accounts, sessions and break-glass: the `users`, `sessions` and `break_glass`
//! tables. Secrets are stored only as Argon2id PHC strings; tokens only as SHA-256.

use super::{Db, Result, StoreError, audit};
use crate::crypto::field::FieldLoc;
use crate::model::{Actor, AuditEvent, Outcome, Role, now_ms};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

/// A personal account as listed by `users list` (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub id: String,
    pub display_name: String,
    pub role: Role,
    pub territory: String,
    pub created_at_ms: i64,
    pub disabled: bool,
    /// Created over the API by an admin with a role that reads PHI: disabled until a supervisor
    /// of its territory approves it.
    pub pending_approval: bool,
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
    pub break_glass: Option<Grant>,
}

/// An active break-glass grant of a session: read access in the one territory it names, until
/// `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: i64,
    pub until_ms: i64,
    pub territory: String,
}

/// A break-glass use and its review state.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl Db {
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
        self.insert_user(
            actor,
            (id, display_name, role, territory),
            secret_hash,
            false,
        )
    }

    /// Adds an account `(id, display name, role, territory)` that stays disabled until a
    /// supervisor of its territory approves it ([`Db::approve_user`]).
    pub fn add_user_pending(
        &mut self,
        actor: &Actor,
        user: (&str, &str, Role, &str),
        secret_hash: &str,
    ) -> Result<()> {
        self.insert_user(actor, user, secret_hash, true)
    }

    fn insert_user(
        &mut self,
        actor: &Actor,
        (id, display_name, role, territory): (&str, &str, Role, &str),
        secret_hash: &str,
        pending: bool,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx
            .query_row("SELECT 1 FROM users WHERE id = ?1", [id], |_| Ok(true))
            .optional()?
            .unwrap_or(false);
        if exists {
            return Err(StoreError::AlreadyExists {
                kind: "user",
                id: id.into(),
            });
        }
        let now = now_ms();
        tx.execute(
            "INSERT INTO users (id, display_name, role, territory, secret_hash, created_at, disabled_at, pending_approval) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![id, display_name, role, territory, secret_hash, now, pending.then_some(now), pending],
        )?;
        let ev = AuditEvent::new(actor, "user.add", format!("user/{id}"), Outcome::Success)
            .territory(territory)
            .details(serde_json::json!({ "role": role, "pending_approval": pending }));
        audit::append(&tx, &self.st, &ev, now)?;
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

    /// Accounts, all of them or those of one territory.
    pub fn list_users(&self, territory: Option<&str>) -> Result<Vec<UserInfo>> {
        let mut st = self.conn.prepare(
            "SELECT id, display_name, role, territory, created_at, disabled_at IS NOT NULL, pending_approval FROM users \
             WHERE ?1 IS NULL OR territory = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([territory], |r| {
            Ok(UserInfo {
                id: r.get(0)?,
                display_name: r.get(1)?,
                role: r.get(2)?,
                territory: r.get(3)?,
                created_at_ms: r.get(4)?,
                disabled: r.get(5)?,
                pending_approval: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Enables an account waiting for approval, if it belongs to `approver_territory` (others
    /// are not found).
    pub fn approve_user(
        &mut self,
        actor: &Actor,
        approver_territory: &str,
        id: &str,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE users SET disabled_at = NULL, pending_approval = 0 \
             WHERE id = ?1 AND territory = ?2 AND pending_approval = 1",
            params![id, approver_territory],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "account awaiting approval",
                id: id.into(),
            });
        }
        let ev = AuditEvent::new(
            actor,
            "user.approve",
            format!("user/{id}"),
            Outcome::Success,
        )
        .territory(approver_territory);
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    pub fn login_user(&self, id: &str) -> Result<Option<LoginUser>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, display_name, role, territory, created_at, disabled_at IS NOT NULL, secret_hash, failed_count, backoff_until, \
                 pending_approval FROM users WHERE id = ?1",
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
                        pending_approval: r.get(9)?,
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
        let actor = Actor::new(user_id, "unknown");
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
            let actor = Actor::new(s.user_id.clone(), "session");
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

    /// Whether the session `hash` still exists for an enabled user. The CLI ends sessions in
    /// the database (`users disable`, `users set-secret`); the running daemon asks this on every
    /// request so that such a revocation takes effect at once.
    pub fn session_live(&self, hash: &[u8; 32]) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_hash = ?1 AND u.disabled_at IS NULL",
            )?
            .query_row([&hash[..]], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Sessions that survive a restart (of enabled users).
    pub fn load_sessions(&self) -> Result<Vec<(SessionRow, UserInfo)>> {
        let mut st = self.conn.prepare(
            "SELECT s.token_hash, s.user_id, s.created_at, s.last_seen_at, s.expires_at, s.break_glass_id, s.break_glass_until, \
             u.display_name, u.role, u.territory, u.created_at, b.territory FROM sessions s JOIN users u ON u.id = s.user_id \
             LEFT JOIN break_glass b ON b.id = s.break_glass_id WHERE u.disabled_at IS NULL",
        )?;
        let rows = st.query_map([], |r| {
            let h: Vec<u8> = r.get(0)?;
            let bg: Option<i64> = r.get(5)?;
            let bgu: Option<i64> = r.get(6)?;
            let bgt: Option<String> = r.get(11)?;
            Ok((
                SessionRow {
                    token_hash: h.as_slice().try_into().unwrap_or([0; 32]),
                    user_id: r.get(1)?,
                    created_at_ms: r.get(2)?,
                    last_seen_ms: r.get(3)?,
                    expires_at_ms: r.get(4)?,
                    break_glass: bg
                        .zip(bgu)
                        .zip(bgt)
                        .map(|((id, until_ms), territory)| Grant {
                            id,
                            until_ms,
                            territory,
                        }),
                },
                UserInfo {
                    id: r.get(1)?,
                    display_name: r.get(7)?,
                    role: r.get(8)?,
                    territory: r.get(9)?,
                    created_at_ms: r.get(10)?,
                    disabled: false,
                    pending_approval: false,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

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
        if !self.st.keys.territories.contains_key(territory) {
            return Err(StoreError::UnknownTerritory {
                territory: territory.into(),
            });
        }
        tx.execute(
            "INSERT INTO break_glass (user_id, territory, reason, started_at, until) VALUES (?1, ?2, '', ?3, ?4)",
            params![actor.id, territory, now, until],
        )?;
        let id = tx.last_insert_rowid();
        seal_text(&mut self.st, &tx, (id, territory), "reason", reason)?;
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
    /// Break-glass uses that concern `territory`: into it, or by one of its users.
    pub fn break_glass_list(&mut self, territory: &str, pending: bool) -> Result<Vec<BreakGlass>> {
        let sql = format!(
            "SELECT b.id, b.user_id, b.territory, b.dk_id, b.sealed_reason, b.started_at, b.until, b.reviewed_at, b.reviewed_by, b.sealed_note \
             FROM break_glass b JOIN users u ON u.id = b.user_id WHERE (b.territory = ?1 OR u.territory = ?1) {} \
             ORDER BY b.id DESC LIMIT 500",
            if pending {
                "AND b.reviewed_at IS NULL"
            } else {
                ""
            }
        );
        type Row = (BreakGlass, Option<i64>, Option<Vec<u8>>, Option<Vec<u8>>);
        let rows: Vec<Row> = self
            .conn
            .prepare(&sql)?
            .query_map([territory], |r| {
                Ok((
                    BreakGlass {
                        id: r.get(0)?,
                        user_id: r.get(1)?,
                        territory: r.get(2)?,
                        reason: String::new(),
                        started_at_ms: r.get(5)?,
                        until_ms: r.get(6)?,
                        reviewed_at_ms: r.get(7)?,
                        reviewed_by: r.get(8)?,
                        review_note: None,
                    },
                    r.get(3)?,
                    r.get(4)?,
                    r.get(9)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (mut b, dk_id, reason, note) in rows {
            if let Some(dk_id) = dk_id {
                let dk =
                    self.st
                        .data_key(&self.conn, dk_id, "break-glass use", &b.id.to_string())?;
                let id = b.id.to_string();
                let open = |column: &'static str, ct: &[u8]| -> Result<String> {
                    let plain = dk.open(
                        FieldLoc {
                            table: "break_glass",
                            column,
                            row_id: &id,
                        },
                        ct,
                    )?;
                    Ok(String::from_utf8_lossy(&plain).into_owned())
                };
                if let Some(ct) = reason {
                    b.reason = open("reason", &ct)?;
                }
                if let Some(ct) = note {
                    b.review_note = Some(open("review_note", &ct)?);
                }
            }
            out.push(b);
        }
        Ok(out)
    }

    /// A supervisor closes a review item (audited); reviewing one's own use is refused. Only a
    /// use that concerns the supervisor's `reviewer_territory` (others are not found).
    pub fn break_glass_review(
        &mut self,
        actor: &Actor,
        reviewer_territory: &str,
        id: i64,
        note: &str,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(String, String, Option<i64>)> = tx
            .query_row(
                "SELECT b.user_id, b.territory, b.reviewed_at FROM break_glass b JOIN users u ON u.id = b.user_id \
                 WHERE b.id = ?1 AND (b.territory = ?2 OR u.territory = ?2)",
                params![id, reviewer_territory],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (user, territory, reviewed) = row.ok_or_else(|| StoreError::NotFound {
            kind: "break-glass use",
            id: id.to_string(),
        })?;
        if user == actor.id {
            return Err(StoreError::OwnReview);
        }
        if reviewed.is_some() {
            return Err(StoreError::AlreadyReviewed { id });
        }
        tx.execute(
            "UPDATE break_glass SET reviewed_at = ?1, reviewed_by = ?2 WHERE id = ?3",
            params![now_ms(), actor.id, id],
        )?;
        seal_text(&mut self.st, &tx, (id, &territory), "review_note", note)?;
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
}

/// Seals a break-glass free-text column (`reason`, `review_note`) of use `id` under the use's
/// own data key (created on first use, wrapped by the territory's key).
fn seal_text(
    st: &mut super::State,
    conn: &rusqlite::Connection,
    (id, territory): (i64, &str),
    column: &'static str,
    text: &str,
) -> Result<()> {
    let dk_id: Option<i64> =
        conn.query_row("SELECT dk_id FROM break_glass WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
    let dk = match dk_id {
        Some(d) => st.data_key(conn, d, "break-glass use", &id.to_string())?,
        None => {
            let dk = st.new_data_key(conn, territory, &format!("break_glass/{id}"))?;
            conn.execute(
                "UPDATE break_glass SET dk_id = ?1 WHERE id = ?2",
                params![dk.id(), id],
            )?;
            dk
        }
    };
    let ct = dk.seal(
        FieldLoc {
            table: "break_glass",
            column,
            row_id: &id.to_string(),
        },
        text.as_bytes(),
    )?;
    st.count_invocations(conn, dk.id(), 1)?;
    let sql = match column {
        "reason" => "UPDATE break_glass SET sealed_reason = ?1, reason = '' WHERE id = ?2",
        _ => "UPDATE break_glass SET sealed_note = ?1, review_note = NULL WHERE id = ?2",
    };
    conn.execute(sql, params![ct, id])?;
    Ok(())
}

/// Migration v6: seals the plaintext reasons and notes of existing break-glass uses.
pub(super) fn seal_break_glass_text(
    st: &mut super::State,
    conn: &rusqlite::Connection,
) -> Result<usize> {
    let rows: Vec<(i64, String, String, Option<String>)> = conn
        .prepare("SELECT id, territory, reason, review_note FROM break_glass WHERE sealed_reason IS NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, territory, reason, note) in &rows {
        seal_text(st, conn, (*id, territory), "reason", reason)?;
        if let Some(n) = note {
            seal_text(st, conn, (*id, territory), "review_note", n)?;
        }
    }
    Ok(rows.len())
}
