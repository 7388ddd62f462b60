//! The tamper-evident audit log.
//!
//! Entry `n` (1-based, gap-free) is chained as
//! `hash_n = SHA-256(hash_{n-1} || canonical_n)` with `hash_0 = SHA-256("hema3n-audit-genesis/v1" 0 appliance_id)`,
//! and carries `mac_n = HMAC-SHA256(audit_key, hash_n)`. `canonical_n` is
//! `"hema3n-audit/v1" || seq (i64 BE) || ts (i64 BE)` followed by actor, role, action, resource,
//! outcome, territory and details, each as `u32 BE length || UTF-8 bytes`.
//!
//! A checkpoint signs `"hema3n-audit-checkpoint/v1" 0 appliance_id 0 || seq || ts || hash_seq`
//! with the appliance ES256 key, every `checkpoint_every_entries` entries or
//! `checkpoint_every_secs` seconds. `audit_head` records the last entry in the same transaction.
//!
//! What verification catches: a deleted entry (gap and broken link), reordering (broken link),
//! edited bytes (hash mismatch), a chain recomputed without the audit key (MAC mismatch), a chain
//! recomputed with it (signed checkpoint mismatch), deleted tail entries (head and
//! AUTOINCREMENT high-water mark), and truncation behind a checkpoint (checkpoint names a
//! missing entry).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Result, State};
use crate::crypto::keyring::Keyring;
use crate::crypto::sign::PublicKey;
use crate::crypto::{Mac, Sha256, ct_eq, sha256};
use crate::model::{Actor, AuditEvent, Outcome, now_ms};

/// The chain's starting value for an appliance.
pub fn genesis(appliance_id: &str) -> [u8; 32] {
    let mut v = b"hema3n-audit-genesis/v1\0".to_vec();
    v.extend_from_slice(appliance_id.as_bytes());
    sha256(&v)
}

/// Fields of one stored entry, as hashed.
pub struct EntryFields<'a> {
    pub seq: i64,
    pub ts: i64,
    pub actor: &'a str,
    pub role: &'a str,
    pub action: &'a str,
    pub resource: &'a str,
    pub outcome: &'a str,
    pub territory: &'a str,
    pub details: &'a str,
}

/// `hash_n` from `hash_{n-1}` and the entry's fields.
pub fn entry_hash(prev: &[u8], e: &EntryFields<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(b"hema3n-audit/v1");
    h.update(&e.seq.to_be_bytes());
    h.update(&e.ts.to_be_bytes());
    for f in [
        e.actor,
        e.role,
        e.action,
        e.resource,
        e.outcome,
        e.territory,
        e.details,
    ] {
        h.update(&(f.len() as u32).to_be_bytes());
        h.update(f.as_bytes());
    }
    h.finish()
}

/// `mac_n`.
pub fn entry_mac(audit_key: &[u8], hash: &[u8]) -> [u8; 32] {
    entry_mac_with(&Mac::new(audit_key), hash)
}

fn entry_mac_with(mac: &Mac, hash: &[u8]) -> [u8; 32] {
    mac.sign(&[b"hema3n-audit-mac/v1", hash])
}

/// The message an audit checkpoint signs.
pub fn checkpoint_message(appliance_id: &str, seq: i64, ts: i64, hash: &[u8]) -> Vec<u8> {
    let mut m = b"hema3n-audit-checkpoint/v1\0".to_vec();
    m.extend_from_slice(appliance_id.as_bytes());
    m.push(0);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&ts.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

pub(super) fn init_head(conn: &Connection, appliance_id: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO audit_head (id, seq, hash, last_checkpoint_seq, last_checkpoint_ts) VALUES (1, 0, ?1, 0, 0)",
        [&genesis(appliance_id)[..]],
    )?;
    Ok(())
}

fn head(conn: &Connection) -> Result<(i64, Vec<u8>, i64, i64)> {
    Ok(conn.prepare_cached("SELECT seq, hash, last_checkpoint_seq, last_checkpoint_ts FROM audit_head WHERE id = 1")?.query_row([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?)
}

/// Appends `ev` inside the caller's transaction; signs a checkpoint when the entry count is due.
/// Returns the new entry's sequence number.
pub(crate) fn append(conn: &Connection, st: &State, ev: &AuditEvent, now: i64) -> Result<i64> {
    let (last, prev, cp_seq, _) = head(conn)?;
    let seq = last + 1;
    let details = if ev.details.is_null() {
        String::new()
    } else {
        ev.details.to_string()
    };
    let territory = ev.territory.as_deref().unwrap_or("");
    let f = EntryFields {
        seq,
        ts: now,
        actor: &ev.actor.id,
        role: &ev.actor.role,
        action: &ev.action,
        resource: &ev.resource,
        outcome: ev.outcome.as_str(),
        territory,
        details: &details,
    };
    let hash = entry_hash(&prev, &f);
    let mac = entry_mac_with(&st.keys.audit_mac, &hash);
    conn.prepare_cached(
        "INSERT INTO audit_log (seq, ts, actor, role, action, resource, outcome, territory, details, prev_hash, hash, mac) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![seq, now, f.actor, f.role, f.action, f.resource, f.outcome, territory, details, prev, &hash[..], &mac[..]])?;
    conn.prepare_cached("UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1")?
        .execute(params![seq, &hash[..]])?;
    if (seq - cp_seq) as u64 >= st.audit_cfg.checkpoint_every_entries {
        write_checkpoint(conn, st, seq, &hash, now)?;
    }
    Ok(seq)
}

fn write_checkpoint(conn: &Connection, st: &State, seq: i64, hash: &[u8], now: i64) -> Result<()> {
    let msg = checkpoint_message(&st.appliance_id, seq, now, hash);
    let sig = st.keys.signing.sign(&msg)?;
    let key_id = st.keys.signing.public().key_id();
    conn.prepare_cached("INSERT INTO audit_checkpoints (seq, ts, hash, key_id, signature) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![seq, now, hash, key_id, sig])?;
    conn.prepare_cached(
        "UPDATE audit_head SET last_checkpoint_seq = ?1, last_checkpoint_ts = ?2 WHERE id = 1",
    )?
    .execute(params![seq, now])?;
    Ok(())
}

/// Signs a checkpoint over the head when entries exist past the last one and the interval
/// passed (or `force`). Returns the checkpointed sequence number, if any.
pub(crate) fn checkpoint_if_due(
    conn: &Connection,
    st: &State,
    now: i64,
    force: bool,
) -> Result<Option<i64>> {
    let (seq, hash, cp_seq, cp_ts) = head(conn)?;
    let due = force || now - cp_ts >= (st.audit_cfg.checkpoint_every_secs as i64) * 1000;
    if seq > cp_seq && due {
        write_checkpoint(conn, st, seq, &hash, now)?;
        return Ok(Some(seq));
    }
    Ok(None)
}

/// One problem found by [`verify`], naming the entry it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The first entry affected.
    pub seq: i64,
    pub what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "entry {}: {}", self.seq, self.what)
    }
}

/// Result of verifying the audit log.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub entries: u64,
    pub checkpoints: u64,
    pub last_seq: i64,
    pub last_checkpoint_seq: i64,
    /// Problems in log order; empty means the log verified.
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

const MAX_FINDINGS: usize = 50;

/// Verifies chain, MACs, checkpoint signatures, head and high-water mark.
pub(crate) fn verify(
    conn: &Connection,
    keys: &Keyring,
    appliance_id: &str,
) -> Result<VerifyReport> {
    let public = keys.signing.public();
    verify_with(conn, keys.audit_key.as_ref(), &[public], appliance_id)
}

/// [`verify`] with explicit keys (the appliance's current and former public keys).
pub fn verify_with(
    conn: &Connection,
    audit_key: &[u8],
    publics: &[PublicKey],
    appliance_id: &str,
) -> Result<VerifyReport> {
    let audit_mac = Mac::new(audit_key);
    let mut rep = VerifyReport::default();
    let add = |rep: &mut VerifyReport, seq: i64, what: String| {
        if rep.findings.len() < MAX_FINDINGS {
            rep.findings.push(Finding { seq, what });
        }
    };
    let mut checkpoints: BTreeMap<i64, (i64, Vec<u8>, String, Vec<u8>)> = BTreeMap::new();
    {
        let mut st = conn.prepare(
            "SELECT seq, ts, hash, key_id, signature FROM audit_checkpoints ORDER BY seq",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            checkpoints.insert(r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?));
        }
    }
    rep.checkpoints = checkpoints.len() as u64;
    for (&seq, (ts, hash, kid, sig)) in &checkpoints {
        let msg = checkpoint_message(appliance_id, seq, *ts, hash);
        match publics.iter().find(|p| &p.key_id() == kid) {
            None => add(
                &mut rep,
                seq,
                format!("checkpoint is signed by unknown key {kid}"),
            ),
            Some(p) if p.verify_any_s(&msg, sig).is_err() => {
                add(&mut rep, seq, "checkpoint signature is invalid".into())
            }
            Some(_) => {}
        }
    }

    let mut prev = genesis(appliance_id).to_vec();
    let mut expected = 1i64;
    let mut st = conn.prepare(
        "SELECT seq, ts, actor, role, action, resource, outcome, territory, details, prev_hash, hash, mac FROM audit_log ORDER BY seq",
    )?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let ts: i64 = r.get(1)?;
        let (actor, role, action, resource, outcome, territory, details): (
            String,
            String,
            String,
            String,
            String,
            String,
            String,
        ) = (
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
        );
        let prev_hash: Vec<u8> = r.get(9)?;
        let hash: Vec<u8> = r.get(10)?;
        let mac: Vec<u8> = r.get(11)?;
        rep.entries += 1;
        if seq != expected {
            let what = if seq > expected {
                format!("missing (entries {expected}..{} deleted)", seq - 1)
            } else {
                format!("out of order (found entry {seq} after {})", expected - 1)
            };
            add(&mut rep, expected.min(seq), what);
        }
        if !ct_eq(&prev_hash, &prev) {
            add(
                &mut rep,
                seq,
                "does not link to the entry before it (deleted, reordered or inserted entries)"
                    .into(),
            );
        }
        let f = EntryFields {
            seq,
            ts,
            actor: &actor,
            role: &role,
            action: &action,
            resource: &resource,
            outcome: &outcome,
            territory: &territory,
            details: &details,
        };
        let recomputed = entry_hash(&prev_hash, &f);
        if !ct_eq(&recomputed, &hash) {
            add(&mut rep, seq, "content was edited (hash mismatch)".into());
        } else if !ct_eq(&entry_mac_with(&audit_mac, &hash), &mac) {
            add(
                &mut rep,
                seq,
                "MAC is invalid (chain recomputed without the audit key)".into(),
            );
        }
        if let Some((_, cp_hash, _, _)) = checkpoints.get(&seq)
            && !ct_eq(cp_hash, &hash)
        {
            let from = checkpoints
                .range(..seq)
                .next_back()
                .map(|(s, _)| s + 1)
                .unwrap_or(1);
            add(
                &mut rep,
                seq,
                format!(
                    "differs from its signed checkpoint (entries {from}..{seq} were rewritten)"
                ),
            );
        }
        prev = hash;
        expected = seq + 1;
        rep.last_seq = seq;
    }
    let last = rep.last_seq;
    if let Some(&cp) = checkpoints.keys().next_back().filter(|&&s| s > last) {
        add(
            &mut rep,
            last + 1,
            format!(
                "missing: entries {}..{cp} are covered by a signed checkpoint (log truncated)",
                last + 1
            ),
        );
    }
    rep.last_checkpoint_seq = checkpoints.keys().next_back().copied().unwrap_or(0);
    let head: Option<(i64, Vec<u8>)> = conn
        .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    match head {
        None => add(&mut rep, last + 1, "audit head record is missing".into()),
        Some((hs, hh)) => {
            if hs > last {
                add(
                    &mut rep,
                    last + 1,
                    format!(
                        "missing: the head records entry {hs} but the log ends at {last} (tail deleted)"
                    ),
                );
            } else if hs != last || !ct_eq(&hh, &prev) {
                add(
                    &mut rep,
                    hs.max(1),
                    format!(
                        "head records entry {hs}, which does not match the log's last entry {last}"
                    ),
                );
            }
        }
    }
    let hw: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(hw) = hw
        && hw > last
        && !rep.findings.iter().any(|f| f.seq > last)
    {
        add(
            &mut rep,
            last + 1,
            format!(
                "missing: entries {}..{hw} were written and later deleted",
                last + 1
            ),
        );
    }
    rep.findings.sort_by_key(|f| f.seq);
    Ok(rep)
}

/// An audit-log row for the supervisor (details never hold PHI).
#[derive(Debug, Clone, PartialEq)]
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

impl super::Db {
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

    /// Audit entries, newest first, before `before_seq` (exclusive) when given. The read itself
    /// is audited.
    /// The newest audit entries of `territory` (a supervisor sees their own territory's trail).
    pub fn audit_entries(
        &mut self,
        actor: &Actor,
        territory: &str,
        limit: usize,
        before_seq: Option<i64>,
    ) -> Result<Vec<AuditRow>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows: Vec<AuditRow> = tx
            .prepare_cached(
                "SELECT seq, ts, actor, role, action, resource, outcome, territory, details FROM audit_log \
                 WHERE seq < ?1 AND territory = ?3 ORDER BY seq DESC LIMIT ?2",
            )?
            .query_map(params![before_seq.unwrap_or(i64::MAX), limit as i64, territory], |r| {
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
        self::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(rows)
    }

    /// Writes a standalone audit event (security events that touch no other row).
    pub fn audit(&mut self, ev: &AuditEvent) -> Result<i64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq = self::append(&tx, &self.st, ev, crate::model::now_ms())?;
        tx.commit()?;
        Ok(seq)
    }

    /// Writes many standalone audit events in one transaction (group commit).
    pub fn audit_many(&mut self, evs: &[AuditEvent]) -> Result<i64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = crate::model::now_ms();
        let mut seq = 0;
        for ev in evs {
            seq = self::append(&tx, &self.st, ev, now)?;
        }
        tx.commit()?;
        Ok(seq)
    }

    /// Signs a checkpoint if new entries exist and the time interval passed (or `force`).
    pub fn checkpoint_audit_if_due(&mut self, now_ms: i64, force: bool) -> Result<Option<i64>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let r = self::checkpoint_if_due(&tx, &self.st, now_ms, force)?;
        tx.commit()?;
        Ok(r)
    }

    /// Verifies the whole audit log against the audit key and the appliance public key.
    pub fn verify_audit(&self) -> Result<VerifyReport> {
        self::verify(&self.conn, &self.st.keys, &self.st.appliance_id)
    }
}
