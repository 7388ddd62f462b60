//! The tamper-evident audit log.
//!
//! Entry `n` (1-based, gap-free) has canonical bytes `canonical_n` =
//! `"hema3n-audit/v2" || seq (i64 BE) || ts (i64 BE)` followed by actor, role, action, resource,
//! outcome, territory and details, each as `u32 BE length || UTF-8 bytes`, and is chained as
//! `hash_n = SHA-256("hema3n-audit-chain/v2" || hash_{n-1} || SHA-256(canonical_n))` with
//! `hash_0 = SHA-256("hema3n-audit-genesis/v1" 0 appliance_id)`. It carries
//! `mac_n = HMAC-SHA256(audit_key, "hema3n-audit-mac/v1" || hash_n)`. Entries written before
//! schema v12 follow chain v1 (column `chain`): the tag reads `hema3n-audit/v1` and
//! `hash_n = SHA-256(hash_{n-1} || canonical_n)`. Chain v2's leaf digest lets a bundle prove
//! its case's entries against a signed checkpoint with only the digests of the entries between
//! them ([`case_trail`], `docs/bundle-format.md`).
//!
//! A checkpoint signs `"hema3n-audit-checkpoint/v1" 0 appliance_id 0 || seq || ts || hash_seq`
//! with the appliance ES256 key, every `checkpoint_every_entries` entries or
//! `checkpoint_every_secs` seconds, and whenever a case bundle is sealed (after the case's
//! entries). `audit_head` records the last entry in the same transaction.
//!
//! What verification catches: a deleted entry (gap and broken link), reordering (broken link),
//! edited bytes (hash mismatch), a chain recomputed without the audit key (MAC mismatch), a chain
//! recomputed with it (signed checkpoint mismatch), deleted tail entries (head and
//! AUTOINCREMENT high-water mark), and truncation behind a checkpoint (checkpoint names a
//! missing entry). A log cut by `audit prune` ([`retention`]) starts after a signed checkpoint
//! and must record the cut.

mod query;
mod retention;
mod trail;
mod verify;

pub(crate) use query::backfill as backfill_subjects;
pub use query::{AuditFilter, MAX_ROWS};
pub(crate) use retention::note_cloud_checkpoint;
pub use retention::{PRUNE_STEP, PrunePlan};

pub use trail::CaseTrail;
pub(crate) use trail::case_trail;
pub use verify::{Finding, VerifyReport};
pub(crate) use verify::{former_signing_keys, verify};

use rusqlite::{Connection, TransactionBehavior, params};

use super::{Result, State};
use crate::crypto::{Mac, Sha256, sha256};
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

impl<'a> EntryFields<'a> {
    /// An entry from its text fields in stored order: actor, role, action, resource, outcome,
    /// territory, details.
    pub fn of(seq: i64, ts: i64, f: &'a [String; 7]) -> Self {
        EntryFields {
            seq,
            ts,
            actor: &f[0],
            role: &f[1],
            action: &f[2],
            resource: &f[3],
            outcome: &f[4],
            territory: &f[5],
            details: &f[6],
        }
    }
}

/// The seven text columns of an `audit_log` row from column `first` on (selected in stored
/// order: actor, role, action, resource, outcome, territory, details).
pub(crate) fn text_fields(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<[String; 7]> {
    let mut f: [String; 7] = Default::default();
    for (i, v) in f.iter_mut().enumerate() {
        *v = r.get(first + i)?;
    }
    Ok(f)
}

/// The chain rule entries are written with (schema v12 on).
pub const CHAIN_VERSION: i64 = 2;

/// The schema version that introduced chain v2 (and the `chain` column).
pub(crate) const CHAIN_V2_SCHEMA: i64 = 12;

const TAG_V1: &[u8] = b"hema3n-audit/v1";
const TAG_V2: &[u8] = b"hema3n-audit/v2";

/// Feeds `canonical_n` of an entry under chain version `version` (1 or 2) to `out`, piece by
/// piece (the hash paths stream it; [`canonical`] collects it).
fn write_canonical(version: i64, e: &EntryFields<'_>, out: &mut impl FnMut(&[u8])) {
    out(if version == 1 { TAG_V1 } else { TAG_V2 });
    out(&e.seq.to_be_bytes());
    out(&e.ts.to_be_bytes());
    for f in [
        e.actor,
        e.role,
        e.action,
        e.resource,
        e.outcome,
        e.territory,
        e.details,
    ] {
        out(&(f.len() as u32).to_be_bytes());
        out(f.as_bytes());
    }
}

/// `canonical_n` of an entry under chain version `version` (1 or 2).
pub fn canonical(version: i64, e: &EntryFields<'_>) -> Vec<u8> {
    let mut c = Vec::with_capacity(128);
    write_canonical(version, e, &mut |b| c.extend_from_slice(b));
    c
}

/// Chain v2's leaf digest of an entry, `SHA-256(canonical_n)`.
pub fn leaf(e: &EntryFields<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    write_canonical(2, e, &mut |b| h.update(b));
    h.finish()
}

/// An entry read back from its canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    pub version: i64,
    pub seq: i64,
    pub ts: i64,
    /// actor, role, action, resource, outcome, territory, details.
    pub fields: [String; 7],
}

/// Parses canonical bytes (either version); `None` when they are not exactly one entry.
pub fn parse_canonical(b: &[u8]) -> Option<Canonical> {
    let version = if b.starts_with(TAG_V2) {
        2
    } else if b.starts_with(TAG_V1) {
        1
    } else {
        return None;
    };
    let mut rest = &b[TAG_V2.len()..];
    let mut take = |n: usize| -> Option<&[u8]> {
        let (h, t) = (rest.get(..n)?, rest.get(n..)?);
        rest = t;
        Some(h)
    };
    let seq = i64::from_be_bytes(take(8)?.try_into().ok()?);
    let ts = i64::from_be_bytes(take(8)?.try_into().ok()?);
    let mut fields: [String; 7] = Default::default();
    for f in &mut fields {
        let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        *f = String::from_utf8(take(n)?.to_vec()).ok()?;
    }
    rest.is_empty().then_some(Canonical {
        version,
        seq,
        ts,
        fields,
    })
}

/// Chain v2's step: `SHA-256("hema3n-audit-chain/v2" || prev || leaf)`.
pub fn link_v2(prev: &[u8], leaf: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"hema3n-audit-chain/v2");
    h.update(prev);
    h.update(leaf);
    h.finish()
}

/// `hash_n` from `hash_{n-1}` and canonical bytes, by the version their tag names (`None`
/// for bytes of neither version).
pub fn chain_hash(prev: &[u8], canonical: &[u8]) -> Option<[u8; 32]> {
    if canonical.starts_with(TAG_V2) {
        Some(link_v2(prev, &sha256(canonical)))
    } else if canonical.starts_with(TAG_V1) {
        let mut h = Sha256::new();
        h.update(prev);
        h.update(canonical);
        Some(h.finish())
    } else {
        None
    }
}

/// `hash_n` of an entry written now (chain v2).
pub fn entry_hash(prev: &[u8], e: &EntryFields<'_>) -> [u8; 32] {
    entry_hash_as(CHAIN_VERSION, prev, e)
}

/// `hash_n` of an entry under `version` (a v2 entry's canonical bytes are streamed into its
/// leaf digest, never collected: this runs for every entry appended).
pub fn entry_hash_as(version: i64, prev: &[u8], e: &EntryFields<'_>) -> [u8; 32] {
    if version == 1 {
        chain_hash(prev, &canonical(1, e)).expect("v1 canonical bytes carry the v1 tag")
    } else {
        link_v2(prev, &leaf(e))
    }
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

/// The schema version that introduced `audit_subjects` (the query index).
pub(crate) const SUBJECTS_SCHEMA: i64 = 14;

/// How an entry is written: the chain rule, and whether the query index exists yet.
#[derive(Clone, Copy)]
pub(crate) struct Rule {
    chain: i64,
    indexed: bool,
}

impl Rule {
    /// The rule of every entry written now.
    pub(crate) const CURRENT: Rule = Rule {
        chain: CHAIN_VERSION,
        indexed: true,
    };

    /// The rule of the entry a migration to `schema` writes (old steps lack the `chain` column
    /// or the index).
    pub(crate) fn at_schema(schema: i64) -> Rule {
        Rule {
            chain: if schema < CHAIN_V2_SCHEMA {
                1
            } else {
                CHAIN_VERSION
            },
            indexed: schema >= SUBJECTS_SCHEMA,
        }
    }
}

/// Appends `ev` inside the caller's transaction; signs a checkpoint when the entry count is due.
/// Returns the new entry's sequence number.
pub(crate) fn append(conn: &Connection, st: &State, ev: &AuditEvent, now: i64) -> Result<i64> {
    let mut trail = Appender::start(conn)?;
    let seq = trail.append(conn, st, ev, now)?;
    trail.finish(conn)?;
    Ok(seq)
}

/// Entries appended one after another in one transaction: the chain head is read once, kept
/// in memory between entries and written once by [`Appender::finish`], which the caller must
/// reach before committing, with nothing else appending in between (an early return instead
/// must roll the transaction back). A batch — a bulk import, a group of read entries — saves
/// a head read and a head update per entry.
pub(crate) struct Appender {
    seq: i64,
    hash: Vec<u8>,
    checkpoint_seq: i64,
}

impl Appender {
    /// Reads the chain head.
    pub(crate) fn start(conn: &Connection) -> Result<Appender> {
        let (seq, hash, checkpoint_seq, _) = head(conn)?;
        Ok(Appender {
            seq,
            hash,
            checkpoint_seq,
        })
    }

    /// Appends `ev`; signs a checkpoint when the entry count is due. Returns its sequence number.
    pub(crate) fn append(
        &mut self,
        conn: &Connection,
        st: &State,
        ev: &AuditEvent,
        now: i64,
    ) -> Result<i64> {
        self.append_as(conn, st, ev, now, Rule::CURRENT)
    }

    /// Writes the head: the last entry appended.
    pub(crate) fn finish(self, conn: &Connection) -> Result<()> {
        conn.prepare_cached("UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1")?
            .execute(params![self.seq, &self.hash[..]])?;
        Ok(())
    }

    /// [`Appender::append`] under `rule`, for the entries migrations write.
    pub(crate) fn append_as(
        &mut self,
        conn: &Connection,
        st: &State,
        ev: &AuditEvent,
        now: i64,
        rule: Rule,
    ) -> Result<i64> {
        let version = rule.chain;
        let (prev, seq) = (&self.hash, self.seq + 1);
        // Where and why (`model::access`): purpose always, the PHI fields and the request's origin
        // when there are any, and the case and patient the resource belongs to. Chain v1 (entries
        // written by old migrations) keeps its bare details.
        let mut subjects = Vec::new();
        let details = if version == 1 {
            if ev.details.is_null() {
                String::new()
            } else {
                ev.details.to_string()
            }
        } else {
            let mut d = crate::model::access::recorded_details(ev);
            if rule.indexed
                && let serde_json::Value::Object(m) = &mut d
            {
                query::enrich(conn, &ev.resource, m)?;
            }
            if rule.indexed {
                subjects = query::index_rows(&ev.resource, &d);
            }
            d.to_string()
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
        let hash = entry_hash_as(version, prev, &f);
        let mac = entry_mac_with(&st.keys.audit_mac, &hash);
        if version == 1 {
            conn.prepare_cached(
                "INSERT INTO audit_log (seq, ts, actor, role, action, resource, outcome, territory, details, prev_hash, hash, mac) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![seq, now, f.actor, f.role, f.action, f.resource, f.outcome, territory, details, prev, &hash[..], &mac[..]])?;
        } else {
            conn.prepare_cached(
                "INSERT INTO audit_log (seq, ts, actor, role, action, resource, outcome, territory, details, prev_hash, hash, mac, chain) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?
            .execute(params![seq, now, f.actor, f.role, f.action, f.resource, f.outcome, territory, details, prev, &hash[..], &mac[..], version])?;
        }
        if !subjects.is_empty() {
            query::index(conn, seq, &subjects)?;
        }
        self.seq = seq;
        self.hash.clear();
        self.hash.extend_from_slice(&hash);
        if (seq - self.checkpoint_seq) as u64 >= st.audit_cfg.checkpoint_every_entries {
            write_checkpoint(conn, st, seq, &hash, now)?;
            self.checkpoint_seq = seq;
        }
        Ok(seq)
    }
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
        let mut trail = Appender::start(&tx)?;
        let mut seq = 0;
        for ev in evs {
            seq = trail.append(&tx, &self.st, ev, now)?;
        }
        trail.finish(&tx)?;
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

    /// Retires the current signing key in favour of `next` (`keys rotate-signing --activate`):
    /// signs a last checkpoint with the current key, records its public half (checkpoints it
    /// signed keep verifying) and audits the change. Idempotent. The caller swaps the key files.
    pub fn retire_signing_key(
        &mut self,
        actor: &Actor,
        next: &crate::crypto::sign::PublicKey,
    ) -> Result<()> {
        let old = self.st.keys.signing.public();
        if old == *next {
            return Ok(());
        }
        self.checkpoint_audit_if_due(now_ms(), true)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = crate::model::now_ms();
        tx.execute(
            "INSERT OR IGNORE INTO signing_keys (key_id, public_key, retired_at) VALUES (?1, ?2, ?3)",
            params![old.key_id(), old.to_pem(), now],
        )?;
        let ev = AuditEvent::new(actor, "keys.rotate_signing", "appliance", Outcome::Success)
            .details(serde_json::json!({ "retired": old.key_id(), "current": next.key_id() }));
        self::append(&tx, &self.st, &ev, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Verifies the whole audit log against the audit key and the appliance public key, in one
    /// read transaction: entries the daemon appends meanwhile are outside its snapshot, so
    /// checkpoints, entries and head are read as of one moment.
    pub fn verify_audit(&self) -> Result<VerifyReport> {
        let tx = self.conn.unchecked_transaction()?;
        let rep = self::verify(&tx, &self.st.keys, &self.st.appliance_id)?;
        tx.commit()?;
        Ok(rep)
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Actor, AuditEvent, Outcome, Patient};

    /// A batch appends under one in-memory head: the chain, its checkpoints (due inside the
    /// batch) and the head it leaves must be what entry-by-entry appends would leave, so the
    /// log verifies and the next single append links to the batch's last entry.
    #[test]
    fn batched_appends_chain_checkpoint_and_leave_the_head_at_their_last_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = crate::storage::test_db(dir.path());
        db.st.audit_cfg.checkpoint_every_entries = 4;
        let before = db.verify_audit().unwrap();
        let wraps = |db: &crate::storage::Db| -> i64 {
            db.conn
                .query_row(
                    "SELECT sum(invocations) FROM key_versions WHERE territory = 'default'",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let wraps_before = wraps(&db);
        let ps: Vec<Patient> = (0..25)
            .map(|i| Patient {
                last_name: Some(format!("Batch{i}")),
                mrn: Some(format!("MRN{i}")),
                ..Default::default()
            })
            .collect();
        let actor = Actor::cli();
        db.create_patients(&actor, "default", &ps).unwrap();
        let evs: Vec<AuditEvent> = (0..3)
            .map(|i| AuditEvent::new(&actor, "case.list", format!("case/x{i}"), Outcome::Success))
            .collect();
        let last = db.audit_many(&evs).unwrap();
        db.audit(&AuditEvent::new(
            &actor,
            "patient.search",
            "patient/*",
            Outcome::Success,
        ))
        .unwrap();
        let r = db.verify_audit().unwrap();
        assert!(r.ok(), "{:?}", r.findings);
        assert_eq!(r.entries, before.entries + 29);
        assert_eq!(
            (r.last_seq, last),
            (before.last_seq + 29, before.last_seq + 28)
        );
        assert!(r.checkpoints >= before.checkpoints + 7, "{r:?}");
        // Each new data key counts the fields it sealed (2); the territory key counts 25 wraps.
        let c = &db.conn;
        let seals: Vec<i64> = c
            .prepare("SELECT invocations FROM data_keys WHERE owner LIKE 'patient/%'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(seals, vec![2; 25]);
        assert_eq!(wraps(&db), wraps_before + 25);
    }
}
