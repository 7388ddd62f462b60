//! Access grants (the seeds' `MedicalRecordAccess`): a supervisor opens one case or patient of
//! their territory to a named user of another territory (mutual aid, a receiving crew), read or
//! read/write, until an expiry, for a reason (sealed: it may name the patient). Besides
//! break-glass, a grant is the only way into another territory's record. Creating, each use,
//! revoking and expiring are audit entries; supervisors list them for review.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Db, Result, StoreError, audit};
use crate::crypto::field::FieldLoc;
use crate::model::{Actor, AuditEvent, Outcome};

/// What a grant opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessGrant {
    pub id: i64,
    pub user_id: String,
    /// `case` or `patient`.
    pub kind: String,
    pub resource_id: String,
    /// The territory owning the record (the granting supervisor's).
    pub territory: String,
    /// `read` or `read_write`.
    pub access: String,
    pub reason: String,
    pub granted_by: String,
    pub granted_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub revoked_by: Option<String>,
    pub uses: i64,
}

/// A new grant as a supervisor asks for it.
#[derive(Debug, Clone)]
pub struct NewGrant<'a> {
    pub user_id: &'a str,
    pub kind: &'a str,
    pub resource_id: &'a str,
    pub access: &'a str,
    pub reason: &'a str,
    pub expires_at_ms: i64,
}

/// The outcome of looking for a grant behind a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantCheck {
    /// No active grant covers it.
    None,
    /// A read-only grant covers it, and the request writes.
    ReadOnly(i64),
    /// Grant `id` covers it; its use is audited.
    Used(i64),
}

impl Db {
    /// Grants `g` (audited `grant.create` in the record's territory). The record must be of
    /// `territory`, the user must exist and belong to another territory.
    pub fn grant_access(
        &mut self,
        actor: &Actor,
        territory: &str,
        g: &NewGrant<'_>,
        now: i64,
    ) -> Result<i64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let user_territory: Option<String> = tx
            .query_row(
                "SELECT territory FROM users WHERE id = ?1 AND disabled_at IS NULL",
                [g.user_id],
                |r| r.get(0),
            )
            .optional()?;
        let user_territory = user_territory.ok_or_else(|| StoreError::NotFound {
            kind: "active user",
            id: g.user_id.to_string(),
        })?;
        let table = if g.kind == "case" {
            "cases"
        } else {
            "patients"
        };
        let owner: Option<String> = tx
            .query_row(
                &format!("SELECT territory FROM {table} WHERE id = ?1"),
                [g.resource_id],
                |r| r.get(0),
            )
            .optional()?;
        if owner.as_deref() != Some(territory) {
            return Err(StoreError::NotFound {
                kind: if g.kind == "case" { "case" } else { "patient" },
                id: g.resource_id.to_string(),
            });
        }
        if user_territory == territory {
            return Err(StoreError::GrantNotNeeded {
                user: g.user_id.to_string(),
            });
        }
        tx.execute(
            "INSERT INTO access_grants (user_id, kind, resource_id, territory, access, granted_by, granted_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![g.user_id, g.kind, g.resource_id, territory, g.access, actor.id, now, g.expires_at_ms],
        )?;
        let id = tx.last_insert_rowid();
        let dk = self
            .st
            .new_data_key(&tx, territory, &format!("access_grant/{id}"))?;
        let ct = dk.seal(
            FieldLoc {
                table: "access_grants",
                column: "reason",
                row_id: &id.to_string(),
            },
            g.reason.as_bytes(),
        )?;
        self.st.count_invocations(&tx, dk.id(), 1)?;
        tx.execute(
            "UPDATE access_grants SET dk_id = ?1, sealed_reason = ?2 WHERE id = ?3",
            params![dk.id(), ct, id],
        )?;
        let ev = AuditEvent::new(
            actor,
            "grant.create",
            format!("{}/{}", g.kind, g.resource_id),
            Outcome::Success,
        )
        .territory(territory)
        .details(serde_json::json!({
            "grant": id, "user": g.user_id, "user_territory": user_territory,
            "access": g.access, "expires_at_ms": g.expires_at_ms,
        }));
        audit::append(&tx, &self.st, &ev, now)?;
        tx.commit()?;
        Ok(id)
    }

    /// Looks for an active grant of `actor` on `kind/id` (a case is also covered by a grant
    /// on its patient) at `now`; a covering grant is counted and its use audited.
    pub fn use_grant(
        &mut self,
        actor: &Actor,
        kind: &str,
        id: &str,
        writes: bool,
        now: i64,
    ) -> Result<GrantCheck> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let sql = if kind == "case" {
            "SELECT id, access, territory FROM access_grants WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?3 \
             AND ((kind = 'case' AND resource_id = ?2) OR \
                  (kind = 'patient' AND resource_id = (SELECT patient_id FROM cases WHERE id = ?2))) \
             ORDER BY (access = 'read_write') DESC, id LIMIT 1"
        } else {
            "SELECT id, access, territory FROM access_grants WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?3 \
             AND kind = 'patient' AND resource_id = ?2 ORDER BY (access = 'read_write') DESC, id LIMIT 1"
        };
        let found: Option<(i64, String, String)> = tx
            .query_row(sql, params![actor.id, id, now], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((gid, access, territory)) = found else {
            return Ok(GrantCheck::None);
        };
        if writes && access != "read_write" {
            return Ok(GrantCheck::ReadOnly(gid));
        }
        tx.execute(
            "UPDATE access_grants SET uses = uses + 1 WHERE id = ?1",
            [gid],
        )?;
        let ev = AuditEvent::new(actor, "grant.use", format!("{kind}/{id}"), Outcome::Success)
            .territory(&territory)
            .details(serde_json::json!({ "grant": gid, "writes": writes }));
        audit::append(&tx, &self.st, &ev, now)?;
        tx.commit()?;
        Ok(GrantCheck::Used(gid))
    }

    /// Revokes grant `id` of `territory` (audited); revoking twice is refused.
    pub fn revoke_grant(
        &mut self,
        actor: &Actor,
        territory: &str,
        id: i64,
        now: i64,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(String, String, Option<i64>)> = tx
            .query_row(
                "SELECT kind, resource_id, revoked_at FROM access_grants WHERE id = ?1 AND territory = ?2",
                params![id, territory],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (kind, rid, revoked) = row.ok_or_else(|| StoreError::NotFound {
            kind: "access grant",
            id: id.to_string(),
        })?;
        if revoked.is_some() {
            return Err(StoreError::AlreadyExists {
                kind: "revocation of access grant",
                id: id.to_string(),
            });
        }
        tx.execute(
            "UPDATE access_grants SET revoked_at = ?1, revoked_by = ?2 WHERE id = ?3",
            params![now, actor.id, id],
        )?;
        let ev = AuditEvent::new(
            actor,
            "grant.revoke",
            format!("{kind}/{rid}"),
            Outcome::Success,
        )
        .territory(territory)
        .details(serde_json::json!({ "grant": id }));
        audit::append(&tx, &self.st, &ev, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Audits each grant whose expiry passed (`grant.expire`, once). Returns how many.
    pub fn expire_grants(&mut self, now: i64) -> Result<usize> {
        // The sweeper asks every round: an idle round takes no write lock.
        let any = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM access_grants \
                 WHERE expires_at <= ?1 AND revoked_at IS NULL AND expired_noted = 0 LIMIT 1",
            )?
            .exists([now])?;
        if !any {
            return Ok(0);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let due: Vec<(i64, String, String, String, String)> = tx
            .prepare_cached(
                "SELECT id, kind, resource_id, territory, user_id FROM access_grants \
                 WHERE expires_at <= ?1 AND revoked_at IS NULL AND expired_noted = 0",
            )?
            .query_map([now], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (id, kind, rid, territory, user) in &due {
            tx.execute(
                "UPDATE access_grants SET expired_noted = 1 WHERE id = ?1",
                [id],
            )?;
            let ev = AuditEvent::new(
                &Actor::system(),
                "grant.expire",
                format!("{kind}/{rid}"),
                Outcome::Success,
            )
            .territory(territory)
            .details(serde_json::json!({ "grant": id, "user": user }));
            audit::append(&tx, &self.st, &ev, now)?;
        }
        tx.commit()?;
        Ok(due.len())
    }

    /// The grants of `territory`, newest first (reasons opened for the reviewing supervisor).
    pub fn list_grants(
        &mut self,
        territory: &str,
        active_at: Option<i64>,
    ) -> Result<Vec<AccessGrant>> {
        type Row = (AccessGrant, Option<i64>, Option<Vec<u8>>);
        let rows: Vec<Row> = self
            .conn
            .prepare_cached(
                "SELECT id, user_id, kind, resource_id, territory, access, granted_by, granted_at, expires_at, \
                 revoked_at, revoked_by, uses, dk_id, sealed_reason FROM access_grants \
                 WHERE territory = ?1 AND (?2 IS NULL OR (revoked_at IS NULL AND expires_at > ?2)) \
                 ORDER BY id DESC LIMIT 500",
            )?
            .query_map(params![territory, active_at], |r| {
                Ok((
                    AccessGrant {
                        id: r.get(0)?,
                        user_id: r.get(1)?,
                        kind: r.get(2)?,
                        resource_id: r.get(3)?,
                        territory: r.get(4)?,
                        access: r.get(5)?,
                        reason: String::new(),
                        granted_by: r.get(6)?,
                        granted_at_ms: r.get(7)?,
                        expires_at_ms: r.get(8)?,
                        revoked_at_ms: r.get(9)?,
                        revoked_by: r.get(10)?,
                        uses: r.get(11)?,
                    },
                    r.get(12)?,
                    r.get(13)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (mut g, dk_id, ct) in rows {
            if let (Some(dk_id), Some(ct)) = (dk_id, ct) {
                let id = g.id.to_string();
                let dk = self.st.data_key(&self.conn, dk_id, "access grant", &id)?;
                let plain = dk.open(
                    FieldLoc {
                        table: "access_grants",
                        column: "reason",
                        row_id: &id,
                    },
                    &ct,
                )?;
                g.reason = String::from_utf8_lossy(&plain).into_owned();
            }
            out.push(g);
        }
        Ok(out)
    }
}
