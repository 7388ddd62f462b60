//! Verification of the whole audit log: chain (either version), MACs, checkpoint signatures,
//! head and high-water mark ([`verify`]).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension};

use super::{EntryFields, checkpoint_message, entry_hash_as, entry_mac_with, genesis, text_fields};
use crate::crypto::keyring::Keyring;
use crate::crypto::sign::PublicKey;
use crate::crypto::{Mac, ct_eq};
use crate::storage::Result;

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
    let mut publics = vec![keys.signing.public()];
    publics.extend(former_signing_keys(conn)?);
    let mut macs = vec![keys.audit_mac.clone()];
    macs.extend(keys.retired_audit_macs.iter().cloned());
    verify_with(conn, &macs, &publics, appliance_id)
}

/// Public keys the appliance signed with before its current one (`signing_keys`).
pub(crate) fn former_signing_keys(conn: &Connection) -> Result<Vec<PublicKey>> {
    let mut st = conn.prepare("SELECT public_key FROM signing_keys ORDER BY retired_at")?;
    let pems = st.query_map([], |r| r.get::<_, String>(0))?;
    let mut v = Vec::new();
    for pem in pems {
        v.extend(PublicKey::from_pem(&pem?));
    }
    Ok(v)
}

/// [`verify`] with explicit keys: an entry's MAC may be under any of `macs` (the current audit
/// key and the ones it replaced, `keys rotate-audit`), a checkpoint's signature under any of
/// `publics` (the current and former signing keys).
fn verify_with(
    conn: &Connection,
    macs: &[Mac],
    publics: &[PublicKey],
    appliance_id: &str,
) -> Result<VerifyReport> {
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

    let indexed = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_subjects'")?
        .exists([])?;
    let mut index_st = if indexed {
        Some(conn.prepare("SELECT seq, kind, id FROM audit_subjects ORDER BY seq")?)
    } else {
        None
    };
    let mut index = match index_st.as_mut() {
        Some(st) => Some(IndexCursor {
            rows: st.query([])?,
            pending: None,
        }),
        None => None,
    };
    // A log cut by `audit prune` starts after a signed checkpoint, from its hash.
    let pruned = super::retention::pruned_through(conn)?;
    let mut prev = genesis(appliance_id).to_vec();
    let mut expected = 1i64;
    let mut prune_recorded = pruned == 0;
    if pruned > 0 {
        expected = pruned + 1;
        match checkpoints.get(&pruned) {
            Some((_, hash, _, _)) => prev = hash.clone(),
            None => add(
                &mut rep,
                pruned + 1,
                format!(
                    "the log was cut after entry {pruned}, where there is no signed checkpoint"
                ),
            ),
        }
    }
    let mut st = conn.prepare(
        "SELECT seq, ts, actor, role, action, resource, outcome, territory, details, prev_hash, hash, mac, chain FROM audit_log ORDER BY seq",
    )?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let ts: i64 = r.get(1)?;
        let fields = text_fields(r, 2)?;
        let prev_hash: Vec<u8> = r.get(9)?;
        let hash: Vec<u8> = r.get(10)?;
        let mac: Vec<u8> = r.get(11)?;
        let chain: i64 = r.get(12)?;
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
        let f = EntryFields::of(seq, ts, &fields);
        let recomputed = entry_hash_as(chain, &prev_hash, &f);
        if !ct_eq(&recomputed, &hash) {
            add(&mut rep, seq, "content was edited (hash mismatch)".into());
        } else if !macs.iter().any(|m| ct_eq(&entry_mac_with(m, &hash), &mac)) {
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
        if let Some(ix) = index.as_mut() {
            let have = ix.rows_of(seq)?;
            let want = super::query::stored_index_rows(&fields[3], &fields[6]);
            if let Some(s) = want
                .iter()
                .find(|w| !have.iter().any(|(k, i)| k == w.kind && i == &w.id))
            {
                add(
                    &mut rep,
                    seq,
                    format!(
                        "missing from the query index ({} {}): queries by patient or case would not find it",
                        s.kind, s.id
                    ),
                );
            }
        }
        if !prune_recorded && fields[2] == "audit.prune" {
            let d: serde_json::Value = serde_json::from_str(&fields[6]).unwrap_or_default();
            prune_recorded = d["through"].as_i64() == Some(pruned);
        }
        prev = hash;
        expected = seq + 1;
        rep.last_seq = seq;
    }
    if !prune_recorded {
        add(
            &mut rep,
            pruned + 1,
            format!(
                "missing: entries 1..{pruned} were deleted, and no audit.prune entry records it"
            ),
        );
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

/// The query index read in entry order beside the log (one pass, no lookup per entry).
struct IndexCursor<'s> {
    rows: rusqlite::Rows<'s>,
    pending: Option<(i64, String, String)>,
}

impl IndexCursor<'_> {
    /// The (kind, id) rows of entry `seq`; rows of earlier entries that no entry claimed (an
    /// entry deleted from the log is reported by the chain) are skipped.
    fn rows_of(&mut self, seq: i64) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        loop {
            if self.pending.is_none() {
                self.pending = match self.rows.next()? {
                    Some(r) => Some((r.get(0)?, r.get(1)?, r.get(2)?)),
                    None => return Ok(out),
                };
            }
            match self.pending.take() {
                Some((s, _, _)) if s < seq => {}
                Some((s, k, i)) if s == seq => out.push((k, i)),
                later => {
                    self.pending = later;
                    return Ok(out);
                }
            }
        }
    }
}
